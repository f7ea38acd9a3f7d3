"""ONNX Runtime backend: CPU, and CUDA where onnxruntime-gpu finds CUDA.

One ``InferenceSession`` with all graph optimisations; ``run`` is thread-safe
in ONNX Runtime, so several worker threads may share one backend. Inputs are
passed as numpy arrays (no copy for C-contiguous uint8/float32).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

from engines.runtime.base import EngineError, ShapeRange
from engines.runtime.frames import FrameBackend
from engines.runtime.model import read_model_info
from engines.runtime.precision import Candidate
from engines.runtime.registry import Kind, Plan, Request, not_installed

log = logging.getLogger(__name__)

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"


def cuda_unavailable_reason() -> str | None:
    """None if ONNX Runtime offers its CUDA provider here, else why not."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        return f"onnxruntime is not installed ({e})"
    if CUDA_PROVIDER not in ort.get_available_providers():
        return f"onnxruntime has no {CUDA_PROVIDER} (providers: {', '.join(ort.get_available_providers())})"
    return None


class OnnxRuntimeBackend(FrameBackend):
    """Runs an exported stylecast ONNX file on ONNX Runtime.

    ``device`` is ``"cpu"`` or ``"cuda"``; ``num_threads`` is the intra-op
    thread count (default: all cores). A CUDA session that silently fell back
    to CPU (missing CUDA libraries) raises ``EngineError`` instead.
    """

    def __init__(self, onnx_path: str | Path, device: str = "cpu", num_threads: int | None = None) -> None:
        import onnxruntime as ort

        self.info = read_model_info(onnx_path)
        self.styles = list(self.info.styles)
        self.stroke_scale = self.info.stroke_scale
        self.shapes = ShapeRange(min_hw=(8, 8), max_hw=(4096, 4096), multiple=self.info.stride)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.intra_op_num_threads = num_threads or os.cpu_count() or 1
        opts.inter_op_num_threads = 1  # one chain of convs: no parallel branches to run
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if device == "cuda":
            reason = cuda_unavailable_reason()
            if reason:
                raise EngineError(reason)
            providers = [CUDA_PROVIDER, CPU_PROVIDER]
        elif device == "cpu":
            providers = [CPU_PROVIDER]
        else:
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        try:
            self._session = ort.InferenceSession(str(onnx_path), sess_options=opts, providers=providers)
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
            raise EngineError(f"ONNX Runtime cannot load {onnx_path}: {e}") from e
        if device == "cuda" and CUDA_PROVIDER not in self._session.get_providers():
            raise EngineError("ONNX Runtime fell back to CPU: the CUDA provider failed to load (CUDA/cuDNN libs?)")
        self.name = f"onnxruntime-{device}"
        self.precision = "int8" if self.info.quantized else "fp32"
        self.num_threads = opts.intra_op_num_threads
        log.info("%s loaded %s (%d threads)", self.name, onnx_path, self.num_threads)

    def _run(self, images: np.ndarray, weights: np.ndarray, strokes: np.ndarray | None) -> np.ndarray:
        feeds = {"image": images, "style": weights}
        if strokes is not None:
            feeds["stroke"] = strokes
        (out,) = self._session.run(["stylized"], feeds)
        return out

    def close(self) -> None:
        self.__dict__.pop("_session", None)


def _plan_on(device: str) -> Callable[[Request], Plan | str]:
    def plan(req: Request) -> Plan | str:
        files = req.files
        if reason := files.need_onnx():
            return reason
        ort = partial(OnnxRuntimeBackend, device=device, num_threads=req.num_threads)
        candidates = []
        if files.int8.is_file():
            candidates.append(Candidate("int8", partial(ort, files.int8), f"quantized model {files.int8.name}"))
        if not files.quantized:
            candidates.append(Candidate("fp32", partial(ort, files.onnx)))
        missing = () if files.int8.is_file() else (files.no_int8,)
        return Plan("ONNX Runtime", candidates, files.no_int8, unavailable=missing)

    return plan


KINDS = (
    Kind("onnxruntime-cuda", ("int8", "fp32"), "cuda", cuda_unavailable_reason, _plan_on("cuda")),
    Kind("onnxruntime-cpu", ("int8", "fp32"), "cpu", partial(not_installed, "onnxruntime"), _plan_on("cpu")),
)
