"""TensorRT backend (10 and 11, name-based tensor API) for a plan built by ``engines.build``.

The runtime never builds: a plan is built once with ``python -m engines build`` (minutes on a
GPU), and this class refuses one whose manifest does not match the model, precision, TensorRT
or GPU, and says plainly when a plan comes from another TensorRT major version (plans load
only in the version that built them). Memory and streams come from ``cuda-python``
(:mod:`engines.runtime.cuda`), not torch, so serving needs no torch:

* at load: one CUDA stream; device buffers sized for the largest profile (``max_batch`` x max
  H x max W x 3 uint8 for ``image`` and ``stylized``, float32 for ``style`` and ``stroke``),
  with page-locked host buffers of the same sizes for the copies; one execution context per
  optimisation profile, each bound to its profile once, and, where the API allows it
  (``USER_MANAGED`` contexts), one activation buffer shared by all of them: calls are
  serialised under one lock on one stream, so no two contexts run at once.
* per call: the profile whose range holds the (padded) frame size (a frame outside every range
  is resized into the range nearest to it, in scale, and back), ``set_input_shape`` (checked),
  the output shape TensorRT infers (checked), ``set_tensor_address``, host->device copies from
  pinned memory, ``execute_async_v3(stream)``, the device->host copy, one
  ``cudaStreamSynchronize`` (the only sync point).
"""

from __future__ import annotations

import logging
import math
import threading
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from engines.runtime import cuda
from engines.runtime.base import EngineError, ShapeRange
from engines.runtime.frames import FrameBackend, target_size
from engines.runtime.manifest import (
    TENSORRT_MAJORS,
    Manifest,
    default_engine_dir,
    precision_source,
    verified_manifest,
)
from engines.runtime.model import read_model_info
from engines.runtime.precision import PRECISIONS, Candidate
from engines.runtime.registry import Kind, Plan, Request, built

log = logging.getLogger(__name__)

Profile = tuple[tuple[int, int], tuple[int, int], int]  # (min (h, w), max (h, w), max batch)


def unavailable_reason() -> str | None:
    """None if TensorRT (a supported major version) and a CUDA GPU can be used here, else why not."""
    try:
        import tensorrt as trt
    except ImportError as e:
        return f"TensorRT is not installed ({e})"
    if reason := version_unsupported(trt.__version__):
        return reason
    try:
        count = cuda.gpu_count()
    except ImportError as e:
        return f"cuda-python is not installed ({e}); pip install cuda-python"
    if count < 1:
        return "no CUDA GPU (cudaGetDeviceCount found none)"
    return None


def version_unsupported(version: str) -> str | None:
    """Why TensorRT ``version`` cannot be used here (the range pyproject's gpu extra pins), or None."""
    major = int(version.split(".")[0])
    if major not in TENSORRT_MAJORS:
        span = f"{TENSORRT_MAJORS[0]}.x to {TENSORRT_MAJORS[-1]}.x"
        return f"TensorRT {version} is not supported: this code is written for {span} (pip install 'tensorrt>=10,<12')"
    return None


def plan_refusal(built_with: str, installed: str) -> str | None:
    """Why a plan built by TensorRT ``built_with`` cannot load in ``installed``, or None."""
    if built_with.split(".")[0] != installed.split(".")[0]:
        return (
            f"the plan was built by TensorRT {built_with}; this is TensorRT {installed}, and a plan loads only "
            "in the major version that built it: build it again here (python -m engines build ...)"
        )
    return None


def nearest_profile(h: int, w: int, profiles: list[Profile]) -> int:
    """The profile a frame of h x w runs in: one whose range holds it, else the one it needs the least
    scaling (in log scale, aspect kept) to fit into. (Before, frames between two ranges went into
    the first range whatever its size.)"""
    best, best_cost = 0, math.inf
    for i, ((mn_h, mn_w), (mx_h, mx_w), _) in enumerate(profiles):
        down = min(mx_h / h, mx_w / w, 1.0)  # < 1: must shrink to fit
        up = max(mn_h / h, mn_w / w, 1.0)  # > 1: must grow to fit
        cost = abs(math.log(down)) + abs(math.log(up))
        if cost < best_cost:
            best, best_cost = i, cost
    return best


class TensorRTBackend(FrameBackend):
    """Runs a serialized TensorRT plan (``model.plan`` + ``manifest.json`` from ``engines.build``)."""

    def __init__(self, engine_dir: str | Path, onnx_path: str | Path) -> None:
        import tensorrt as trt

        engine_dir = Path(engine_dir)
        self.info = read_model_info(onnx_path)
        self.styles = list(self.info.styles)
        self.stroke_scale = self.info.stroke_scale
        cached = Manifest.read(engine_dir)
        if reason := plan_refusal(cached.runtime_version, trt.__version__):
            raise EngineError(f"{engine_dir}: {reason}")
        # Refuse a plan that was built for another model file, precision, TensorRT or GPU. The file is
        # the precision's own: <stem>.onnx (fp32), <stem>.fp16.onnx, <stem>.int8.onnx.
        manifest = verified_manifest(precision_source(Path(onnx_path), cached.precision), engine_dir)
        self.precision = manifest.precision
        self.name = "tensorrt"  # the kind: load_backend(model, "tensorrt", precision=...) gives it again
        self._lock = threading.Lock()
        self._closed = False

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
        n_profiles = self._engine.num_optimization_profiles
        self._profiles: list[Profile] = []
        for p in range(n_profiles):
            mn, _opt, mx = self._engine.get_tensor_profile_shape("image", p)
            self._profiles.append(((int(mn[1]), int(mn[2])), (int(mx[1]), int(mx[2])), int(mx[0])))
        self._scratch: cuda.DeviceBuffer | None = None
        self._contexts = self._make_contexts(trt, n_profiles)
        cuda.check(self.cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")

        max_b = max(b for _, _, b in self._profiles)
        max_px = max(h * w for _, (h, w), _ in self._profiles)
        s = len(self.styles)
        self._image = cuda.DeviceBuffer(max_b * max_px * 3, self._stream)
        self._out = cuda.DeviceBuffer(max_b * max_px * 3, self._stream)
        self._style = cuda.DeviceBuffer(max_b * s * 4, self._stream)
        self._stroke = cuda.DeviceBuffer(max_b * 4, self._stream) if self.stroke_scale.anchors else None
        # Page-locked host staging: the copies really are asynchronous on the stream.
        self._host_in = cuda.PinnedBuffer(max_b * max_px * 3)
        self._host_out = cuda.PinnedBuffer(max_b * max_px * 3)
        self._host_small = cuda.PinnedBuffer(max_b * (s + 1) * 4)
        self.max_batch = max_b
        # The union of the profile ranges (frames outside every range are resized into the nearest one).
        self.shapes = ShapeRange(
            min_hw=(min(mn[0] for mn, _, _ in self._profiles), min(mn[1] for mn, _, _ in self._profiles)),
            max_hw=(max(mx[0] for _, mx, _ in self._profiles), max(mx[1] for _, mx, _ in self._profiles)),
            multiple=self.info.stride,
        )
        log.info("%s %s loaded %s (%d profiles)", self.name, self.precision, engine_dir, n_profiles)

    def _make_contexts(self, trt: Any, n_profiles: int) -> list[Any]:
        """One context per profile; with one shared activation buffer where the API has it (TensorRT >= 10.1)."""
        engine = self._engine
        size_of = getattr(engine, "get_device_memory_size_for_profile_v2", None)
        strategy = getattr(getattr(trt, "ExecutionContextAllocationStrategy", None), "USER_MANAGED", None)
        shared = size_of is not None and strategy is not None
        sizes = [int(size_of(p)) for p in range(n_profiles)] if shared and size_of is not None else []
        if shared:
            self._scratch = cuda.DeviceBuffer(max(sizes + [1]), self._stream)
        contexts = []
        for p in range(n_profiles):
            ctx = engine.create_execution_context(strategy) if shared else engine.create_execution_context()
            if ctx is None:
                raise EngineError(f"TensorRT could not create an execution context for profile {p}")
            if shared:
                assert self._scratch is not None
                ctx.set_device_memory(self._scratch.ptr, sizes[p])
            ctx.set_optimization_profile_async(p, self._stream_handle)
            contexts.append(ctx)
        return contexts

    def _profile_for(self, h: int, w: int, n: int) -> int:
        for i, ((mn_h, mn_w), (mx_h, mx_w), mx_b) in enumerate(self._profiles):
            if mn_h <= h <= mx_h and mn_w <= w <= mx_w and n <= mx_b:
                return i
        raise EngineError(f"no optimisation profile holds {n}x{w}x{h}; ranges: {self._profiles}")

    def _target_size(self, h: int, w: int) -> tuple[int, int]:
        (mn_h, mn_w), (mx_h, mx_w), _ = self._profiles[nearest_profile(h, w, self._profiles)]
        return target_size(h, w, ShapeRange((mn_h, mn_w), (mx_h, mx_w), self.shapes.multiple))

    def _run(self, images: np.ndarray, weights: np.ndarray, strokes: np.ndarray | None) -> np.ndarray:
        n, h, w, _ = images.shape
        s = len(self.styles)
        out = np.empty_like(images)
        with self._lock:
            if self._closed:
                raise EngineError("the TensorRT backend is closed")
            for start in range(0, n, self.max_batch):  # a batch above max_batch runs in chunks
                b = min(self.max_batch, n - start)
                ctx = self._contexts[self._profile_for(h, w, b)]
                shapes = {"image": (b, h, w, 3), "style": (b, s)}
                if self._stroke is not None:
                    shapes["stroke"] = (b,)
                for name, shape in shapes.items():
                    if not ctx.set_input_shape(name, shape):
                        raise EngineError(f"TensorRT refused {name} of shape {shape} (outside the plan's profiles?)")
                got = tuple(int(d) for d in ctx.get_tensor_shape("stylized"))
                if got != (b, h, w, 3):
                    raise EngineError(
                        f"TensorRT infers stylized {got} for {b}x{h}x{w}x3 frames: a plan for another model?"
                    )
                host_in = self._host_in.view((b, h, w, 3))
                np.copyto(host_in, images[start : start + b])
                small = self._host_small.view((b * (s + 1),), np.float32)
                small[: b * s] = weights[start : start + b].reshape(-1)
                self._image.upload(host_in)
                self._style.upload(small[: b * s])
                ctx.set_tensor_address("image", self._image.ptr)
                ctx.set_tensor_address("style", self._style.ptr)
                ctx.set_tensor_address("stylized", self._out.ptr)
                if self._stroke is not None:
                    small[b * s : b * s + b] = strokes[start : start + b] if strokes is not None else 1.0
                    self._stroke.upload(small[b * s : b * s + b])
                    ctx.set_tensor_address("stroke", self._stroke.ptr)
                if not ctx.execute_async_v3(self._stream_handle):
                    raise EngineError("TensorRT execute_async_v3 failed (see the TensorRT log)")
                host_out = self._host_out.view((b, h, w, 3))
                self._out.download(host_out)
                # The only sync point: the D2H copy must land before numpy reads it.
                cuda.check(self.cudart.cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")
                out[start : start + b] = host_out
        return out

    def close(self) -> None:
        """Free the buffers and the stream, under the lock (a call in progress finishes first). Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._contexts = []
            for buf in ("_image", "_out", "_style", "_stroke", "_scratch", "_host_in", "_host_out", "_host_small"):
                b = getattr(self, buf, None)
                if b is not None:
                    b.free()
                    setattr(self, buf, None)
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
