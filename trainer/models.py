"""The style generator and its discriminator.

One generator learns many styles at once. Every normalisation layer is a
*conditional instance norm* (Dumoulin et al., 2017): the convolutions are
shared, each style owns one row of scale/shift parameters, and a style mix is
the weighted average of those rows. Mixing is therefore free at run time: the
style-weight vector is an ordinary input of the network.

The generator is shaped for speed on small CPUs and for any H, W that are
multiples of ``GeneratorConfig.stride`` (4):

    image [N,3,H,W] in [0,1]
      -> pixel-unshuffle x2            [N,12,H/2,W/2]   (lossless, no arithmetic)
      -> conv3x3 12->c_half, CIN, ReLU  [N,c_half,H/2,W/2]
      -> pixel-unshuffle x2, conv1x1 -> width, CIN, ReLU  [N,width,H/4,W/4]
      -> num_blocks x depthwise-separable residual blocks at 1/4 scale,
         dilations alternating 1, 2 (receptive field grows at no extra cost)
      -> conv1x1 width -> 4*c_half, pixel-shuffle x2, CIN, ReLU  [N,c_half,H/2,W/2]
      -> conv3x3 c_half -> 12, pixel-shuffle x2, sigmoid   [N,3,H,W]

Nothing runs at full resolution except the two (free) shuffles and the final
sigmoid, which is what makes 640x480 cheap.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


@dataclass(frozen=True)
class GeneratorConfig:
    """Architecture of :class:`Generator`; stored in every checkpoint."""

    num_styles: int
    width: int = 64  # channels at 1/4 scale, where most of the work happens
    half_width: int = 16  # channels at 1/2 scale (stem and last decoder stage)
    num_blocks: int = 7  # depthwise-separable residual blocks at 1/4 scale
    stride: int = 4  # H and W must be multiples of this

    def __post_init__(self) -> None:
        if self.num_styles < 1:
            raise ValueError(f"num_styles must be >= 1, got {self.num_styles}")
        for name in ("width", "half_width", "num_blocks"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.stride != 4:
            raise ValueError("this generator downsamples by exactly 4 (stride=4)")

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class DiscriminatorConfig:
    """Architecture of :class:`Discriminator`."""

    num_styles: int
    width: int = 32
    num_layers: int = 3  # stride-2 convs per scale; patch size grows with it
    num_scales: int = 2  # 1, 1/2, ... resolution pyramids

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


class CondInstanceNorm(nn.Module):
    """Instance norm whose scale and shift are a style-weighted mix of rows.

    ``gamma``/``beta`` are [num_styles, C]. With mix weights ``w`` [N, S] (rows
    sum to 1), the effective affine is ``w @ gamma`` [N, C]: a one-hot ``w`` is
    exactly one style, anything else interpolates the parameters. The
    generator computes every layer's affine with one matmul
    (:meth:`Generator.style_affines`) and passes it in.
    """

    def __init__(self, num_styles: int, channels: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(num_styles, channels))
        self.beta = nn.Parameter(torch.zeros(num_styles, channels))

    def forward(self, x: torch.Tensor, affine: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        # x: [N,C,H,W]; affine: (gamma [N,C], beta [N,C]). F.instance_norm exports as one
        # InstanceNormalization op, which OpenVINO and TensorRT run fused.
        gamma, beta = affine
        return F.instance_norm(x, eps=1e-5) * gamma[:, :, None, None] + beta[:, :, None, None]


class ResBlock(nn.Module):
    """Depthwise 3x3 (dilated) -> CIN -> ReLU -> pointwise 1x1 -> CIN, plus skip."""

    def __init__(self, num_styles: int, channels: int, dilation: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(
            channels,
            channels,
            3,
            padding=dilation,
            dilation=dilation,
            groups=channels,
            padding_mode="reflect",
            bias=False,
        )
        self.n1 = CondInstanceNorm(num_styles, channels)
        self.pw = nn.Conv2d(channels, channels, 1, bias=False)
        self.n2 = CondInstanceNorm(num_styles, channels)

    def forward(
        self, x: torch.Tensor, a1: tuple[torch.Tensor, torch.Tensor], a2: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        y = F.relu(self.n1(self.dw(x), a1))
        return x + self.n2(self.pw(y), a2)


class Generator(nn.Module):
    """Multi-style feed-forward stylizer: ``forward(image, style) -> image``.

    image: [N,3,H,W] float in [0,1], H and W multiples of ``config.stride``.
    style: [N,S] or [S] non-negative weights, any scale (normalised to sum 1).
    returns: [N,3,H,W] float in (0,1).
    """

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.config = config
        s, c, h = config.num_styles, config.width, config.half_width
        self.stem = nn.Conv2d(12, h, 3, padding=1, padding_mode="reflect", bias=False)
        self.stem_norm = CondInstanceNorm(s, h)
        self.down = nn.Conv2d(4 * h, c, 1, bias=False)
        self.down_norm = CondInstanceNorm(s, c)
        self.blocks = nn.ModuleList(ResBlock(s, c, dilation=1 + (i % 2)) for i in range(config.num_blocks))
        self.up = nn.Conv2d(c, 4 * h, 1, bias=False)
        self.up_norm = CondInstanceNorm(s, h)
        self.head = nn.Conv2d(h, 12, 3, padding=1, padding_mode="reflect")
        # Every CIN in the order forward() uses them.
        self.norms: list[CondInstanceNorm] = [
            self.stem_norm,
            self.down_norm,
            *(n for b in self.blocks if isinstance(b, ResBlock) for n in (b.n1, b.n2)),
            self.up_norm,
        ]

    @staticmethod
    def normalize_style(style: torch.Tensor, batch: int) -> torch.Tensor:
        """[S] or [N,S] non-negative weights -> [N,S] rows summing to 1.

        The check for negative or all-zero weights lives at the API boundary
        (:func:`check_style`); inside the graph a tiny epsilon keeps it finite.
        """
        if style.dim() == 1:
            style = style.unsqueeze(0).expand(batch, -1)
        return style / style.sum(dim=1, keepdim=True).clamp_min(1e-8)

    def style_affines(self, w: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(gamma [N,C], beta [N,C]) of every CIN for mix weights ``w`` [N,S], in forward order.

        One matmul against all layers' rows side by side ([S, 2*sum(C)]); in an
        exported graph the concatenated table is a constant, so a style mix costs
        a single tiny MatMul per frame instead of two per layer.
        """
        table = torch.cat([torch.cat([n.gamma, n.beta], 1) for n in self.norms], 1)
        flat = w @ table  # [N, 2*sum(C)]
        out, offset = [], 0
        for n in self.norms:
            c = n.gamma.shape[1]
            out.append((flat[:, offset : offset + c], flat[:, offset + c : offset + 2 * c]))
            offset += 2 * c
        return out

    def forward(self, image: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        w = self.normalize_style(style.to(image.dtype), image.shape[0])
        a = self.style_affines(w)
        x = F.pixel_unshuffle(image * 2.0 - 1.0, 2)  # [N,12,H/2,W/2]
        x = F.relu(self.stem_norm(self.stem(x), a[0]))
        x = F.relu(self.down_norm(self.down(F.pixel_unshuffle(x, 2)), a[1]))  # [N,C,H/4,W/4]
        for i, block in enumerate(self.blocks):
            x = block(x, a[2 + 2 * i], a[3 + 2 * i])
        x = F.relu(self.up_norm(F.pixel_shuffle(self.up(x), 2), a[-1]))  # [N,h,H/2,W/2]
        return torch.sigmoid(F.pixel_shuffle(self.head(x), 2))  # [N,3,H,W]

    def style_parameters(self) -> list[nn.Parameter]:
        """The per-style rows (every CIN's gamma and beta)."""
        return [p for n in self.norms for p in (n.gamma, n.beta)]


def check_style(style: torch.Tensor, num_styles: int) -> None:
    """Raise ``ValueError`` for a weight vector the generator cannot use."""
    if style.shape[-1] != num_styles:
        raise ValueError(f"style weights need {num_styles} values, got {style.shape[-1]}")
    if not torch.isfinite(style).all():
        raise ValueError("style weights must be finite")
    if (style < 0).any():
        raise ValueError("style weights must be non-negative")
    if (style.sum(dim=-1) <= 0).any():
        raise ValueError("style weights must not all be zero")


def one_hot(indices: torch.Tensor | list[int], num_styles: int) -> torch.Tensor:
    """Style indices [N] -> one-hot weights [N,S]; a clear error for a bad index."""
    idx = torch.as_tensor(indices, dtype=torch.long)
    if idx.numel() and (idx.min() < 0 or idx.max() >= num_styles):
        raise ValueError(f"style index out of range 0..{num_styles - 1}: {idx.tolist()}")
    return F.one_hot(idx, num_styles).float()


class PatchDiscriminator(nn.Module):
    """One scale of the PatchGAN: stride-2 spectral-norm convs, a head per style."""

    def __init__(self, config: DiscriminatorConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        ch_in, ch = 3, config.width
        for _ in range(config.num_layers):
            layers += [spectral_norm(nn.Conv2d(ch_in, ch, 4, stride=2, padding=1)), nn.LeakyReLU(0.2)]
            ch_in, ch = ch, min(ch * 2, 8 * config.width)
        layers += [spectral_norm(nn.Conv2d(ch_in, ch_in, 3, padding=1)), nn.LeakyReLU(0.2)]
        self.body = nn.Sequential(*layers)
        # One real/fake logit map per style: [N,S,h,w].
        self.heads = spectral_norm(nn.Conv2d(ch_in, config.num_styles, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.heads(self.body(x))


class Discriminator(nn.Module):
    """Multi-scale PatchGAN with one output head per style.

    ``forward(image [N,3,H,W] in [0,1], style_index [N])`` returns a list (one
    entry per scale) of patch logits [N,1,h,w] from each sample's own style head.
    """

    def __init__(self, config: DiscriminatorConfig) -> None:
        super().__init__()
        self.config = config
        self.scales = nn.ModuleList(PatchDiscriminator(config) for _ in range(config.num_scales))

    def forward(self, image: torch.Tensor, style_index: torch.Tensor) -> list[torch.Tensor]:
        x = image * 2.0 - 1.0
        out = []
        for i, d in enumerate(self.scales):
            if i:
                x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
            logits = d(x)  # [N,S,h,w]
            idx = style_index.view(-1, 1, 1, 1).expand(-1, 1, *logits.shape[2:])
            out.append(logits.gather(1, idx))
        return out
