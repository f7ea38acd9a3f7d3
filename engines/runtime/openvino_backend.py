"""OpenVINO backend (CPU).

Compiled with ``PERFORMANCE_HINT=LATENCY`` and ``INFERENCE_NUM_THREADS`` (all
cores by default) and ``INFERENCE_PRECISION_HINT=f32`` (parity with torch; a
CPU with bf16 units would otherwise pick bf16 on its own).

Each calling thread gets its own ``InferRequest`` (``threading.local``): one
compiled model, no lock on the hot path. Inputs are shared with OpenVINO
(``share_inputs=True``, no copy); the output is copied once out of the
request's buffer, because the next call on the same request overwrites it.

``static_shapes=True`` (the default) compiles one model per input shape
(N,H,W), cached (the ``MAX_STATIC_SHAPES`` most recent), instead of one
dynamic-shape model: measured ~1.8x faster here for the default generator at
640x480 (``python -m engines bench`` times both). The first frame of a new size
pays one compile (a fraction of a second); a stream keeps its size, so that is
once per stream.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from engines.runtime.base import EngineError, ShapeRange
from engines.runtime.frames import FrameBackend
from engines.runtime.model import read_model_info

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
MAX_STATIC_SHAPES = 8  # compiled per-shape models kept (least recently used dropped)


def openvino_config(num_threads: int | None = None, precision: str = "fp32") -> dict[str, Any]:
    """The CPU compile properties used for serving (also written into build manifests)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    return {
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": int(num_threads or os.cpu_count() or 1),
        "INFERENCE_PRECISION_HINT": PRECISIONS[precision],
    }


class OpenVinoBackend(FrameBackend):
    """Runs an exported stylecast ONNX file (or an OpenVINO IR) on the CPU with OpenVINO."""

    def __init__(
        self,
        onnx_path: str | Path,
        num_threads: int | None = None,
        precision: str = "fp32",
        static_shapes: bool = True,
        cache_dir: str | Path | None = None,
        compiled_blob: str | Path | None = None,
    ) -> None:
        import openvino as ov

        self.info = read_model_info(onnx_path)
        self.styles = list(self.info.styles)
        self.shapes = ShapeRange(min_hw=(8, 8), max_hw=(4096, 4096), multiple=self.info.stride)
        self.name = "openvino-cpu"
        self.config = openvino_config(num_threads, precision)
        self._core = ov.Core()
        if cache_dir is not None:
            # OpenVINO writes/reads compiled blobs here, keyed by model and properties.
            self._core.set_property({"CACHE_DIR": str(cache_dir)})
        try:
            self._model = self._core.read_model(str(onnx_path))
        except Exception as e:  # OpenVINO raises RuntimeError subclasses of its own
            raise EngineError(f"OpenVINO cannot read {onnx_path}: {e}") from e
        self.static_shapes = static_shapes and compiled_blob is None
        self._lock = threading.Lock()  # guards compiles and the per-shape cache
        self._compiled: OrderedDict[tuple[int, ...] | None, Any] = OrderedDict()
        self._local = threading.local()
        if compiled_blob is not None:
            # A blob exported by engines.build (its manifest was checked by the caller).
            with open(compiled_blob, "rb") as f:
                self._compiled[None] = self._core.import_model(f.read(), "CPU", self.config)
        elif not static_shapes:
            self._compiled[None] = self._compile(self._model)
        log.info("%s loaded %s (%s, static_shapes=%s)", self.name, onnx_path, self.config, static_shapes)

    @classmethod
    def from_build(
        cls, onnx_path: str | Path, engine_dir: str | Path, num_threads: int | None = None, rebuild: bool = True
    ) -> OpenVinoBackend:
        """Load the compiled blob in ``engine_dir`` (built by ``engines.build``), building it if
        missing and rebuilding it (or, with ``rebuild=False``, refusing it) if its manifest does
        not match this model, precision, OpenVINO version or CPU."""
        from engines.build import EngineSpec, ensure_engine

        spec = EngineSpec(backend="openvino", precision="fp32", num_threads=num_threads)
        manifest = ensure_engine(onnx_path, spec, engine_dir, rebuild=rebuild)
        return cls(onnx_path, num_threads=num_threads, compiled_blob=Path(engine_dir) / manifest.artifact)

    def _compile(self, model: Any) -> Any:
        try:
            return self._core.compile_model(model, "CPU", self.config)
        except Exception as e:
            raise EngineError(f"OpenVINO cannot compile the model for CPU: {e}") from e

    def _request(self, shape: tuple[int, ...]) -> Any:
        """This thread's InferRequest for an input shape (one per shape with static_shapes)."""
        key = shape if self.static_shapes else None
        # This thread's requests: key -> (the compiled model it came from, request).
        requests: dict[tuple[int, ...] | None, tuple[Any, Any]] = self._local.__dict__.setdefault("requests", {})
        with self._lock:
            compiled = self._compiled.get(key)
            if compiled is None:
                model = self._model.clone()
                n, h, w = shape
                model.reshape({"image": [n, h, w, 3], "style": [n, len(self.styles)]})
                compiled = self._compiled[key] = self._compile(model)
                while len(self._compiled) > MAX_STATIC_SHAPES:
                    self._compiled.popitem(last=False)
            self._compiled.move_to_end(key)
        entry = requests.get(key)
        if entry is None or entry[0] is not compiled:
            if len(requests) >= MAX_STATIC_SHAPES:
                requests.clear()  # drop requests of evicted or rarely used shapes
            entry = requests[key] = (compiled, compiled.create_infer_request())
        return entry[1]

    def _run(self, images: np.ndarray, weights: np.ndarray) -> np.ndarray:
        req = self._request(images.shape[:3])
        req.infer({0: images, 1: weights}, share_inputs=True, share_outputs=True)
        return np.array(req.get_output_tensor(0).data, copy=True)

    def close(self) -> None:
        self._compiled.clear()
        self._local = threading.local()
