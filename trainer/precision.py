"""Mixed precision for training: bf16 autocast where the hardware has it, float32 elsewhere.

``--precision auto`` (the default): on a CPU with AMX or AVX512-BF16, bf16 autocast
(VGG19 forward+backward measured about 4x faster than float32 on an AMX Xeon); on
other CPUs float32 (bf16 is emulated there and slower); on CUDA, bf16 where the GPU
supports it, else fp16 with a gradient scaler. The Gram matrices and every loss are
computed in float32 whatever the autocast (``trainer.losses``), so the precision
changes the speed, not what is optimised.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from common.cpu import cpu_bf16_flag

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Autocast:
    """The autocast a run uses, and why (recorded in the checkpoint's training config)."""

    precision: str  # "fp32", "bf16" or "fp16"
    device_type: str  # "cpu" or "cuda"
    reason: str

    @property
    def dtype(self) -> torch.dtype | None:
        return DTYPES.get(self.precision)

    def __call__(self) -> contextlib.AbstractContextManager[None]:
        """The autocast region for forward passes (a no-op in float32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def scaler(self) -> torch.amp.GradScaler | None:
        """fp16 needs loss scaling (its exponent range is small); bf16 and fp32 do not."""
        return torch.amp.GradScaler(self.device_type) if self.precision == "fp16" else None


def pick_autocast(precision: str, device: torch.device) -> Autocast:
    """The autocast for ``precision`` ("auto" or one of fp32/bf16/fp16) on ``device``."""
    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    kind = device.type
    if precision == "auto":
        if kind == "cuda":
            if torch.cuda.is_bf16_supported():
                return Autocast("bf16", kind, "auto: bf16 autocast, the GPU supports bf16")
            return Autocast("fp16", kind, "auto: fp16 autocast with loss scaling, the GPU has no bf16")
        if flag := cpu_bf16_flag():
            return Autocast("bf16", kind, f"auto: bf16 autocast, the CPU has {flag}")
        return Autocast("fp32", kind, "auto: float32, this CPU has no bf16 units (bf16 would be emulated, slower)")
    if precision == "fp16" and kind != "cuda":
        raise ValueError("--precision fp16 is for CUDA GPUs; on the CPU use bf16 or fp32")
    return Autocast(precision, kind, f"{precision} requested")
