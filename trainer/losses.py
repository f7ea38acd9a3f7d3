"""Training losses: perceptual (VGG19 content + Gram style), adversarial, TV, temporal.

All images are [N,3,H,W] RGB in [0,1].
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from trainer.flow import FramePairs, warp_torch
from trainer.models import StyleGenerator
from trainer.vgg import VGG19Features, gram

STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1")
CONTENT_LAYER = "relu4_1"
STYLE_NORMS = ("absolute", "relative")


class PerceptualLoss(torch.nn.Module):
    """Content loss (relu4_1 MSE) and Gram style loss against per-style targets, at one or more scales.

    ``style_grams[level][layer]`` is [S,C,C]: one target Gram matrix per style,
    computed once from the paintings (:meth:`set_style_targets`). Level 0 compares
    the output as it is; level ``l`` compares the output average-pooled by ``2**l``
    with targets taken from the painting at ``1/2**l`` of the scale, so the Grams
    also see structures larger than VGG's receptive field (bold strokes, patches of
    colour). Feature maps are scaled by ``1/feature_scale`` so that losses are O(1)
    with the 0-255 VGG input.

    ``style_norm`` says how the four layers' Gram errors add up:

    ``"absolute"``
        summed squared errors. relu4_1's Grams are about 10^2 times relu2_1's and
        3_1's in energy and 10^5 times relu1_1's, so this is in effect a relu4_1
        loss: colours and fine marks (relu1_1, relu2_1) are learned only by the way.
    ``"relative"``
        each layer's squared error over the target's energy, averaged over the
        layers: per item and level exactly the style distance the quality bench
        reports (``trainer.metrics``), so every layer counts the same.
    """

    feature_scale = 1000.0

    def __init__(self, vgg: VGG19Features, levels: int = 1, style_norm: str = "absolute") -> None:
        super().__init__()
        if style_norm not in STYLE_NORMS:
            raise ValueError(f"style_norm must be one of {STYLE_NORMS}, got {style_norm!r}")
        self.vgg = vgg
        self.levels = levels
        self.style_norm = style_norm
        self.style_grams: list[dict[str, torch.Tensor]] = [{} for _ in range(levels)]

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        # float32 out whatever the autocast: Gram matrices and losses are taken in float32.
        return {k: v.float() / self.feature_scale for k, v in self.vgg(x, STYLE_LAYERS).items()}

    @torch.no_grad()
    def style_targets(self, crops: torch.Tensor) -> dict[str, torch.Tensor]:
        """Mean Gram over several crops of one painting: {layer: [C,C]}."""
        feats = self.features(crops)
        return {k: gram(v).mean(0) for k, v in feats.items()}

    def set_style_targets(self, per_style: list[dict[str, torch.Tensor]], level: int = 0) -> None:
        """The targets of every style (in style-weight order) at one level."""
        self.style_grams[level] = {k: torch.stack([t[k] for t in per_style]) for k in STYLE_LAYERS}

    def forward(
        self,
        output: torch.Tensor,
        content: torch.Tensor,
        style_weights: torch.Tensor,
        item_weights: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Returns (content loss, style loss, output features).

        ``style_weights`` [N,S] rows summing to 1: the target Gram of a mixed
        sample is the same mix of the styles' Grams. ``item_weights`` [N]: how much
        each item's style error counts (None: 1 each), e.g. a per-style emphasis.
        """
        out_f = self.features(output)
        with torch.no_grad():
            content_f = self.features(content)[CONTENT_LAYER]
        with torch.autocast(output.device.type, enabled=False):  # Grams and losses in float32
            l_content = F.mse_loss(out_f[CONTENT_LAYER], content_f)
            l_style = self._style_loss(out_f, style_weights, 0, item_weights)
        for level in range(1, self.levels):
            small = self.features(F.avg_pool2d(output, 2**level))
            with torch.autocast(output.device.type, enabled=False):
                l_style = l_style + self._style_loss(small, style_weights, level, item_weights)
        return l_content, l_style, out_f

    def texture_distance(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Gram distance of ``output`` to ``target``, item by item, in the style loss's units: how far
        apart the two pictures' marks are in size and kind, wherever they lie. ``target`` is fixed."""
        out_f = self.features(output)
        with torch.no_grad():
            target_f = self.features(target)
        with torch.autocast(output.device.type, enabled=False):
            return self._gram_error(out_f, {k: gram(v) for k, v in target_f.items()})

    def _style_loss(
        self,
        feats: dict[str, torch.Tensor],
        style_weights: torch.Tensor,
        level: int,
        item_weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        w = style_weights.float()
        return self._gram_error(
            feats,
            {k: torch.einsum("ns,scd->ncd", w, self.style_grams[level][k]) for k in STYLE_LAYERS},
            item_weights,
        )

    def _gram_error(
        self,
        feats: dict[str, torch.Tensor],
        targets: dict[str, torch.Tensor],
        item_weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Gram error of ``feats`` to per-item target Grams [N,C,C], summed over the layers
        (absolute) or their mean relative error (relative), averaged over the items (each
        counted ``item_weights`` times, when given)."""
        loss = feats[STYLE_LAYERS[0]].new_zeros(())
        for layer in STYLE_LAYERS:
            g, target = gram(feats[layer]), targets[layer]
            if self.style_norm == "relative":
                err = relative_gram_error(g, target) / len(STYLE_LAYERS)
            else:
                err = (g - target).pow(2).sum((1, 2))
            loss = loss + (err if item_weights is None else err * item_weights.float()).mean()
        return loss


def relative_gram_error(grams: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``||G - T||^2 / ||T||^2`` over the last two (channel) dims: one layer's term of the style
    distance (``trainer.metrics``) and of the relative style loss. [..., C, C] -> [...]."""
    return (grams - target).pow(2).sum((-2, -1)) / target.pow(2).sum((-2, -1)).clamp_min(1e-12)


def relative_style_error(feats: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> torch.Tensor:
    """The style distance (``trainer.metrics``) of feature maps ``feats`` {layer: [N,C,H,W]} to target
    Grams ``targets`` {layer: [C,C] or [N,C,C]}, item by item and differentiable: the mean over
    ``STYLE_LAYERS`` of :func:`relative_gram_error`. -> [N]."""
    return torch.stack([relative_gram_error(gram(feats[k]), targets[k]) for k in STYLE_LAYERS]).mean(0)


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between neighbouring pixels."""
    return (x[..., 1:, :] - x[..., :-1, :]).abs().mean() + (x[..., :, 1:] - x[..., :, :-1]).abs().mean()


def hinge_d_loss(real: list[torch.Tensor], fake: list[torch.Tensor]) -> torch.Tensor:
    """Discriminator hinge loss summed over scales."""
    loss = real[0].new_zeros(())
    for r, f in zip(real, fake, strict=True):
        loss = loss + F.relu(1 - r).mean() + F.relu(1 + f).mean()
    return loss


def hinge_g_loss(fake: list[torch.Tensor]) -> torch.Tensor:
    """Generator side of the hinge loss summed over scales."""
    loss = fake[0].new_zeros(())
    for f in fake:
        loss = loss - f.mean()
    return loss


def shift_pair(x: torch.Tensor, dy: int, dx: int, multiple: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop two views of ``x`` offset by (dy, dx) pixels: view_a[i, j] == view_b[i+dy, j+dx].

    Both views are (H-|dy|) x (W-|dx|), cropped further down to a multiple of
    ``multiple`` (the generator's stride) so the generator accepts them.
    """
    h, w = x.shape[-2:]
    hh, ww = (h - abs(dy)) // multiple * multiple, (w - abs(dx)) // multiple * multiple
    ay, ax = max(dy, 0), max(dx, 0)
    by, bx = max(-dy, 0), max(-dx, 0)
    return x[..., ay : ay + hh, ax : ax + ww], x[..., by : by + hh, bx : bx + ww]


def temporal_loss(
    generator: StyleGenerator,
    content: torch.Tensor,
    style_weights: torch.Tensor,
    max_shift: int = 6,
    noise: float = 0.02,
    stroke: torch.Tensor | None = None,
) -> torch.Tensor:
    """Stability under small motion and sensor noise (what stops video flicker).

    Two views of the same image, shifted by a random (dy, dx) and with
    independent noise, should give outputs that are shifts of each other:
    L1(G(view_a + n1), G(view_b + n2)) where view_b is view_a moved by (dy, dx).
    A camera's next frame is mostly this: the scene moved a little, new noise.
    Shifts that are not multiples of the generator's stride are what a
    down-sampling network is least stable to, so they are sampled on purpose.
    """
    dy, dx = (int(v) for v in torch.randint(-max_shift, max_shift + 1, (2,)))
    a, b = shift_pair(content, dy, dx, generator.config.stride)
    # The overlap of the two views: a[dy:, dx:] and b[:-dy, :-dx] show the same pixels.
    a = (a + noise * torch.randn_like(a)).clamp(0, 1)
    b = (b + noise * torch.randn_like(b)).clamp(0, 1)
    ya, yb = generator(a, style_weights, stroke), generator(b, style_weights, stroke)
    h, w = ya.shape[-2:]
    ya_o = ya[..., max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)]
    yb_o = yb[..., max(dy, 0) : h - max(-dy, 0), max(dx, 0) : w - max(-dx, 0)]
    return (ya_o.float() - yb_o.float()).abs().mean()  # float32 under any autocast


def flow_temporal_loss(
    generator: StyleGenerator,
    pairs: FramePairs,
    style_weights: torch.Tensor,
    stroke: torch.Tensor | None = None,
) -> torch.Tensor:
    """Stability on real motion (Ruder et al. 2016; Lai et al. 2018): consecutive frames of a
    real video, stylized, must agree where optical flow says they show the same thing.

    L1(G(frame t), warp(G(frame t-1))) over the pixels where the flow holds (not
    occluded), with the flow measured on the input frames (:class:`trainer.flow.VideoPairs`).
    """
    device = style_weights.device
    y_prev = generator(pairs.prev.to(device), style_weights, stroke)
    y_cur = generator(pairs.cur.to(device), style_weights, stroke)
    warped = warp_torch(y_prev.float(), pairs.grid.to(device))
    valid = pairs.valid.to(device)
    return ((y_cur.float() - warped).abs() * valid).sum() / (valid.sum() * 3).clamp_min(1.0)


def resolution_step_loss(
    generator: StyleGenerator,
    content: torch.Tensor,
    output: torch.Tensor,
    style_weights: torch.Tensor,
    stroke: torch.Tensor,
    texture: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Auto resolution's step, trained (v2): the frame at half size, painted at half the network
    stroke, must look like the full-size picture reduced to that size.

    That is what a user sees when auto resolution halves the processing size: the same stroke,
    relative to the frame (``common.stroke``). ``output`` is the generator's picture of
    ``content`` at ``stroke``; it is the target, detached, so only the half-size pass learns.
    Returns (L1, texture): L1 between ``G(reduce(content), stroke / 2)`` and ``reduce(output)``,
    box-reduced by 2, and ``texture(half-size picture, target)`` (0 without one), such as
    :meth:`PerceptualLoss.texture_distance`. L1 alone gets the colours and shapes right but
    settles for blurred marks where it cannot place them exactly; the texture term asks for
    marks of the same size and strength. Only the items whose half stroke is still within the
    anchors count (smaller ones are clamped and cannot shrink the brush further); both terms are
    0 when no item qualifies. H and W: multiples of 2 x stride.
    """
    zero = output.new_zeros((), dtype=torch.float32)
    keep = stroke / 2 >= generator.config.strokes[0] - 1e-6
    if not bool(keep.any()):
        return zero, zero
    idx = keep.nonzero().flatten().to(content.device)
    small = F.avg_pool2d(content[idx], 2)
    target = F.avg_pool2d(output[idx].detach().float(), 2)
    y = generator(small, style_weights[idx], stroke[keep] / 2)
    l1 = (y.float() - target).abs().mean()
    return l1, (zero if texture is None else texture(y, target))
