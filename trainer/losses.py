"""Training losses: perceptual (VGG19 content + Gram style), adversarial, TV, temporal.

All images are [N,3,H,W] RGB in [0,1].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from trainer.vgg import VGG19Features, gram

STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1")
CONTENT_LAYER = "relu4_1"


class PerceptualLoss(torch.nn.Module):
    """Content loss (relu4_1 MSE) and Gram style loss against per-style targets.

    ``style_grams[layer]`` is [S,C,C]: one target Gram matrix per style, computed
    once from the paintings (:meth:`set_style_targets`). Feature maps are scaled
    by ``1/feature_scale`` so that losses are O(1) with the 0-255 VGG input.
    """

    feature_scale = 1000.0

    def __init__(self, vgg: VGG19Features) -> None:
        super().__init__()
        self.vgg = vgg
        self.style_grams: dict[str, torch.Tensor] = {}

    def features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        # float32 out whatever the autocast: Gram matrices and losses are taken in float32.
        return {k: v.float() / self.feature_scale for k, v in self.vgg(x, STYLE_LAYERS).items()}

    @torch.no_grad()
    def style_targets(self, crops: torch.Tensor) -> dict[str, torch.Tensor]:
        """Mean Gram over several crops of one painting: {layer: [C,C]}."""
        feats = self.features(crops)
        return {k: gram(v).mean(0) for k, v in feats.items()}

    def set_style_targets(self, per_style: list[dict[str, torch.Tensor]]) -> None:
        self.style_grams = {k: torch.stack([t[k] for t in per_style]) for k in STYLE_LAYERS}

    def forward(
        self, output: torch.Tensor, content: torch.Tensor, style_weights: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Returns (content loss, style loss, output features).

        ``style_weights`` [N,S] rows summing to 1: the target Gram of a mixed
        sample is the same mix of the styles' Grams.
        """
        out_f = self.features(output)
        with torch.no_grad():
            content_f = self.features(content)[CONTENT_LAYER]
        with torch.autocast(output.device.type, enabled=False):  # Grams and losses in float32
            l_content = F.mse_loss(out_f[CONTENT_LAYER], content_f)
            l_style = out_f[CONTENT_LAYER].new_zeros(())
            for layer in STYLE_LAYERS:
                target = torch.einsum("ns,scd->ncd", style_weights.float(), self.style_grams[layer])
                l_style = l_style + F.mse_loss(gram(out_f[layer]), target, reduction="sum") / output.shape[0]
        return l_content, l_style, out_f


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


def shift_pair(x: torch.Tensor, dy: int, dx: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Crop two views of ``x`` offset by (dy, dx) pixels: view_a[i, j] == view_b[i+dy, j+dx].

    Both views are (H-|dy|) x (W-|dx|), cropped further down to a multiple of 4
    so the generator accepts them.
    """
    h, w = x.shape[-2:]
    hh, ww = (h - abs(dy)) // 4 * 4, (w - abs(dx)) // 4 * 4
    ay, ax = max(dy, 0), max(dx, 0)
    by, bx = max(-dy, 0), max(-dx, 0)
    return x[..., ay : ay + hh, ax : ax + ww], x[..., by : by + hh, bx : bx + ww]


def temporal_loss(
    generator: torch.nn.Module,
    content: torch.Tensor,
    style_weights: torch.Tensor,
    max_shift: int = 6,
    noise: float = 0.02,
) -> torch.Tensor:
    """Stability under small motion and sensor noise (what stops video flicker).

    Two views of the same image, shifted by a random (dy, dx) and with
    independent noise, should give outputs that are shifts of each other:
    L1(G(view_a + n1), G(view_b + n2)) where view_b is view_a moved by (dy, dx).
    A camera's next frame is mostly this: the scene moved a little, new noise.
    Shifts that are not multiples of the generator's stride (4) are what a
    pixel-unshuffle network is least stable to, so they are sampled on purpose.
    """
    dy, dx = (int(v) for v in torch.randint(-max_shift, max_shift + 1, (2,)))
    a, b = shift_pair(content, dy, dx)
    # The overlap of the two views: a[dy:, dx:] and b[:-dy, :-dx] show the same pixels.
    a = (a + noise * torch.randn_like(a)).clamp(0, 1)
    b = (b + noise * torch.randn_like(b)).clamp(0, 1)
    ya, yb = generator(a, style_weights), generator(b, style_weights)
    h, w = ya.shape[-2:]
    ya_o = ya[..., max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)]
    yb_o = yb[..., max(dy, 0) : h - max(-dy, 0), max(dx, 0) : w - max(-dx, 0)]
    return (ya_o.float() - yb_o.float()).abs().mean()  # float32 under any autocast
