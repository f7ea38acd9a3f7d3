"""The generator with its uint8 NHWC <-> float NCHW conversions, as one torch module.

Shared by the ONNX export (it is what gets exported) and the torch backend (it
is what runs), so the reference and the exported graph compute the same thing.
"""

from __future__ import annotations

import torch
from torch import nn

from trainer.models import Generator


class UInt8Generator(nn.Module):
    """``forward(image uint8 [N,H,W,3] RGB, style float32 [N,S]) -> uint8 [N,H,W,3] RGB``.

    H and W must be multiples of the generator's stride (4). Style rows are
    non-negative weights of any scale; the generator normalises them to sum 1.
    The output is rounded half-to-even (``torch.round``, ONNX ``Round``) and clamped.
    """

    def __init__(self, generator: Generator) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, image: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        x = image.permute(0, 3, 1, 2).to(torch.float32) * (1.0 / 255.0)  # [N,3,H,W] in [0,1]
        y = self.generator(x, style.to(torch.float32)).float()  # [N,3,H,W] in (0,1)
        y = torch.clamp(torch.round(y * 255.0), 0.0, 255.0)
        return y.to(torch.uint8).permute(0, 2, 3, 1).contiguous()  # [N,H,W,3]
