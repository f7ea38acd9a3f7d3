"""The training loop: one generator, many styles, a per-style PatchGAN critic.

Per step (batch of B content crops, each paired with one style):
  G loss = content (VGG relu4_1) + style (Gram, 4 layers) + TV
           + temporal (shift + noise stability) + adversarial (hinge, from D's head for that style)
  D loss = hinge(real crops of the painting, G's output)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import random
import shlex
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw

from common.cli import opt
from common.mix import parse_mix
from common.paths import CONTENT_DIR
from common.split import held_out
from common.stroke import DEFAULT_STROKE, REFERENCE_SHORT, stroke_limits
from trainer.checkpoint import Checkpoint, Style, load_checkpoint, load_generator, save_checkpoint
from trainer.data import ContentImages, StyleImage, parse_style_arg, random_crop, to_tensor
from trainer.flow import VideoPairs
from trainer.losses import (
    STYLE_NORMS,
    PerceptualLoss,
    flow_temporal_loss,
    hinge_d_loss,
    hinge_g_loss,
    resolution_step_loss,
    temporal_loss,
    total_variation,
)
from trainer.models import (
    Discriminator,
    DiscriminatorConfig,
    GeneratorConfig,
    GeneratorV2,
    StyleGenerator,
    build_generator,
    one_hot,
)
from trainer.precision import PRECISIONS, Autocast, pick_autocast
from trainer.vgg import VGG19Features

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LossWeights:
    content: float = opt(1.0, "VGG relu4_1 content loss weight", flag="--content-weight")
    style: float = opt(10.0, "Gram style loss weight (4 VGG layers)", flag="--style-weight")
    tv: float = opt(0.3, "total-variation weight (smoothness)", flag="--tv-weight")
    temporal: float = opt(
        10.0,
        "stability weight: shifted/noisy input must give the shifted output (0 disables; video flickers)",
        flag="--temporal-weight",
    )
    adversarial: float = opt(
        0.1, "PatchGAN hinge loss weight (0 trains without the discriminator)", flag="--adversarial-weight"
    )
    flow: float = opt(
        10.0,
        "real-motion stability weight: consecutive frames of --video, stylized, must agree along their "
        "optical flow (needs --video; 0 disables)",
        flag="--flow-weight",
    )
    resolution_step: float = opt(
        10.0,
        "v2: auto resolution's step, trained: the half-size frame at half the network stroke must match "
        "the full-size picture reduced (L1 at this weight, its Grams at --style-weight), so a step keeps "
        "the strokes' size relative to the frame (0 disables)",
        flag="--resolution-step-weight",
    )


def crop_multiple(stride: int, resolution_step: bool) -> int:
    """What a training crop's side must be a multiple of: the generator's stride, twice that when
    the resolution-step loss also paints the crop at half size."""
    return 2 * stride if resolution_step else stride


FINEST_STROKES = ("anchor", "runtime")  # --finest-stroke: the finest anchor, or the finest a network paints


def parse_emphasis(arg: str) -> tuple[str, float]:
    """'The Great Wave=2' -> ('The Great Wave', 2.0): a style's display name and its style-term factor."""
    name, sep, factor = arg.rpartition("=")
    if not sep or not name.strip():
        raise ValueError(f"expected NAME=FACTOR, got {arg!r}")
    try:
        return name.strip(), float(factor)
    except ValueError:
        raise ValueError(f"the factor in {arg!r} is not a number") from None


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs; stored in the checkpoint it writes. Fields with help are CLI options."""

    content_dir: str = opt(
        help="folder of photos (searched recursively: jpg, png, webp)", flag="--content", metavar="DIR"
    )
    styles: tuple[tuple[str, str | None], ...] = opt(  # (painting path, display name or None)
        help="a style painting, repeat for each style; '=NAME' sets its display name",
        flag="--style",
        action="append",
        parse=parse_style_arg,
        metavar="PATH[=NAME]",
    )
    out: str = opt(help="checkpoint to write (.safetensors); samples are written beside it", metavar="PATH")
    arch: int = opt(
        2, "generator version: 2 (dense 1/8-scale trunk, no instance norm, stroke control) or 1", choices=(1, 2)
    )
    steps: int = opt(2000, "optimisation steps in total")
    size: int = opt(256, "training crop side in pixels (multiple of the generator's stride: 4 for v1, 8 for v2)")
    content_side: int = opt(
        640,
        "v2: photos are kept at this short side and crops cut at random scales from --size up to it, so "
        "the network learns scenes at the scale a 640x480 camera shows them (v1: 1.5x --size)",
    )
    video: str | None = opt(
        None,
        "a real video for the flow-based temporal loss (only its first frames: the rest is held out, "
        "see common/split.py)",
        metavar="PATH",
    )
    holdout: bool = opt(True, "leave out the held-out photos (common/split.py) so benches can judge on them")
    style_levels: int = opt(
        2, "v2: Gram targets at this many scales of each painting (1, 1/2, ...): larger structures read"
    )
    default_stroke_share: float = opt(
        0.0,
        "v2: the share of crops painted at stroke 1, the default (the rest: log-uniform over the anchors). "
        "It is the stroke people see at 640x480, and its half-size pass in the resolution-step loss is "
        "auto resolution's step at that stroke",
        metavar="FRACTION",
    )
    finest_stroke: str = opt(
        "anchor",
        "v2: the finest stroke drawn for a crop: 'anchor' (the finest anchor) or 'runtime' (the finest a "
        "network paints, half an anchor step below it: what a runtime asks for on 384x288 and 320x240 frames)",
        choices=FINEST_STROKES,
    )
    style_emphasis: tuple[tuple[str, float], ...] = opt(
        (),
        "a style whose style term counts FACTOR times as much (others: 1), repeat for each; a mixed "
        "crop's factor is its styles' mixed by its weights. Moves a style along the trade between looking "
        "like its painting and holding still: up where the picture is far from the painting and steady, "
        "down where it is close and flickers",
        flag="--style-emphasis",
        action="append",
        parse=parse_emphasis,
        metavar="NAME=FACTOR",
    )
    temporal_noise: float = opt(
        0.02,
        "the sensor noise (standard deviation, 0-1 scale) added to each view in the shift-stability "
        "loss (--temporal-weight): the output must not change with it",
        metavar="STD",
    )
    style_norm: str = opt(
        "absolute",
        "how the 4 VGG layers' Gram errors add up: absolute (summed; relu4_1 outweighs the rest 100x) or "
        "relative (each over its target's energy, averaged: the quality bench's style distance, so colours "
        "and fine marks count as much as shapes)",
        choices=STYLE_NORMS,
    )
    batch: int = opt(4, "crops per step")
    lr: float = opt(2e-3, "generator Adam learning rate")
    lr_decay_from: int | None = opt(
        None,
        "from this step on, the learning rates follow a cosine down to a hundredth at --steps (default: "
        "constant). A step, not a fraction, so a run resumed part-way decays on the same curve",
        metavar="STEP",
    )
    # The per-style rows learn this much faster, so styles separate early.
    style_lr_mult: float = opt(10.0, "learning-rate multiplier of the per-style normalisation rows")
    lr_d: float = opt(2e-4, "discriminator Adam learning rate")
    device: str = opt("auto", "auto, cpu, cuda or cuda:N", metavar="DEVICE")
    precision: str = opt(
        "auto",
        "autocast: auto (bf16 on CPUs with AMX or AVX512-BF16 and on bf16 GPUs, fp16 on other GPUs, else "
        "fp32), fp32, bf16 or fp16 (CUDA); Grams and losses stay float32",
        choices=PRECISIONS,
    )
    seed: int = opt(0, "random seed")
    losses: LossWeights = field(default_factory=LossWeights)
    adversarial_start: int = opt(200, "steps of perceptual-only warm-up before the adversarial term joins")
    style_size: int = opt(384, "v1: paintings are scaled to this short side, px (v2 scales them per stroke anchor)")
    sample_every: int = opt(200, "steps between sample sheets (0: none)")
    save_every: int = opt(200, "steps between checkpoints (0: at the end)")
    tensorboard: str | None = opt(None, "also write TensorBoard logs to DIR", metavar="DIR")
    resume: bool = opt(False, "continue from --out (weights, optimisers, step)")
    width: int | None = opt(None, "generator channels at 1/4 scale (default: the version's, v1 64, v2 32)")
    half_width: int | None = opt(None, "generator channels at 1/2 scale (default: the version's, 16)")
    num_blocks: int | None = opt(
        None, "residual blocks (default: the version's; v1 7 at 1/4 scale, v2 3 at 1/8)", flag="--blocks"
    )
    up_blur: bool = opt(
        False,
        "v2: blur after each coarse up-sampling (GeneratorV2.upsample), so the picture moves with the scene "
        "rather than with the network's 8-px grid: steadier under a pan, not on footage (README)",
    )
    head_blur: bool = opt(
        False,
        "v2: the same blur after the last, full-resolution up-sampling too (on the picture's logits), "
        "so the finest marks do not follow the grid either",
    )
    disc_width: int = DiscriminatorConfig.width
    command: str = ""  # the command line that started the run, for the record

    def __post_init__(self) -> None:
        multiple = crop_multiple(8 if self.arch == 2 else 4, self.arch == 2 and self.losses.resolution_step > 0)
        if self.size % multiple or self.size < 32:
            raise ValueError(
                f"--size must be a multiple of {multiple} and >= 32 for a v{self.arch} generator"
                f"{' with the resolution-step loss' if multiple == 16 else ''}, got {self.size}"
            )
        if self.style_levels < 1:
            raise ValueError("--style-levels must be >= 1")
        if self.steps < 1 or self.batch < 1:
            raise ValueError("--steps and --batch must be >= 1")
        if not self.styles:
            raise ValueError("give at least one --style painting")
        if not 0.0 <= self.default_stroke_share <= 1.0:
            raise ValueError(f"--default-stroke-share must be from 0 to 1, got {self.default_stroke_share}")
        if (self.up_blur or self.head_blur) and self.arch != 2:
            raise ValueError("--up-blur and --head-blur are v2 settings (--arch 2)")
        if self.finest_stroke not in FINEST_STROKES:
            raise ValueError(f"--finest-stroke must be {' or '.join(FINEST_STROKES)}, got {self.finest_stroke!r}")
        for name, factor in self.style_emphasis:
            if not (math.isfinite(factor) and factor > 0):
                raise ValueError(f"--style-emphasis {name}={factor}: the factor must be a positive number")
        if self.temporal_noise < 0:
            raise ValueError(f"--temporal-noise must be >= 0, got {self.temporal_noise}")
        if self.lr_decay_from is not None and not 0 <= self.lr_decay_from < self.steps:
            raise ValueError(f"--lr-decay-from must be a step in [0, --steps), got {self.lr_decay_from}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def generator_config(self, num_styles: int) -> GeneratorConfig:
        """The generator this run trains: the version's defaults, with the width options that were given."""
        given = {k: v for k in ("width", "half_width", "num_blocks") if (v := getattr(self, k)) is not None}
        if self.arch == 2:
            return GeneratorConfig.v2(num_styles, up_blur=self.up_blur, head_blur=self.head_blur, **given)
        return GeneratorConfig(num_styles, **given)


def style_emphasis(given: tuple[tuple[str, float], ...], names: list[str]) -> torch.Tensor:
    """Each style's style-term factor, [S] in style order: 1 unless ``given`` (--style-emphasis) names it."""
    factors = dict(given)
    if unknown := sorted(set(factors) - set(names)):
        raise ValueError(f"--style-emphasis names styles this run does not have: {unknown}; it has {names}")
    return torch.tensor([factors.get(n, 1.0) for n in names])


LR_FLOOR = 0.01  # where --lr-decay-from's cosine ends, as a fraction of the set rates


def lr_scale(step: int, decay_from: int | None, steps: int) -> float:
    """The learning rates' multiplier at ``step``: 1 until ``decay_from``, then a cosine down to
    ``LR_FLOOR`` at ``steps``. Late in training a smaller step settles the weights, where a
    constant rate keeps them hopping around the minimum (on video: a picture that differs from
    checkpoint to checkpoint, and noise the temporal losses pay for)."""
    if decay_from is None or step <= decay_from:
        return 1.0
    t = min(1.0, (step - decay_from) / max(1, steps - decay_from))
    return LR_FLOOR + (1.0 - LR_FLOOR) * 0.5 * (1.0 + math.cos(math.pi * t))


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"--device {name} asked for, but torch sees no CUDA GPU")
    return torch.device(name)


def command_line() -> str:
    return " ".join(shlex.quote(a) for a in [Path(sys.executable).name, "-m", "trainer", *sys.argv[1:]])


def style_targets(
    loss: PerceptualLoss, styles: list[StyleImage], size: int, rng: random.Random, device: torch.device
) -> None:
    """v1: average Gram targets over 8 random crops of each painting (plus the whole painting)."""
    targets = []
    for s in styles:
        crops = s.crops(8, size, rng).to(device)
        targets.append(loss.style_targets(crops))
    loss.set_style_targets(targets)


def stroke_targets(
    loss: PerceptualLoss,
    style: StyleImage,
    anchors: tuple[float, ...],
    size: int,
    rng: random.Random,
    device: torch.device,
) -> list[list[dict[str, torch.Tensor]]]:
    """v2: one painting's Gram targets, ``[level][anchor]``.

    At anchor ``a`` the painting is scaled to short side ``REFERENCE_SHORT * a``: its strokes
    are then ``a`` times as large, relative to a 480-line frame, as in the painting itself
    (``common.stroke``). Level ``l`` halves that scale ``l`` times and the crop with it. Each
    target averages 8 crops cut at that scale, not resized, so the strokes keep their size.
    """
    out = []
    for level in range(loss.levels):
        row = []
        for a in anchors:
            scaled = style.scaled(round(REFERENCE_SHORT * a / 2**level))
            row.append(loss.style_targets(scaled.native_crops(8, size // 2**level, rng).to(device)))
        out.append(row)
    return out


def set_stroke_targets(loss: PerceptualLoss, per_style: list[list[list[dict[str, torch.Tensor]]]]) -> None:
    """Install ``[style][level][anchor]`` targets in the generator's joint (style, anchor) order."""
    for level in range(loss.levels):
        loss.set_style_targets([t for style in per_style for t in style[level]], level)


def joint_weights(generator: StyleGenerator, style_w: torch.Tensor, stroke: torch.Tensor | None) -> torch.Tensor:
    """Style weights [N,S] -> the weights of the loss's targets: [N,S*K] over (style, anchor) for v2, as is for v1."""
    if not isinstance(generator, GeneratorV2):
        return style_w
    n = style_w.shape[0]
    t = generator.stroke_weights(stroke, n, torch.float32).to(style_w.device)
    w = style_w / style_w.sum(1, keepdim=True)
    return (w[:, :, None] * t[:, None, :]).reshape(n, -1)


def sample_strokes(
    generator: StyleGenerator, n: int, rng: random.Random, default_share: float = 0.0, finest: str = "anchor"
) -> torch.Tensor | None:
    """``n`` stroke sizes (None for v1): each is ``DEFAULT_STROKE`` with probability ``default_share``,
    else drawn log-uniformly from the finest stroke (``finest``: "anchor", the finest anchor, or
    "runtime", the finest the network paints, ``common.stroke.stroke_limits``) to the boldest anchor."""
    if not isinstance(generator, GeneratorV2):
        return None
    anchors = generator.config.strokes
    lo = math.log2(anchors[0] if finest == "anchor" else stroke_limits(anchors)[0])
    hi = math.log2(anchors[-1])
    return torch.tensor(
        [DEFAULT_STROKE if rng.random() < default_share else 2.0 ** rng.uniform(lo, hi) for _ in range(n)]
    )


def painting_crop(style: StyleImage, stroke: float | None, size: int, rng: random.Random) -> torch.Tensor:
    """A real ``size`` crop of a painting for the critic, at the scale a stroke asks for (v1: as loaded)."""
    if stroke is None:
        return style.crops(1, size, rng)[0]
    scaled = style.scaled(round(REFERENCE_SHORT * stroke))
    if min(scaled.image.shape[1:]) >= size:
        return scaled.native_crops(1, size, rng)[0]
    return random_crop(scaled.image, size, rng)  # a finer scale than the crop: the largest square, resized


def sample_sheet(
    generator: StyleGenerator,
    contents: list[torch.Tensor],
    style_names: list[str],
    mix: torch.Tensor | None = None,
    tile: int = 160,
) -> Image.Image:
    """Grid: one row per content image; columns = input, each style, (mix), and for v2 style 0 at
    the finest and the boldest stroke."""
    device = next(generator.parameters()).device
    n_styles = len(style_names)
    strokes = (
        list(generator.config.strokes[:: max(1, len(generator.config.strokes) - 1)])
        if isinstance(generator, GeneratorV2)
        else []
    )
    cols = 1 + n_styles + (1 if mix is not None else 0) + len(strokes)
    label_h = 14
    sheet = Image.new("RGB", (cols * tile, label_h + len(contents) * tile), (20, 20, 24))
    draw = ImageDraw.Draw(sheet)
    labels = ["input", *style_names] + (["mix"] if mix is not None else []) + [f"0 stroke {s:g}" for s in strokes]
    for c, label in enumerate(labels):
        draw.text((c * tile + 3, 1), label[: tile // 6], fill=(230, 230, 230))
    generator.eval()
    with torch.no_grad():
        for r, img in enumerate(contents):
            x = img.to(device)[None]
            weights = [one_hot([i], n_styles) for i in range(n_styles)]
            if mix is not None:
                weights.append(mix[None].float())
            outs = [x] + [generator(x, w.to(device)) for w in weights]
            outs += [generator(x, one_hot([0], n_styles).to(device), torch.tensor([s])) for s in strokes]
            for c, out in enumerate(outs):
                arr = (out[0].clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype("uint8")
                sheet.paste(Image.fromarray(arr).resize((tile, tile)), (c * tile, label_h + r * tile))
    generator.train()
    return sheet


def center_crop(img: torch.Tensor, size: int) -> torch.Tensor:
    """Square centre crop resized to ``size`` (multiple of 4 for the generator)."""
    _, h, w = img.shape
    side = min(h, w)
    y, x = (h - side) // 2, (w - side) // 2
    crop = img[:, y : y + side, x : x + side][None]
    return torch.nn.functional.interpolate(crop, size=(size, size), mode="bilinear", antialias=True)[0]


class Trainer:
    """Owns the models, optimisers and data of one run; ``run()`` trains to ``config.steps``."""

    def __init__(self, config: TrainConfig, on_step: Callable[[int, dict[str, float]], None] | None = None):
        self.config = config
        self.on_step = on_step
        self.device = pick_device(config.device)
        self.autocast: Autocast = pick_autocast(config.precision, self.device)
        self.scaler = self.autocast.scaler()
        log.info("precision: %s", self.autocast.reason)
        torch.manual_seed(config.seed)
        self.rng = random.Random(config.seed)
        # Data first: a bad folder or painting fails before any model is built.
        v2 = config.arch == 2
        # v2 scales each painting per stroke anchor, from the painting as it is.
        self.styles = [StyleImage.load(p, n, None if v2 else config.style_size) for p, n in config.styles]
        self.content = ContentImages.from_folder(
            config.content_dir,
            config.size,
            work_side=config.content_side if v2 else None,
            skip=held_out if config.holdout else None,
        )
        self.video = VideoPairs(config.video) if config.video and config.losses.flow > 0 else None
        n = len(self.styles)
        self.emphasis = style_emphasis(config.style_emphasis, [s.name for s in self.styles]).to(self.device)
        self.G: StyleGenerator = build_generator(config.generator_config(n)).to(self.device)
        self.D = Discriminator(DiscriminatorConfig(n, width=config.disc_width)).to(self.device)
        rows = {id(p) for p in self.G.style_parameters()}
        shared = [p for p in self.G.parameters() if id(p) not in rows]
        self.opt_g = torch.optim.Adam(
            [
                {"params": shared, "lr": config.lr},
                {"params": self.G.style_parameters(), "lr": config.lr * config.style_lr_mult},
            ],
            betas=(0.5, 0.99),
        )
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=config.lr_d, betas=(0.5, 0.99))
        self.loss = PerceptualLoss(
            VGG19Features().to(self.device), levels=config.style_levels if v2 else 1, style_norm=config.style_norm
        )
        if isinstance(self.G, GeneratorV2):
            anchors = self.G.config.strokes
            set_stroke_targets(
                self.loss,
                [stroke_targets(self.loss, s, anchors, config.size, self.rng, self.device) for s in self.styles],
            )
        else:
            style_targets(self.loss, self.styles, config.size, self.rng, self.device)
        self.step = 0
        self.history: list[dict[str, Any]] = []  # the runs this one resumed, oldest first
        self.out = Path(config.out)
        if config.resume:
            self._resume()
        self.samples = [center_crop(self.content.images[i], config.size) for i in self._sample_indices()]
        self.writer = self._tensorboard()

    def _sample_indices(self) -> list[int]:
        n = len(self.content)
        return sorted({round(i * (n - 1) / 3) for i in range(4)}) if n > 1 else [0]

    def _tensorboard(self) -> Any:
        if not self.config.tensorboard:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise RuntimeError("--tensorboard needs the tensorboard package: pip install tensorboard") from e
        return SummaryWriter(self.config.tensorboard)

    def _resume(self) -> None:
        if not self.out.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint to resume at {self.out}")
        ckpt = load_checkpoint(self.out)
        if [s.name for s in ckpt.styles] != [s.name for s in self.styles]:
            raise ValueError(
                f"--resume: {self.out} was trained on styles {ckpt.style_names}, "
                f"this run has {[s.name for s in self.styles]}"
            )
        # A fitted stroke floor and unit describe the marks the file paints now; training changes them,
        # so the run goes on without them (fit them again: bench.stroke_step --fit-floor, bench.stroke_unit).
        fitted = ckpt.generator_config
        if fitted.stroke_floor or fitted.stroke_unit != 1.0:
            log.info(
                "--resume: %s had stroke floor %g and unit %g; training drops them",
                self.out,
                fitted.stroke_floor,
                fitted.stroke_unit,
            )
        have = dataclasses.replace(fitted, stroke_floor=0.0, stroke_unit=1.0)
        if have != self.G.config:
            want = self.G.config
            diff = ", ".join(
                f"{k} {getattr(have, k)} (this run: {getattr(want, k)})"
                for k in have.to_dict()
                if getattr(have, k) != getattr(want, k)
            )
            raise ValueError(
                f"--resume: {self.out} is a different generator: {diff}; pass the options it was "
                "trained or grown with (--arch, --width, --half-width, --blocks, --up-blur, --head-blur)"
            )
        self.G.load_state_dict(ckpt.generator_state)
        if ckpt.discriminator_state is not None:
            self.D.load_state_dict(ckpt.discriminator_state)
        if "g" in ckpt.optimizers:
            self.opt_g.load_state_dict(ckpt.optimizers["g"])
        if "d" in ckpt.optimizers:
            self.opt_d.load_state_dict(ckpt.optimizers["d"])
        self.step = ckpt.step
        # Each earlier run's settings (steps reached, loss weights, command) stay in the record.
        earlier = {k: v for k, v in ckpt.train.items() if k not in ("data", "history")}
        self.history = [*ckpt.train.get("history", []), {**earlier, "reached_step": ckpt.step}]
        log.info("resumed %s at step %d", self.out, self.step)

    def data_record(self) -> dict[str, Any]:
        """Which files the run trained on, relative to the content folder, for the checkpoint."""
        root = Path(self.config.content_dir)
        record: dict[str, Any] = {
            "content_files": [str(p.relative_to(root)) for p in self.content.paths],
            "style_files": [str(s.path) for s in self.styles],
        }
        if self.video is not None:
            record["video"] = {"path": str(self.video.path), "frames": [0, len(self.video)], "of": self.video.total}
        return record

    def checkpoint(self, path: Path | None = None) -> Path:
        return save_checkpoint(
            path or self.out,
            Checkpoint(
                generator_config=self.G.config,
                styles=[Style(s.name, s.path.name) for s in self.styles],
                step=self.step,
                train={
                    **self.config.to_dict(),
                    "data": self.data_record(),
                    "autocast": self.autocast.reason,
                    "history": self.history,
                },
                generator_state=self.G.state_dict(),
                discriminator_config=self.D.config,
                discriminator_state=self.D.state_dict(),
                optimizers={"g": self.opt_g.state_dict(), "d": self.opt_d.state_dict()},
            ),
        )

    def set_learning_rates(self) -> None:
        """Set every optimiser's rates for the current step from the config (a resumed optimiser's
        state would otherwise bring back the rates it was saved with, not this run's ``--lr``)."""
        cfg = self.config
        scale = lr_scale(self.step, cfg.lr_decay_from, cfg.steps)
        shared, rows = self.opt_g.param_groups
        shared["lr"], rows["lr"] = cfg.lr * scale, cfg.lr * cfg.style_lr_mult * scale
        for group in self.opt_d.param_groups:
            group["lr"] = cfg.lr_d * scale

    def train_step(self) -> dict[str, float]:
        cfg, w = self.config, self.config.losses
        self.set_learning_rates()
        b = cfg.batch
        idx = torch.tensor([(self.step * b + i) % len(self.styles) for i in range(b)])  # balanced styles
        style_w = one_hot(idx, len(self.styles)).to(self.device)
        stroke = sample_strokes(self.G, b, self.rng, cfg.default_stroke_share, cfg.finest_stroke)  # None for v1
        x = self.content.batch(b, self.rng).to(self.device)
        use_adv = w.adversarial > 0 and self.step >= cfg.adversarial_start
        idx = idx.to(self.device)
        with self.autocast():  # forward passes; the losses inside are float32 (trainer.losses)
            y = self.G(x, style_w, stroke)
            l_content, l_style, _ = self.loss(y, x, joint_weights(self.G, style_w, stroke), style_w @ self.emphasis)
            l_tv = total_variation(y.float())
            g_loss = w.content * l_content + w.style * l_style + w.tv * l_tv
            stats = {"content": l_content.item(), "style": l_style.item(), "tv": l_tv.item()}
            if w.temporal > 0:
                l_temp = temporal_loss(self.G, x, style_w, noise=cfg.temporal_noise, stroke=stroke)
                g_loss = g_loss + w.temporal * l_temp
                stats["temporal"] = l_temp.item()
            if w.resolution_step > 0 and stroke is not None:
                l_res, l_tex = resolution_step_loss(self.G, x, y, style_w, stroke, self.loss.texture_distance)
                g_loss = g_loss + w.resolution_step * l_res + w.style * l_tex  # texture: a style term
                stats["res_step"], stats["res_texture"] = l_res.item(), l_tex.item()
            if self.video is not None:
                pairs = self.video.batch(max(1, b // 2), cfg.size, self.rng)
                n_pairs = pairs.prev.shape[0]
                l_flow = flow_temporal_loss(
                    self.G, pairs, style_w[:n_pairs], None if stroke is None else stroke[:n_pairs]
                )
                g_loss = g_loss + w.flow * l_flow
                stats["flow"] = l_flow.item()
            if use_adv:
                self.D.requires_grad_(False)
                l_adv = hinge_g_loss([f.float() for f in self.D(y, idx)])
                self.D.requires_grad_(True)
                g_loss = g_loss + w.adversarial * l_adv
                stats["adv_g"] = l_adv.item()
        self.opt_g.zero_grad(set_to_none=True)
        self._step(g_loss, self.opt_g)
        if w.adversarial > 0:
            # The critic also trains during warm-up, so it is useful once it joins.
            strokes: list[float | None] = [None] * b if stroke is None else stroke.tolist()
            real = torch.stack(
                [
                    painting_crop(self.styles[i], st, cfg.size, self.rng)
                    for i, st in zip(idx.tolist(), strokes, strict=True)
                ]
            )
            with self.autocast():
                d_real, d_fake = self.D(real.to(self.device), idx), self.D(y.detach(), idx)
                d_loss = hinge_d_loss([r.float() for r in d_real], [f.float() for f in d_fake])
            self.opt_d.zero_grad(set_to_none=True)
            self._step(d_loss, self.opt_d)
            stats["d"] = d_loss.item()
        if self.scaler is not None:
            self.scaler.update()
        stats["total"] = g_loss.item()
        for k, v in stats.items():
            if not torch.isfinite(torch.tensor(v)):
                raise FloatingPointError(f"loss {k} is {v} at step {self.step}; lower --lr")
        return stats

    def _step(self, loss: torch.Tensor, opt: torch.optim.Optimizer) -> None:
        """Backward and optimiser step, through the gradient scaler where fp16 needs one."""
        if self.scaler is None:
            loss.backward()
            opt.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(opt)

    def write_samples(self) -> Path:
        path = self.out.with_name(f"{self.out.stem}_samples_{self.step:06d}.png")
        mix = torch.ones(len(self.styles)) / len(self.styles)
        sample_sheet(self.G, self.samples, [s.name for s in self.styles], mix).save(path)
        return path

    def run(self, progress: bool = True) -> Path:
        """Train from the current step to ``config.steps``; Ctrl-C or SIGTERM saves and returns."""
        from tqdm import tqdm

        cfg = self.config
        if self.step >= cfg.steps and self.out.is_file():  # a finished stage run again: keep its record
            log.info("%s is at step %d, already at --steps %d: nothing to do", self.out, self.step, cfg.steps)
            return self.out

        def _term(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt  # a supervisor's `kill` saves like Ctrl-C does

        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, _term)

        bar = tqdm(total=cfg.steps, initial=self.step, disable=not progress, unit="step", dynamic_ncols=True)
        self.G.train()
        started = time.monotonic()
        try:
            while self.step < cfg.steps:
                stats = self.train_step()
                self.step += 1
                bar.update(1)
                bar.set_postfix({k: f"{v:.3g}" for k, v in stats.items() if k != "total"}, refresh=False)
                if self.writer is not None:
                    for k, v in stats.items():
                        self.writer.add_scalar(f"loss/{k}", v, self.step)
                if self.on_step is not None:
                    self.on_step(self.step, stats)
                if cfg.save_every and self.step % cfg.save_every == 0:
                    self.checkpoint()
                if cfg.sample_every and self.step % cfg.sample_every == 0:
                    log.info("sample sheet: %s", self.write_samples())
        except KeyboardInterrupt:
            log.warning("interrupted at step %d: saving %s", self.step, self.out)
        finally:
            bar.close()
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        path = self.checkpoint()
        log.info("saved %s at step %d (%.1f min)", path, self.step, (time.monotonic() - started) / 60)
        return path


def train(config: TrainConfig, progress: bool = True) -> Path:
    """Train a multi-style generator as ``config`` says; returns the checkpoint path."""
    return Trainer(config).run(progress)


# add-style's defaults, measured with bench.new_style's paintings (README, "Your own painting"):
# with the shared convolutions frozen, the new rows need a much stronger style term than full
# training. With the absolute Gram sum, Adam 0.02 and weight 70 beat 10, 100 and 150 on two of the
# three. The relative form (every VGG layer counts the same) at weight 20 then took Bazille's
# Ramparts from 0.308 to 0.184 on v2 and from 0.187 to 0.101 on v1, at equal content (40 was no
# better on v2).
ADD_STYLE_LOSSES = LossWeights(style=20.0, adversarial=0.0)


@dataclass(frozen=True)
class AddStyleConfig:
    """Learn one new painting into an existing model, everything else frozen. Fields with help are CLI options."""

    style: str  # the new painting's path (the CLI's --style PATH[=NAME] sets it and name)
    base: str = opt(help="the existing model (.safetensors)", flag="base")
    out: str = opt(help="the extended model to write", metavar="PATH")
    content_dir: str = opt(
        str(CONTENT_DIR), "folder of photos (default: the credited set shipped in trainer/content)",
        flag="--content", metavar="DIR",
    )  # fmt: skip
    name: str | None = None  # display name of the new style (default: from the file name)
    steps: int | None = opt(None, "optimisation steps (default: 180 for a v1 model, 160 for v2)")
    size: int | None = opt(
        None, "crop side in pixels (default: 160 for a v1 model, 192 for v2; a multiple of the model's stride)"
    )
    batch: int = opt(TrainConfig.batch, "crops per step")
    lr: float = opt(2e-2, "Adam learning rate of the new style's rows")
    device: str = opt(TrainConfig.device, "auto, cpu, cuda or cuda:N", metavar="DEVICE")
    precision: str = opt(TrainConfig.precision, "autocast, as for train", choices=PRECISIONS)
    seed: int = opt(TrainConfig.seed, "random seed")
    style_norm: str = opt(
        "relative",
        "how the VGG layers' Gram errors add up, as for train (the default --style-weight is tuned for relative; "
        "absolute wants about 70)",
        choices=STYLE_NORMS,
    )
    losses: LossWeights = field(default_factory=lambda: ADD_STYLE_LOSSES)
    style_size: int = TrainConfig.style_size
    command: str = ""

    def for_model(self, version: int) -> AddStyleConfig:
        """This config with the steps and crop size a model of generator ``version`` gets by default."""
        steps, size = ADD_STYLE_PLAN[version]
        return dataclasses.replace(self, steps=self.steps or steps, size=self.size or size)


# add-style's (steps, crop side) per generator version, measured with python -m bench.new_style on a
# 2-vCPU AMX Xeon in bf16 while the server streamed at 30 fps, export and parity check included.
# v1: 180 steps took 124-196 s per painting across hosts of the same kind; 250 took 4.9 min and
# scored no better; 160 px is the crop it was trained at. v2: 180 steps took 181-184 s, 160 took
# 166-171 s and learned the same three paintings as closely (README, "Generator v2").
ADD_STYLE_PLAN: dict[int, tuple[int, int]] = {1: (180, 160), 2: (160, 192)}


def extend_generator(base: StyleGenerator, extra: int = 1) -> StyleGenerator:
    """A copy of ``base`` with ``extra`` more styles; new rows start at the mean of the old ones (a
    palette's at the identity: the mean of other paintings' colour maps is no painting's)."""
    cfg = base.config
    new = build_generator(dataclasses.replace(cfg, num_styles=cfg.num_styles + extra))
    state = base.state_dict()
    new_state = new.state_dict()
    for k, v in state.items():
        if new_state[k].shape == v.shape:
            new_state[k] = v.clone()
        elif k == "palette.rows":  # [S,3,4] -> [S+extra,3,4]; the new model's rows start at the identity
            new_state[k] = torch.cat([v, new_state[k][cfg.num_styles :]], 0)
        else:  # a style table [S,C] (v1) or [S,K,C] (v2) -> [S+extra,...]
            new_state[k] = torch.cat([v, v.mean(0, keepdim=True).expand(extra, *v.shape[1:])], 0)
    new.load_state_dict(new_state)
    return new


def remove_style(base: StyleGenerator, index: int) -> StyleGenerator:
    """A copy of ``base`` without style ``index``: its rows dropped, everything else bit-identical."""
    cfg = base.config
    if not 0 <= index < cfg.num_styles or cfg.num_styles < 2:
        raise ValueError(f"cannot remove style {index} of a {cfg.num_styles}-style model")
    new = build_generator(dataclasses.replace(cfg, num_styles=cfg.num_styles - 1))
    new_state = new.state_dict()
    for k, v in base.state_dict().items():
        new_state[k] = v.clone() if new_state[k].shape == v.shape else torch.cat([v[:index], v[index + 1 :]], 0)
    new.load_state_dict(new_state)
    return new


def deepen_generator(base: StyleGenerator, num_blocks: int) -> StyleGenerator:
    """A copy of ``base`` with ``num_blocks`` residual blocks, computing exactly what ``base`` does.

    The new blocks go after the old ones (v2: at the end of the 1/8-scale trunk) with their second
    affine's rows at zero, so each adds nothing until training moves those rows: a grown model starts
    from the trained one's picture, not from noise (Chen et al. 2016, "Net2Net"; the zero-initialised
    residual of Goyal et al. 2017). Every other tensor is copied bit for bit.
    """
    cfg = base.config
    if num_blocks <= cfg.num_blocks:
        raise ValueError(f"--blocks must be more than the model's {cfg.num_blocks}, got {num_blocks}")
    new = build_generator(dataclasses.replace(cfg, num_blocks=num_blocks))
    state = new.state_dict()
    state.update({k: v.clone() for k, v in base.state_dict().items()})
    for i in range(cfg.num_blocks, num_blocks):
        for row in ("gamma", "beta"):
            state[f"blocks.{i}.n2.{row}"] = torch.zeros_like(state[f"blocks.{i}.n2.{row}"])
    new.load_state_dict(state)
    return new


def grow(model: str, out: str, num_blocks: int | None = None, up_blur: bool = False, head_blur: bool = False) -> Path:
    """`python -m trainer grow`: a changed copy of a checkpoint that a ``train --resume`` run (with
    the same ``--blocks``/``--up-blur``/``--head-blur``) carries on from. ``num_blocks``: deeper,
    computing the same picture (:func:`deepen_generator`); ``up_blur`` / ``head_blur``: the same
    weights with the blur after the coarse / the last up-sampling (``GeneratorV2.upsample``), which
    changes the picture a little until training adapts. The critic and its optimiser come along.
    The generator's optimiser comes along when its tensors are unchanged; after deepening Adam
    starts afresh, as it does from a shipped file."""
    G, ckpt = load_generator(model)
    cfg = ckpt.generator_config
    if num_blocks is None and not up_blur and not head_blur:
        raise ValueError("grow needs --blocks N (deeper), --up-blur or --head-blur")
    blurs: dict[str, Any] = {name: True for wanted, name in ((up_blur, "up_blur"), (head_blur, "head_blur")) if wanted}
    for name in blurs:
        if cfg.version != 2 or getattr(cfg, name):
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"{flag} needs a v2 model without it" + (" (this one has it)" if cfg.version == 2 else ""))
    record: dict[str, Any] = {"from": model, "step": ckpt.step}
    if num_blocks is not None:
        G = deepen_generator(G, num_blocks)
        record["num_blocks"] = [cfg.num_blocks, num_blocks]
    if blurs:
        blurred = build_generator(dataclasses.replace(G.config, **blurs))
        blurred.load_state_dict(G.state_dict())
        G = blurred
        record.update(blurs)
    keep = ("d",) if num_blocks is not None else ("d", "g")
    return save_checkpoint(
        out,
        dataclasses.replace(
            ckpt,
            generator_config=G.config,
            generator_state=G.state_dict(),
            train={**ckpt.train, "grow": [*ckpt.train.get("grow", []), record]},
            optimizers={k: v for k, v in ckpt.optimizers.items() if k in keep},
        ),
    )


def add_style(
    config: AddStyleConfig, progress: bool = True, on_step: Callable[[int, StyleGenerator], None] | None = None
) -> Path:
    """Train only the new style's normalisation rows (Dumoulin et al. 2017, sec. 4).

    v1: the Gram targets average crops cut at the painting's working scale (its strokes at the
    size the generator paints them) and random-scale resized crops (its larger shapes).
    v2: the new style gets rows at every stroke anchor, with the same per-anchor, two-level
    targets as full training (:func:`stroke_targets`), and strokes drawn over the range.
    ``on_step(step, generator)`` is called after each step (progress reports, previews).

    The shared convolutions and every existing style's rows stay bit-identical:
    they get no gradient, and after each step the old rows are restored from a
    saved copy as a guard against optimiser arithmetic touching them.
    The adversarial term is not used here (the critic has no head for the new
    style); perceptual, TV and temporal losses are.
    """
    from tqdm import tqdm

    device = pick_device(config.device)
    autocast = pick_autocast(config.precision, device)
    scaler = autocast.scaler()
    log.info("precision: %s", autocast.reason)
    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    base = load_checkpoint(config.base)
    v2 = base.generator_config.version == 2
    config = config.for_model(base.generator_config.version)
    size, steps = config.size, config.steps
    assert size is not None and steps is not None  # for_model fills both
    style = StyleImage.load(config.style, config.name, None if v2 else config.style_size)
    if style.name in base.style_names:
        raise ValueError(f"the model already has a style named {style.name!r}; pick another --name")
    multiple = crop_multiple(base.generator_config.stride, v2 and config.losses.resolution_step > 0)
    if size % multiple:
        raise ValueError(f"--size must be a multiple of {multiple} for this model, got {size}")
    content = ContentImages.from_folder(
        config.content_dir, size, work_side=int(base.train.get("content_side", 640)) if v2 else None
    )
    g_base = build_generator(base.generator_config)
    g_base.load_state_dict(base.generator_state)
    G = extend_generator(g_base).to(device)
    new = G.config.num_styles - 1
    G.requires_grad_(False)
    rows = G.style_parameters()
    frozen = [p.detach()[:new].clone() for p in rows]
    for p in rows:
        p.requires_grad_(True)
    opt = torch.optim.Adam(rows, lr=config.lr, betas=(0.5, 0.99))
    levels = int(base.train.get("style_levels", 2)) if v2 else 1
    loss = PerceptualLoss(VGG19Features().to(device), levels=levels, style_norm=config.style_norm)
    # Only the new style's Gram targets matter; the others are never used (weights one-hot on `new`).
    if isinstance(G, GeneratorV2):
        targets = stroke_targets(loss, style, G.config.strokes, size, rng, device)
        set_stroke_targets(loss, [targets] * G.config.num_styles)
    else:
        # Gram targets at two scales: crops cut at the painting's working scale keep its strokes'
        # size, resized crops its larger shapes; on three paintings outside the shipped model this
        # beat either alone (README, "Your own painting").
        crops = torch.cat([style.native_crops(8, size, rng), style.crops(8, size, rng)])
        loss.set_style_targets([loss.style_targets(crops.to(device))] * G.config.num_styles)
    w = config.losses
    style_w = one_hot([new] * config.batch, G.config.num_styles).to(device)
    G.train()
    for step in tqdm(range(1, steps + 1), disable=not progress, unit="step"):
        x = content.batch(config.batch, rng).to(device)
        stroke = sample_strokes(G, config.batch, rng)
        with autocast():  # the losses inside are float32 (trainer.losses)
            y = G(x, style_w, stroke)
            l_content, l_style, _ = loss(y, x, joint_weights(G, style_w, stroke))
            total = w.content * l_content + w.style * l_style + w.tv * total_variation(y.float())
            if w.temporal > 0:
                total = total + w.temporal * temporal_loss(G, x, style_w, stroke=stroke)
            if w.resolution_step > 0 and stroke is not None:
                l_res, l_tex = resolution_step_loss(G, x, y, style_w, stroke, loss.texture_distance)
                total = total + w.resolution_step * l_res + w.style * l_tex
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(total).backward()
            scaler.unscale_(opt)
        else:
            total.backward()
        for p in rows:
            assert p.grad is not None
            p.grad[:new].zero_()
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        with torch.no_grad():
            for p, old in zip(rows, frozen, strict=True):
                p[:new].copy_(old)
        if on_step is not None:
            on_step(step, G)
    train_record = dict(base.train)
    train_record["add_style"] = [*train_record.get("add_style", []), {**asdict(config), "autocast": autocast.reason}]
    return save_checkpoint(
        config.out,
        Checkpoint(
            generator_config=G.config,
            styles=[*base.styles, Style(style.name, style.path.name)],
            step=base.step,
            train=train_record,
            generator_state=G.cpu().state_dict(),
        ),
    )


def render_sample(model_path: str, content: list[str], out: str, mix: str | None, size: int = 256) -> Path:
    """`python -m trainer sample`: a grid of every style (and a mix) on the given photos."""
    from trainer.data import load_rgb

    G, ckpt = load_generator(model_path)
    imgs = []
    for path in content:
        if not Path(path).is_file():
            raise FileNotFoundError(f"content image not found: {path}")
        stride = G.config.stride
        imgs.append(center_crop(to_tensor(load_rgb(Path(path), short_side=size * 2)), size // stride * stride))
    weights = torch.tensor(parse_mix(mix, ckpt.style_names)) if mix else None
    sheet = sample_sheet(G, imgs, ckpt.style_names, weights, tile=size)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)
    return Path(out)


def describe(path: str) -> str:
    """Human summary of a checkpoint (for `python -m trainer info`)."""
    ckpt = load_checkpoint(path)
    return json.dumps(
        {
            "generator": ckpt.generator_config.to_dict(),
            "styles": [asdict(s) for s in ckpt.styles],
            "step": ckpt.step,
            "train": ckpt.train,
        },
        indent=2,
    )
