"""torch backend (CPU or CUDA): the reference every other backend is compared with.

Runs the same :class:`engines.wrap.UInt8Generator` that the ONNX export
traces, so uint8 in, uint8 out, conversions on the device. Imports torch only
when constructed; serving never needs this module.

On CUDA, ``precision="fp16"`` runs the network under ``torch.autocast`` (float16)
with channels_last weights. Autocast keeps no float32 for instance norms: their
statistics are float16 too, and the fp16 PSNR gate (``engines.runtime.precision``)
is what checks the picture. Calls are serialised with a lock (one CUDA stream per
backend).
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from engines.runtime.base import EngineError, ModelFileError, ShapeRange
from engines.runtime.frames import FrameBackend
from engines.runtime.precision import Candidate
from engines.runtime.registry import Kind, Plan, Request, not_installed

log = logging.getLogger(__name__)


def _no_nvidia_device() -> bool:
    """True when a Linux machine clearly has no NVIDIA GPU (no /dev/nvidia<N> node).

    Lets ``backend="auto"`` skip importing torch (seconds on a small CPU) just to
    learn that CUDA is absent. Other systems always go on to ask torch.
    """
    return sys.platform.startswith("linux") and not any(Path("/dev").glob("nvidia[0-9]*"))


def cuda_unavailable_reason() -> str | None:
    """None if torch can use a CUDA GPU here, else why not."""
    if _no_nvidia_device():
        return "no NVIDIA GPU on this machine (no /dev/nvidia* device)"
    try:
        import torch
    except ImportError as e:
        return f"torch is not installed ({e})"
    if not torch.cuda.is_available():
        return f"torch {torch.__version__} sees no CUDA GPU"
    return None


class TorchBackend(FrameBackend):
    """Runs a stylecast ``.safetensors`` checkpoint with torch.

    ``device``: ``"cpu"`` or ``"cuda"``; ``precision``: ``"fp32"`` or (CUDA only)
    ``"fp16"``; ``num_threads`` sets torch's process-wide CPU thread count.
    """

    def __init__(
        self,
        checkpoint_path: str | Path,
        device: str = "cpu",
        precision: str = "fp32",
        num_threads: int | None = None,
    ) -> None:
        try:
            import torch

            from engines.wrap import UInt8Generator
            from trainer.checkpoint import CheckpointError, load_generator
        except ImportError as e:
            raise EngineError(f"the torch backend needs torch and safetensors: {e}") from e
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        if precision not in ("fp32", "fp16") or (precision == "fp16" and device != "cuda"):
            raise ValueError(f"precision must be 'fp32' (or 'fp16' on CUDA), got {precision!r} on {device}")
        if device == "cuda" and (reason := cuda_unavailable_reason()):
            raise EngineError(reason)
        if num_threads:
            torch.set_num_threads(num_threads)
        try:
            generator, ckpt = load_generator(checkpoint_path, device=device)
        except (FileNotFoundError, CheckpointError) as e:
            raise ModelFileError(str(e)) from e
        self._torch: Any = torch
        self._module = UInt8Generator(generator).eval()
        if device == "cuda":
            self._module = self._module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self._device = torch.device(device)
        self.precision = precision
        self._lock = threading.Lock()
        self.styles = ckpt.style_names
        self.stroke_scale = generator.config.stroke_scale
        self.shapes = ShapeRange(min_hw=(8, 8), max_hw=(4096, 4096), multiple=generator.config.stride)
        self.name = f"torch-{device}"  # the kind; the precision is .precision
        log.info("%s loaded %s", self.name, checkpoint_path)

    def _run(self, images: np.ndarray, weights: np.ndarray, strokes: np.ndarray | None) -> np.ndarray:
        torch = self._torch
        with self._lock, torch.inference_mode():
            img = torch.from_numpy(images).to(self._device, non_blocking=True)
            sty = torch.from_numpy(weights).to(self._device, non_blocking=True)
            stk = None if strokes is None else torch.from_numpy(strokes).to(self._device, non_blocking=True)
            if self.precision == "fp16":
                with torch.autocast("cuda", dtype=torch.float16):
                    out = self._module(img, sty, stk)
            else:
                out = self._module(img, sty, stk)
            return out.cpu().numpy()  # .cpu() synchronises with the device

    def close(self) -> None:
        self.__dict__.pop("_module", None)


def _plan_on(device: str) -> Callable[[Request], Plan | str]:
    def plan(req: Request) -> Plan | str:
        if reason := req.files.need_checkpoint():
            return reason
        run = partial(TorchBackend, req.files.checkpoint, device=device, num_threads=req.num_threads)
        precisions = ("fp16", "fp32") if device == "cuda" else ("fp32",)
        return Plan(f"torch on {device}", [Candidate(p, partial(run, precision=p)) for p in precisions])

    return plan


KINDS = (
    Kind("torch-cuda", ("fp16", "fp32"), "cuda", cuda_unavailable_reason, _plan_on("cuda")),
    Kind("torch-cpu", ("fp32",), "cpu", partial(not_installed, "torch"), _plan_on("cpu")),
)
