"""The generator with its uint8 NHWC <-> float NCHW conversions, as one torch module.

Shared by the ONNX export (it is what gets exported) and the torch backend (it
is what runs), so the reference and the exported graph compute the same thing.
"""

from __future__ import annotations

import torch
from torch import nn

from trainer.models import StyleGenerator


class UInt8Generator(nn.Module):
    """``forward(image uint8 [N,H,W,3] RGB, style float32 [N,S], stroke float32 [N]) -> uint8 [N,H,W,3] RGB``.

    H and W must be multiples of the generator's stride (4 for v1, 8 for v2). Style
    rows are non-negative weights of any scale; the generator normalises them to
    sum 1. ``stroke`` (v2) is the brush size in network pixels (``common.stroke``);
    v1 ignores it. The output is rounded half-to-even (``torch.round``, ONNX
    ``Round``) and clamped.

    The uint8 ends are a Cast right at the graph's edge: the image is cast to float
    before the layout change, and the result cast to uint8 after it. TensorRT lets a
    uint8 tensor touch nothing but a Cast (not even a Transpose), and the values
    are identical either way (a permutation does not change them).

    ``dtype=torch.float16`` makes the float16 graph a TensorRT fp16 plan is built from:
    the network's weights and activations in float16, the uint8 ends, the style weights'
    normalisation and the final rounding in float32.
    """

    def __init__(self, generator: StyleGenerator, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.generator = generator.to(dtype)
        self.dtype = dtype  # float16: the network inside runs in it (a TensorRT fp16 plan is built from that)

    def forward(self, image: torch.Tensor, style: torch.Tensor, stroke: torch.Tensor | None = None) -> torch.Tensor:
        x = image.to(self.dtype).permute(0, 3, 1, 2) * (1.0 / 255.0)  # [N,3,H,W] in [0,1]
        s = None if stroke is None else stroke.to(self.dtype)
        # style stays float32: the generator normalises it in float32 before it meets the network
        y = self.generator(x, style.to(torch.float32), s).float()  # [N,3,H,W] in (0,1), back in float32
        y = torch.clamp(torch.round(y * 255.0), 0.0, 255.0)
        return y.permute(0, 2, 3, 1).contiguous().to(torch.uint8)  # [N,H,W,3]
