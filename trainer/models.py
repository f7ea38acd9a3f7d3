"""The style generators and their discriminator.

One generator learns many styles at once. The convolutions are shared, each
style owns rows of per-channel scale/shift parameters, and a style mix is the
weighted average of those rows (Dumoulin et al., 2017). Mixing is therefore
free at run time: the style-weight vector is an ordinary input of the network.
Two versions, both described by :class:`GeneratorConfig` and built with
:func:`build_generator`:

**v1** (:class:`Generator`): conditional *instance* norm, depthwise-separable
blocks at 1/4 scale, H and W multiples of 4::

    image [N,3,H,W] in [0,1]
      -> pixel-unshuffle x2, conv3x3 12->half_width, CIN, ReLU     [N,h,H/2,W/2]
      -> pixel-unshuffle x2, conv1x1 -> width, CIN, ReLU            [N,C,H/4,W/4]
      -> num_blocks depthwise-separable residual blocks (dilation 1, 2, ...)
      -> conv1x1 -> 4*half_width, pixel-shuffle x2, CIN, ReLU        [N,h,H/2,W/2]
      -> conv3x3 -> 12, pixel-shuffle x2, sigmoid                   [N,3,H,W]

**v2** (:class:`GeneratorV2`): dense 3x3 convolutions where they buy strokes, a
1/8-scale trunk for a large receptive field (bold strokes), anti-aliased
down-sampling (shift stability), and conditional norms whose rows are indexed by
style *and* by stroke anchor, so a ``stroke`` input picks the brush size. H and
W multiples of 8::

    image [N,3,H,W]
      -> blur+conv s2 3->half_width, affine, ReLU                    [N,h,H/2,W/2]
      -> blur+conv s2 -> width, affine, ReLU                         [N,c,H/4,W/4]
      -> fine residual block (dense 3x3 x2)
      -> blur+conv s2 -> deep_width, affine, ReLU                    [N,d,H/8,W/8]
      -> num_blocks dense residual blocks (dilation 1, 2, 1, ...)
      -> conv1x1 -> 4*width, pixel-shuffle, (blur), affine, + skip, ReLU  [N,c,H/4,W/4]
      -> fine residual block
      -> conv1x1 -> 4*half_width, pixel-shuffle, (blur), affine, ReLU    [N,h,H/2,W/2]
      -> conv3x3 -> 12, (palette), pixel-shuffle x2, sigmoid        [N,3,H,W]

The blurs after the two coarse up-samplings (``up_blur``; off in the shipped v2) are fixed
[1,2,1] depthwise filters: without them the picture depends on where the scene falls on the 8-px
grid, which is most of what changes when the camera pans (:meth:`GeneratorV2.upsample`; the
README has what they measured). ``head_blur`` puts the same filter after the last, full-resolution
shuffle, on the three channels of the picture's logits.

Measured at 640x480 on OpenVINO (2 vCPUs, AMD EPYC with AVX512-BF16): dense
convs cost about 1 ms per 177 M multiply-adds in bf16, so v2 keeps to about
2 G of them (v1: 0.7 G, but most of its time goes to instance-norm passes,
depthwise convs and reorders). v2's norms sit on small maps (16 to 64 channels
at 1/2 to 1/8 scale): with them it ran 1.17x v1 in bf16 and 0.91x v1 in INT8
(v1 gains nothing from INT8), without them 1.02x in bf16 but it trained about
3x slower (style distance 0.64 after 539 steps, against 0.45 with them after
150). ``instance_norm`` keeps the choice ("none", "trunk", "all") in the config.

The stroke input is the brush size in *network pixels* relative to the
training reference: 1 paints the painting's own strokes on a frame whose short
side is 480 px, 2 paints them twice as large. The affine rows exist at the
anchors ``config.strokes`` (0.5, 1, 2); a stroke between two anchors
interpolates their rows linearly in log2(stroke), like a style mix, and down to
half an anchor step below the finest the line through its two finest rows goes
on (``common.stroke.stroke_limits``). ``config.stroke_floor`` and ``config.stroke_unit``
say how a runtime should ask for a stroke at each frame size (``common.stroke.StrokeScale``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from common.stroke import STROKE_UNIT_RANGE, StrokeScale, stroke_limits

# v2's shape, chosen by timing candidates at 640x480 (see the module docstring and the README).
V2_DEFAULTS: dict[str, Any] = {
    "width": 32,  # channels at 1/4 scale
    "half_width": 16,  # channels at 1/2 scale
    "num_blocks": 3,  # dense residual blocks at 1/8 scale
    "deep_width": 64,  # channels at 1/8 scale
    "fine_blocks": 2,  # dense residual blocks at 1/4 scale (half before the trunk, half after)
    "strokes": (0.5, 1.0, 2.0),  # stroke anchors (brush size relative to the reference); each has its rows
    "stride": 8,
    "instance_norm": "all",  # where affines normalise first: "none", "trunk" (1/8 scale) or "all"
}


@dataclass(frozen=True)
class GeneratorConfig:
    """Architecture of a generator; stored in every checkpoint.

    The class defaults are v1's, so a v1 checkpoint's stored config (which has no
    ``version``) reads back unchanged; :meth:`v2` gives v2's defaults.
    """

    num_styles: int
    width: int = 64  # v1: channels at 1/4 scale, where most of the work happens
    half_width: int = 16  # channels at 1/2 scale (stem and last decoder stage)
    num_blocks: int = 7  # v1: depthwise-separable blocks at 1/4 scale; v2: dense blocks at 1/8
    stride: int = 4  # H and W must be multiples of this
    version: int = 1
    deep_width: int = 0  # v2: channels at 1/8 scale
    fine_blocks: int = 0  # v2: dense blocks at 1/4 scale
    strokes: tuple[float, ...] = ()  # v2: stroke anchors, a geometric series such as (0.5, 1, 2)
    instance_norm: str = "none"  # v2: which affines normalise first: "none", "trunk" (1/8 scale), "all"
    up_blur: bool = False  # v2: a fixed [1,2,1] blur after each coarse pixel-shuffle up-sampling (shift stability)
    head_blur: bool = False  # v2: the same blur after the last, full-resolution one (on the picture's logits)
    stroke_floor: float = 0.0  # v2: the part of its marks that does not follow the stroke (common.stroke), measured
    stroke_unit: float = 1.0  # v2: the network stroke that a user's stroke 1 asks for (common.stroke), measured
    palette: bool = False  # v2: a per-style colour map on the picture's logits (trainer fit-palette fits it)

    @classmethod
    def v2(cls, num_styles: int, **overrides: Any) -> GeneratorConfig:
        """A v2 config: its defaults, with ``overrides``."""
        return cls(num_styles, **{**V2_DEFAULTS, "version": 2, **overrides})

    def __post_init__(self) -> None:
        object.__setattr__(self, "strokes", tuple(float(s) for s in self.strokes))  # JSON gives a list
        if self.num_styles < 1:
            raise ValueError(f"num_styles must be >= 1, got {self.num_styles}")
        for name in ("width", "half_width", "num_blocks"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.version == 1:
            if self.stride != 4:
                raise ValueError("the v1 generator downsamples by exactly 4 (stride=4)")
            v2_only = (self.strokes, self.deep_width, self.fine_blocks, self.instance_norm != "none", self.up_blur)
            if any(v2_only) or self.head_blur or self.stroke_floor or self.stroke_unit != 1.0 or self.palette:
                raise ValueError(
                    "strokes, deep_width, fine_blocks, instance_norm, up_blur, head_blur, stroke_floor, "
                    "stroke_unit and palette are v2 settings"
                )
        elif self.version == 2:
            if self.stride != 8:
                raise ValueError("the v2 generator downsamples by exactly 8 (stride=8)")
            if self.deep_width < 1 or self.fine_blocks < 0:
                raise ValueError("v2 needs deep_width >= 1 and fine_blocks >= 0")
            anchors = self.strokes
            if not anchors or any(a <= 0 for a in anchors) or list(anchors) != sorted(set(anchors)):
                raise ValueError(f"strokes must be increasing positive anchors, got {list(anchors)}")
            steps = [math.log2(b / a) for a, b in zip(anchors, anchors[1:], strict=False)]
            if steps and max(steps) - min(steps) > 1e-6:
                raise ValueError(f"stroke anchors must be evenly spaced in log2, got {list(anchors)}")
            if not 0.0 <= self.stroke_floor <= 1.0:
                raise ValueError(f"stroke_floor must be from 0 to 1, got {self.stroke_floor}")
            if not STROKE_UNIT_RANGE[0] <= self.stroke_unit <= STROKE_UNIT_RANGE[1]:
                lo, hi = STROKE_UNIT_RANGE
                raise ValueError(f"stroke_unit must be from {lo:g} to {hi:g}, got {self.stroke_unit}")
            if self.instance_norm not in ("none", "trunk", "all"):
                raise ValueError(f"instance_norm must be none, trunk or all, got {self.instance_norm!r}")
        else:
            raise ValueError(f"unknown generator version {self.version} (this code knows 1 and 2)")

    @property
    def num_strokes(self) -> int:
        """Rows per style: one per stroke anchor (v1: 1)."""
        return max(1, len(self.strokes))

    @property
    def stroke_scale(self) -> StrokeScale:
        """What a runtime asks this network for at each frame size (``common.stroke``)."""
        return StrokeScale(self.strokes, self.stroke_floor, self.stroke_unit)

    def to_dict(self) -> dict[str, Any]:
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
    """The v1 multi-style stylizer: ``forward(image, style) -> image``.

    image: [N,3,H,W] float in [0,1], H and W multiples of ``config.stride``.
    style: [N,S] or [S] non-negative weights, any scale (normalised to sum 1).
    stroke: accepted for a common signature and ignored: v1 has one brush size
    (the runtimes give it a stroke setting by resampling the frame).
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
        """[S] or [N,S] non-negative weights -> [N,S] rows summing to 1, in float32.

        The check for negative or all-zero weights lives at the API boundary
        (:func:`check_style`); inside the graph a tiny epsilon keeps it finite. The sum is
        taken in float32 whatever the network runs in: weights "of any scale" would overflow
        float16's 65504.
        """
        style = style.float()
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

    def forward(self, image: torch.Tensor, style: torch.Tensor, stroke: torch.Tensor | None = None) -> torch.Tensor:
        w = self.normalize_style(style, image.shape[0]).to(image.dtype)
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


# [1,2,1] x [1,2,1] / 16: the binomial low-pass applied before every stride-2 step of v2.
_BLUR = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16.0


class CondAffine(nn.Module):
    """Per-channel scale and shift from style x stroke rows, after an instance norm or (FiLM) without.

    ``gamma``/``beta`` are [num_styles, num_strokes, C]. The generator computes
    every layer's (gamma [N,C], beta [N,C]) at once (:meth:`GeneratorV2.style_affines`):
    each style's rows interpolated over the stroke anchors, then mixed by the style
    weights in one matmul. With ``normalize`` it is a conditional
    instance norm (the rows then set each channel's mean and spread, which is
    what makes a style); without, a plain affine that fuses into the conv before
    it (see the module docstring for what each measured).
    """

    def __init__(
        self, num_styles: int, num_strokes: int, channels: int, scale: float = 1.0, normalize: bool = False
    ) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((num_styles, num_strokes, channels), scale))
        self.beta = nn.Parameter(torch.zeros(num_styles, num_strokes, channels))
        self.normalize = normalize

    def forward(self, x: torch.Tensor, affine: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        gamma, beta = affine  # [N,C] each
        if self.normalize:
            x = F.instance_norm(x, eps=1e-5)  # one fused InstanceNormalization op in the exported graph
        return x * gamma[:, :, None, None] + beta[:, :, None, None]


class Palette(nn.Module):
    """A per-style colour map on the picture's logits: ``z -> A z + b`` (``A`` 3x3, ``b`` 3), before the sigmoid.

    ``rows`` is [num_styles, 3, 4] (``[A | b]``), identity at the start; a mix averages the rows
    with the style weights, like every other per-style row. It works on the head's 12 channels
    (3 colours x 4 sub-pixels, before the pixel shuffle), which is the same map on the same numbers:
    the shuffle and the blur after it only move and average values within one colour. Training's
    losses leave a model's colours short of its paintings' (the low VGG layers' Gram distance was
    5-9x the one-shot network's on The Great Wave); ``python -m trainer fit-palette`` fits the rows
    with the network frozen, weighing style distance against content and steadiness.
    """

    def __init__(self, num_styles: int) -> None:
        super().__init__()
        self.rows = nn.Parameter(self.identity().repeat(num_styles, 1, 1))

    @staticmethod
    def identity() -> torch.Tensor:
        """One style's row [3,4] that leaves the picture as it is."""
        return torch.cat([torch.eye(3), torch.zeros(3, 1)], 1)

    def forward(self, z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        n, c, h, width = z.shape  # c = 12: colour-major (pixel_shuffle takes channels c*4 .. c*4+3)
        m = (w @ self.rows.flatten(1)).view(n, 3, 4)  # [N,3,4], the mixed map
        out = torch.bmm(m[:, :, :3], z.reshape(n, 3, (c // 3) * h * width)) + m[:, :, 3:]
        return out.view(n, c, h, width)


class BlurDown(nn.Module):
    """Anti-aliased stride-2 conv: a learned 3x3 kernel convolved with a fixed binomial blur.

    The layer can never alias: a one-pixel shift of the input moves its output by half a
    pixel, smoothly (Zhang, "Making convolutional networks shift-invariant again", 2019).
    It computes the binomial blur per channel and then the learned 3x3 conv at stride 2,
    the same arithmetic as one 5x5 conv with the composed kernel (:meth:`kernel`), in
    9 Cin Cout + 36 Cin multiply-adds per output pixel instead of 25 Cin Cout (for 16 -> 32
    channels, 2.5x fewer). Measured at 640x480 on OpenVINO with an AVX2 EPYC: the whole of
    v2 took 0.89-0.97x the time in fp32 (three runs; README, v2 speed).
    """

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(cout, cin, 3, 3))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        self.blur: torch.Tensor
        self.register_buffer("blur", _BLUR.clone()[None, None], persistent=False)

    def kernel(self) -> torch.Tensor:
        """The effective [cout, cin, 5, 5] kernel: what :meth:`forward` computes in two steps."""
        cout, cin = self.weight.shape[:2]
        w = F.conv2d(self.weight.reshape(cout * cin, 1, 3, 3), self.blur.to(self.weight.dtype), padding=2)
        return w.reshape(cout, cin, 5, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Reflect-pad by the composed kernel's reach (2), blur (valid), then the 3x3 at stride 2
        # (valid): window for window the 5x5 conv with kernel() on the same padded input.
        c = x.shape[1]
        x = F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), self.blur.to(x.dtype).expand(c, 1, 3, 3), groups=c)
        return F.conv2d(x, self.weight, stride=2)


class DenseBlock(nn.Module):
    """conv3x3 (dilated) -> affine -> ReLU -> conv3x3 -> affine, plus skip.

    The second affine starts at 0.2 so every block begins close to the identity
    (stable from the first step, with or without normalisation statistics).
    """

    def __init__(self, num_styles: int, num_strokes: int, channels: int, dilation: int, normalize: bool) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(
            channels, channels, 3, padding=dilation, dilation=dilation, padding_mode="reflect", bias=False
        )
        self.n1 = CondAffine(num_styles, num_strokes, channels, normalize=normalize)
        self.c2 = nn.Conv2d(channels, channels, 3, padding=1, padding_mode="reflect", bias=False)
        self.n2 = CondAffine(num_styles, num_strokes, channels, scale=0.2, normalize=normalize)

    def forward(
        self, x: torch.Tensor, a1: tuple[torch.Tensor, torch.Tensor], a2: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        return x + self.n2(self.c2(F.relu(self.n1(self.c1(x), a1))), a2)


def icnr_(conv: nn.Conv2d, scale: int = 2) -> None:
    """Initialise a conv that feeds a pixel shuffle so all ``scale**2`` sub-pixels start equal
    (Aitken et al. 2017, "ICNR"): the upsampling begins as nearest-neighbour, without the
    checkerboard a random start leaves, which would read as a fixed grid on video."""
    out_c = conv.weight.shape[0] // scale**2
    base = torch.empty(out_c, *conv.weight.shape[1:])
    nn.init.kaiming_uniform_(base, a=math.sqrt(5))
    with torch.no_grad():
        conv.weight.copy_(base.repeat_interleave(scale**2, dim=0))
        if conv.bias is not None:
            conv.bias.copy_(conv.bias.view(out_c, scale**2)[:, :1].expand(-1, scale**2).reshape(-1))


class GeneratorV2(nn.Module):
    """The v2 multi-style stylizer with a stroke control: ``forward(image, style, stroke) -> image``.

    image: [N,3,H,W] float in [0,1], H and W multiples of ``config.stride`` (8).
    style: [N,S] or [S] non-negative weights, any scale (normalised to sum 1).
    stroke: [N] or [] brush size relative to the reference (None: 1); clamped to
    ``common.stroke.stroke_limits`` (half an anchor step below the finest anchor to the boldest).
    returns: [N,3,H,W] float in (0,1).
    """

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        if config.version != 2:
            raise ValueError(f"GeneratorV2 needs a version 2 config, got version {config.version}")
        self.config = config
        s, k = config.num_styles, config.num_strokes
        h, c, d = config.half_width, config.width, config.deep_width
        norm = config.instance_norm == "all"  # the 1/2- and 1/4-scale affines
        deep = config.instance_norm in ("trunk", "all")  # the 1/8-scale ones: small maps, cheap statistics
        self.down1 = BlurDown(3, h)
        self.n_down1 = CondAffine(s, k, h, normalize=norm)
        self.down2 = BlurDown(h, c)
        self.n_down2 = CondAffine(s, k, c, normalize=norm)
        fine = config.fine_blocks
        self.fine_in = nn.ModuleList(DenseBlock(s, k, c, 1, norm) for _ in range(fine // 2))
        self.down3 = BlurDown(c, d)
        self.n_down3 = CondAffine(s, k, d, normalize=deep)
        self.blocks = nn.ModuleList(DenseBlock(s, k, d, 1 + (i % 2), deep) for i in range(config.num_blocks))
        self.up3 = nn.Conv2d(d, 4 * c, 1, bias=False)
        self.n_up3 = CondAffine(s, k, c, normalize=norm)
        self.fine_out = nn.ModuleList(DenseBlock(s, k, c, 1, norm) for _ in range(fine - fine // 2))
        self.up2 = nn.Conv2d(c, 4 * h, 1, bias=False)
        self.n_up2 = CondAffine(s, k, h, normalize=norm)
        self.head = nn.Conv2d(h, 12, 3, padding=1, padding_mode="reflect")
        for conv in (self.up3, self.up2, self.head):
            icnr_(conv)
        self.palette = Palette(s) if config.palette else None
        blocks = [*self.fine_in, *self.blocks, *self.fine_out]
        # Every affine in the order forward() uses them.
        self.norms: list[CondAffine] = [
            self.n_down1,
            self.n_down2,
            *(n for b in self.fine_in if isinstance(b, DenseBlock) for n in (b.n1, b.n2)),
            self.n_down3,
            *(n for b in self.blocks if isinstance(b, DenseBlock) for n in (b.n1, b.n2)),
            self.n_up3,
            *(n for b in self.fine_out if isinstance(b, DenseBlock) for n in (b.n1, b.n2)),
            self.n_up2,
        ]
        assert len(self.norms) == 5 + 2 * len(blocks)
        self.blur: torch.Tensor  # for up_blur; not in the state dict, so models with and without it share keys
        self.register_buffer("blur", _BLUR.clone()[None, None], persistent=False)
        # Plain floats: constants in an exported graph.
        self.log2_anchors = [math.log2(a) for a in config.strokes]
        self.log2_finest = math.log2(stroke_limits(config.strokes)[0])  # below the finest anchor: extrapolated
        # The same as tensors, made once on the model's device: a tensor built from a list in forward()
        # is a host-to-device copy on every frame, which a CUDA graph cannot capture. Not in the state dict.
        self.anchor_grid: torch.Tensor
        self.register_buffer("anchor_grid", torch.tensor(self.log2_anchors), persistent=False)
        self.finer_line: torch.Tensor  # the extrapolation below the finest anchor: +1 on it, -1 on the next
        self.register_buffer("finer_line", torch.tensor([1.0, -1.0, *[0.0] * (k - 2)])[:k], persistent=False)

    normalize_style = staticmethod(Generator.normalize_style)

    def stroke_weights(self, stroke: torch.Tensor | None, batch: int, dtype: torch.dtype) -> torch.Tensor:
        """Stroke sizes [N] (or [], or None for 1) -> interpolation weights over the anchors [N,K].

        Piecewise linear in log2(stroke) between neighbouring anchors ("hat" weights that
        sum to 1); exactly one-hot at an anchor. Below the finest anchor the first step's line
        goes on for ``common.stroke.FINER_THAN_ANCHORS`` of a step (weights 1 + e and -e on the two finest
        anchors: finer marks than training drew, measured in ``bench.stroke_step``); beyond
        that, and above the boldest anchor, the stroke is clamped (``common.stroke.stroke_limits``).
        """
        anchors = self.log2_anchors
        device = self.down1.weight.device
        if stroke is None:
            stroke = torch.ones((), dtype=dtype, device=device)
        u = torch.log2(stroke.to(device=device, dtype=dtype).reshape(-1, 1).expand(batch, 1).clamp_min(1e-6))
        spacing = anchors[1] - anchors[0] if len(anchors) > 1 else 1.0
        u = u.clamp(self.log2_finest, anchors[-1])
        grid = self.anchor_grid.to(dtype)
        hat = F.relu(1.0 - (u.clamp_min(anchors[0]) - grid[None, :]).abs() / spacing)  # [N,K]
        below = (anchors[0] - u).clamp_min(0.0) / spacing  # [N,1]: 0 from the finest anchor up
        if len(anchors) < 2:
            return hat
        return hat + below * self.finer_line.to(dtype)[None, :]

    def style_affines(self, w: torch.Tensor, t: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(gamma [N,C], beta [N,C]) of every affine for style weights ``w`` [N,S] and stroke weights
        ``t`` [N,K], in forward order.

        Each style's rows are interpolated over the stroke anchors first (a sum over K, the same
        arithmetic whatever the number of styles), then mixed by one matmul. So a one-hot style's
        affines are bit-identical in a model with more styles (``add-style``): a single matmul over
        all S*K rows at once let the BLAS kernel, picked by the row count, change the rounding of a
        stroke between anchors.
        """
        table = torch.cat([torch.cat([n.gamma, n.beta], 2) for n in self.norms], 2)  # [S,K,2*sum(C)]
        per_style = (t[:, None, :, None] * table[None]).sum(2)  # [N,S,2*sum(C)]
        flat = torch.bmm(w[:, None, :], per_style)[:, 0]  # [N, 2*sum(C)]
        out, offset = [], 0
        for n in self.norms:
            c = n.gamma.shape[-1]
            out.append((flat[:, offset : offset + c], flat[:, offset + c : offset + 2 * c]))
            offset += 2 * c
        return out

    def upsample(self, x: torch.Tensor, blur: bool | None = None) -> torch.Tensor:
        """x2 pixel shuffle of ``x`` [N,4C,h,w] -> [N,C,2h,2w], then, with ``config.up_blur``, the
        binomial [1,2,1] blur per channel (zero response at the fine grid's Nyquist frequency).

        A pixel shuffle gives each of the 2x2 sub-pixels its own learned filter, so the picture
        depends on where the scene falls on the coarse grid: shifting a frame by anything but a
        multiple of 8 px changed stage 6's output 4-6x as much as shifting it by 8
        (``bench.shift_phase``). The blur makes nearest-neighbour up-sampling exactly bilinear and
        damps the sub-pixel differences a trained shuffle learns. ``blur`` overrides the config
        (the last up-sampling follows ``config.head_blur``)."""
        x = F.pixel_shuffle(x, 2)
        if not (self.config.up_blur if blur is None else blur):
            return x
        c = x.shape[1]
        kernel = self.blur.to(x.dtype).expand(c, 1, 3, 3)
        return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), kernel, groups=c)

    def forward(self, image: torch.Tensor, style: torch.Tensor, stroke: torch.Tensor | None = None) -> torch.Tensor:
        n = image.shape[0]
        w = self.normalize_style(style, n).to(image.dtype)  # [N,S]
        t = self.stroke_weights(stroke, n, image.dtype)  # [N,K]
        a = iter(self.style_affines(w, t))
        x = F.relu(self.n_down1(self.down1(image * 2.0 - 1.0), next(a)))  # [N,h,H/2,W/2]
        x = F.relu(self.n_down2(self.down2(x), next(a)))  # [N,c,H/4,W/4]
        for block in self.fine_in:
            x = block(x, next(a), next(a))
        y = F.relu(self.n_down3(self.down3(x), next(a)))  # [N,d,H/8,W/8]
        for block in self.blocks:
            y = block(y, next(a), next(a))
        x = F.relu(x + self.n_up3(self.upsample(self.up3(y)), next(a)))  # [N,c,H/4,W/4]
        for block in self.fine_out:
            x = block(x, next(a), next(a))
        x = F.relu(self.n_up2(self.upsample(self.up2(x)), next(a)))  # [N,h,H/2,W/2]
        if torch.is_autocast_enabled(x.device.type):
            # The picture itself in float32: bf16 would round it to about one uint8 level, as much as
            # the frame-to-frame flicker the temporal losses measure. The layer is tiny.
            with torch.autocast(x.device.type, enabled=False):
                return self.picture(x.float(), w.float())
        return self.picture(x, w)

    def picture(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """The head: features [N,h,H/2,W/2] and style weights [N,S] -> the picture [N,3,H,W] in (0,1)."""
        z = self.head(x)  # [N,12,H/2,W/2]: logits, colour-major
        if self.palette is not None:
            z = self.palette(z, w)
        return torch.sigmoid(self.upsample(z, self.config.head_blur))

    def style_parameters(self) -> list[nn.Parameter]:
        """The per-style rows (every affine's gamma and beta, and the palette's)."""
        rows = [p for n in self.norms for p in (n.gamma, n.beta)]
        return rows if self.palette is None else [*rows, self.palette.rows]


StyleGenerator = Generator | GeneratorV2


def build_generator(config: GeneratorConfig) -> StyleGenerator:
    """The generator a config describes (v1 or v2)."""
    return GeneratorV2(config) if config.version == 2 else Generator(config)


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
