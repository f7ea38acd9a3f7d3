"""TensorRT backend (>= 10, name-based tensor API) for a plan built by ``engines.build``.

The runtime never builds: a plan is built once with ``python -m engines build``
(minutes on a GPU), and this class refuses one whose manifest does not match the
model, TensorRT version or GPU. Memory and streams come from ``cuda-python``
(:mod:`engines.runtime.cuda`), not torch, so serving needs no torch:

* at load: one CUDA stream; device buffers sized for the largest profile
  (``max_batch`` x max H x max W x 3 uint8 for ``image`` and ``stylized``,
  ``max_batch`` x S float32 for ``style``); one execution context per
  optimisation profile, each bound to its profile once.
* per call: pick the profile whose range holds the (padded) frame size (frames
  outside every range are resized into the nearest one and back, see
  ``engines.runtime``), ``set_input_shape``, ``set_tensor_address`` for the
  three tensors, host->device copy, ``execute_async_v3(stream)``,
  device->host copy, one ``cudaStreamSynchronize`` (the only sync point).

Calls are serialised with a lock: one stream, one set of buffers.
"""

from __future__ import annotations

import logging
import threading
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from engines.runtime import cuda
from engines.runtime.base import EngineError, ShapeRange
from engines.runtime.frames import FrameBackend, target_size
from engines.runtime.manifest import Manifest, default_engine_dir, verified_manifest
from engines.runtime.model import read_model_info
from engines.runtime.precision import PRECISIONS, Candidate
from engines.runtime.registry import Kind, Plan, Request, built

log = logging.getLogger(__name__)


def unavailable_reason() -> str | None:
    """None if TensorRT and a CUDA GPU can be used here, else why not."""
    try:
        import tensorrt as trt
    except ImportError as e:
        return f"TensorRT is not installed ({e})"
    major = int(trt.__version__.split(".")[0])
    if major < 10:
        return f"TensorRT {trt.__version__} is too old (the name-based API needs >= 10)"
    try:
        count = cuda.gpu_count()
    except ImportError as e:
        return f"cuda-python is not installed ({e}); pip install cuda-python"
    if count < 1:
        return "no CUDA GPU (cudaGetDeviceCount found none)"
    return None


class TensorRTBackend(FrameBackend):
    """Runs a serialized TensorRT plan (``model.plan`` + ``manifest.json`` from ``engines.build``)."""

    def __init__(self, engine_dir: str | Path, onnx_path: str | Path) -> None:
        import tensorrt as trt

        engine_dir = Path(engine_dir)
        self.info = read_model_info(onnx_path)
        self.styles = list(self.info.styles)
        self.strokes = self.info.strokes
        # Refuse a plan that was built for another model, precision, TensorRT or GPU.
        manifest = verified_manifest(onnx_path, engine_dir)
        self.precision = manifest.precision

        self._trt = trt
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        plan = (engine_dir / manifest.artifact).read_bytes()
        self._engine = self._runtime.deserialize_cuda_engine(plan)
        if self._engine is None:
            raise EngineError(f"TensorRT could not deserialize {engine_dir / manifest.artifact}")
        self.cudart = cuda.cudart()
        self._stream = cuda.check(self.cudart.cudaStreamCreate(), "cudaStreamCreate")
        # TensorRT's Python API takes the raw cudaStream_t handle as an int.
        self._stream_handle = int(self._stream)

        # Profile ranges as the engine reports them: get_tensor_profile_shape -> (min, opt, max).
        self._profiles: list[tuple[tuple[int, int], tuple[int, int], int]] = []
        self._contexts: list[Any] = []
        for p in range(self._engine.num_optimization_profiles):
            mn, _opt, mx = self._engine.get_tensor_profile_shape("image", p)
            self._profiles.append(((int(mn[1]), int(mn[2])), (int(mx[1]), int(mx[2])), int(mx[0])))
            ctx = self._engine.create_execution_context()
            ctx.set_optimization_profile_async(p, self._stream_handle)
            self._contexts.append(ctx)
        cuda.check(self.cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")

        max_b = max(b for _, _, b in self._profiles)
        max_px = max(h * w for _, (h, w), _ in self._profiles)
        self._image = cuda.DeviceBuffer(max_b * max_px * 3, self._stream)
        self._out = cuda.DeviceBuffer(max_b * max_px * 3, self._stream)
        self._style = cuda.DeviceBuffer(max_b * len(self.styles) * 4, self._stream)
        self._stroke = cuda.DeviceBuffer(max_b * 4, self._stream) if self.strokes else None
        self.max_batch = max_b
        # The union of the profile ranges (frames outside are resized into the nearest range).
        self.shapes = ShapeRange(
            min_hw=(min(mn[0] for mn, _, _ in self._profiles), min(mn[1] for mn, _, _ in self._profiles)),
            max_hw=(max(mx[0] for _, mx, _ in self._profiles), max(mx[1] for _, mx, _ in self._profiles)),
            multiple=self.info.stride,
        )
        self._lock = threading.Lock()
        self.name = "tensorrt"  # the kind: load_backend(model, "tensorrt", precision=...) gives it again
        log.info("%s loaded %s (%d profiles)", self.name, engine_dir, len(self._profiles))

    def _profile_for(self, h: int, w: int, n: int) -> int:
        for i, ((mn_h, mn_w), (mx_h, mx_w), mx_b) in enumerate(self._profiles):
            if mn_h <= h <= mx_h and mn_w <= w <= mx_w and n <= mx_b:
                return i
        raise EngineError(f"no optimisation profile holds {n}x{w}x{h}; ranges: {self._profiles}")

    def _target_size(self, h: int, w: int) -> tuple[int, int]:
        # The union ShapeRange can contain sizes between two disjoint profiles; those
        # frames are resized into the first profile's range instead.
        th, tw = target_size(h, w, self.shapes)
        if any(mn[0] <= th <= mx[0] and mn[1] <= tw <= mx[1] for mn, mx, _ in self._profiles):
            return th, tw
        (mn_h, mn_w), (mx_h, mx_w), _ = self._profiles[0]
        return target_size(h, w, ShapeRange((mn_h, mn_w), (mx_h, mx_w), self.shapes.multiple))

    def _run(self, images: np.ndarray, weights: np.ndarray, strokes: np.ndarray | None) -> np.ndarray:
        n, h, w, _ = images.shape
        out = np.empty_like(images)
        with self._lock:
            for start in range(0, n, self.max_batch):  # a batch above max_batch runs in chunks
                img = np.ascontiguousarray(images[start : start + self.max_batch])
                sty = np.ascontiguousarray(weights[start : start + self.max_batch])
                b = img.shape[0]
                ctx = self._contexts[self._profile_for(h, w, b)]
                ctx.set_input_shape("image", (b, h, w, 3))
                ctx.set_input_shape("style", (b, len(self.styles)))
                ctx.set_tensor_address("image", self._image.ptr)
                ctx.set_tensor_address("style", self._style.ptr)
                ctx.set_tensor_address("stylized", self._out.ptr)
                if self._stroke is not None and strokes is not None:
                    ctx.set_input_shape("stroke", (b,))
                    ctx.set_tensor_address("stroke", self._stroke.ptr)
                    self._stroke.upload(np.ascontiguousarray(strokes[start : start + b]))
                self._image.upload(img)
                self._style.upload(sty)
                if not ctx.execute_async_v3(self._stream_handle):
                    raise EngineError("TensorRT execute_async_v3 failed (see the TensorRT log)")
                chunk = out[start : start + b]
                self._out.download(chunk)
                # The only sync point: the D2H copy must land before numpy reads `out`.
                cuda.check(self.cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
        return out

    def close(self) -> None:
        for buf in ("_image", "_out", "_style", "_stroke"):
            if getattr(self, buf, None) is not None:
                getattr(self, buf).free()
                delattr(self, buf)
        self._contexts = []
        if getattr(self, "_stream", None) is not None:
            self.cudart.cudaStreamDestroy(self._stream)
            self._stream = None


def _plan(req: Request) -> Plan | str:
    """The plans built for this model (one per precision), checked against ONNX Runtime in float32."""
    from engines.runtime.onnxruntime_backend import OnnxRuntimeBackend

    files = req.files
    if reason := files.need_onnx():
        return reason
    onnx = files.onnx
    folders = [req.engine_dir] if req.engine_dir else [default_engine_dir(onnx, "tensorrt", p) for p in PRECISIONS]
    plans = [
        Candidate(Manifest.read(f).precision, partial(TensorRTBackend, f, onnx), f"plan in {f}")
        for f in folders
        if built(f, "tensorrt")
    ]
    prec = req.precision if req.precision != "auto" else "fp16"
    folder = req.engine_dir or default_engine_dir(onnx, "tensorrt", prec)
    build = (
        f"no TensorRT plan in {folder} (build it once: python -m engines build {onnx} --backend tensorrt "
        f"--precision {prec} --out {folder})"
    )
    if not plans:
        return build
    # Plans have no float32 run of their own to compare with: ONNX Runtime on the CPU is the reference.
    return Plan("TensorRT", plans, build, reference=partial(OnnxRuntimeBackend, onnx, num_threads=req.num_threads))


KINDS = (Kind("tensorrt", ("int8", "fp16", "fp32"), "cuda", unavailable_reason, _plan),)
