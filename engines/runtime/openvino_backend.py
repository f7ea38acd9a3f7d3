"""OpenVINO backend (CPU).

Compiled with ``PERFORMANCE_HINT=LATENCY``, ``INFERENCE_NUM_THREADS`` (all cores
by default) and the ``INFERENCE_PRECISION_HINT`` of the precision it was asked for
(``f32``, ``bf16``, ``f16``; an INT8 model runs its quantized layers as such). The hint
is always set: a CPU with bf16 units would otherwise pick bf16 by itself, unchecked.
``load_backend(precision="auto")`` chooses the precision by measurement
(:mod:`engines.runtime.precision`).

``engine_dir``: a folder built by ``python -m engines build --backend openvino``
(an OpenVINO model cache for the build's frame sizes and its ``manifest.json``).
Its manifest is checked against this model, OpenVINO version and CPU first (a
mismatch is refused, naming the field); then compiles of those sizes load from
the cache instead of compiling.

Each calling thread gets its own ``InferRequest`` (``threading.local``): one
compiled model, no lock on the hot path. Inputs are shared with OpenVINO
(``share_inputs=True``, no copy); the output is copied once out of the
request's buffer, because the next call on the same request overwrites it.

``static_shapes=True`` (the default) compiles one model per input shape
(N,H,W), cached (the ``MAX_STATIC_SHAPES`` most recent), instead of one
dynamic-shape model: measured ~1.8x faster here for the default generator at
640x480 (``python -m bench.model_speed`` times both). The first frame of a new size
pays one compile (a fraction of a second); a stream keeps its size, so that is
once per stream.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from common.cpu import cpu_bf16_flag
from engines.runtime.base import EngineError, ShapeRange
from engines.runtime.frames import FrameBackend
from engines.runtime.manifest import Manifest, default_engine_dir, openvino_config, verified_manifest
from engines.runtime.model import read_model_info
from engines.runtime.precision import Candidate
from engines.runtime.registry import Kind, Plan, Request, built, not_installed

log = logging.getLogger(__name__)

MAX_STATIC_SHAPES = 8  # compiled per-shape models kept (least recently used dropped)


class OpenVinoBackend(FrameBackend):
    """Runs an exported stylecast ONNX file (or an OpenVINO IR) on the CPU with OpenVINO."""

    def __init__(
        self,
        onnx_path: str | Path,
        num_threads: int | None = None,
        precision: str = "fp32",
        static_shapes: bool = True,
        engine_dir: str | Path | None = None,
    ) -> None:
        import openvino as ov

        self.info = read_model_info(onnx_path)
        self.styles = list(self.info.styles)
        self.stroke_scale = self.info.stroke_scale
        self.shapes = ShapeRange(min_hw=(8, 8), max_hw=(4096, 4096), multiple=self.info.stride)
        self.name = "openvino-cpu"
        self.config = openvino_config(num_threads, precision)
        self.precision = precision
        self._core = ov.Core()
        self.engine_dir = Path(engine_dir) if engine_dir is not None else None
        if self.engine_dir is not None:
            manifest = verified_manifest(onnx_path, self.engine_dir)
            if manifest.backend != "openvino" or manifest.precision != precision:
                raise EngineError(
                    f"{self.engine_dir} holds a {manifest.backend} {manifest.precision} engine, "
                    f"not an openvino {precision} one"
                )
            # OpenVINO reads (and adds) compiled models here, keyed by model and properties.
            self._core.set_property({"CACHE_DIR": str(self.engine_dir / manifest.artifact)})
        try:
            self._model = self._core.read_model(str(onnx_path))
        except Exception as e:  # OpenVINO raises RuntimeError subclasses of its own
            raise EngineError(f"OpenVINO cannot read {onnx_path}: {e}") from e
        self.static_shapes = static_shapes
        self._lock = threading.Lock()  # guards compiles and the per-shape cache
        self._compiled: OrderedDict[tuple[int, ...] | None, Any] = OrderedDict()
        self._local = threading.local()
        if not static_shapes:
            self._compiled[None] = self._compile(self._model)
        log.info("%s loaded %s (%s, static_shapes=%s)", self.name, onnx_path, self.config, static_shapes)

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
                shapes = {"image": [n, h, w, 3], "style": [n, len(self.styles)]}
                if self.stroke_scale.anchors:
                    shapes["stroke"] = [n]
                model.reshape(shapes)
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

    def _run(self, images: np.ndarray, weights: np.ndarray, strokes: np.ndarray | None) -> np.ndarray:
        req = self._request(images.shape[:3])
        feeds = {0: images, 1: weights} if strokes is None else {0: images, 1: weights, 2: strokes}
        req.infer(feeds, share_inputs=True, share_outputs=True)
        return np.array(req.get_output_tensor(0).data, copy=True)

    def close(self) -> None:
        self._compiled.clear()
        self._local = threading.local()


def _plan(req: Request) -> Plan | str:
    """int8 (a quantized sibling), bf16 (where the CPU has bf16 units), fp32; fp16 only when asked."""
    files = req.files
    if reason := files.need_onnx():
        return reason

    def ov(path: Path, precision: str) -> Callable[[], OpenVinoBackend]:
        # A model cache built for this precision (python -m engines build) serves where there is one.
        folder = req.engine_dir or default_engine_dir(path, "openvino", precision)
        cache = folder if built(folder, "openvino") and Manifest.read(folder).precision == precision else None
        return partial(OpenVinoBackend, path, num_threads=req.num_threads, precision=precision, engine_dir=cache)

    candidates: list[Candidate] = []
    unavailable: list[str] = []
    if files.int8.is_file():
        candidates.append(Candidate("int8", ov(files.int8, "int8"), f"quantized model {files.int8.name}"))
    else:
        unavailable.append(f"int8: {files.no_int8}")
    if not files.quantized:
        flag = cpu_bf16_flag()
        if flag or req.precision == "bf16":  # without bf16 units it is emulated: slower, never picked by auto
            candidates.append(Candidate("bf16", ov(files.onnx, "bf16"), f"the CPU has {flag}" if flag else "emulated"))
        else:
            unavailable.append("bf16: this CPU has neither amx_bf16 nor avx512_bf16")
        if req.precision == "fp16":  # measured no faster than fp32 on these CPUs: only when asked for
            candidates.append(Candidate("fp16", ov(files.onnx, "fp16")))
        candidates.append(Candidate("fp32", ov(files.onnx, "fp32")))
    return Plan("OpenVINO", candidates, files.no_int8, unavailable=tuple(unavailable))


KINDS = (Kind("openvino-cpu", ("int8", "bf16", "fp16", "fp32"), "cpu", partial(not_installed, "openvino"), _plan),)
