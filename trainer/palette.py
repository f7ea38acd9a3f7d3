"""Fit a v2 model's palette: one colour map per style on the picture's logits, the network frozen.

Training leaves a model's colours short of its paintings': on The Great Wave the shipped v2's
Gram distance at VGG's two lowest layers (mostly colour) was 5-9x the one-shot network's, while
its higher layers were level. A per-style map ``z -> A z + b`` on the head's logits
(:class:`trainer.models.Palette`) moves the colours towards the painting's at no measurable cost
in time. A stronger map also raises the contrast of whatever flickers and moves the picture away
from the photo, so each style's map minimises its style distance while its content distance and
its pan error may rise by at most ``content_rise`` and ``pan_rise`` (relative; a squared penalty
past them), on training photos (the held-out split is never read): the style distance to the
painting (``trainer.metrics``: the mean relative Gram distance over relu1_1..relu4_1, against
three square crops of the painting at the photos' size), the content distance to the photo, and
the pan error, the mean change between two frames of the photo panning 3 px (``bench.quality``'s),
each against the network without a map. ``--pan-at 640x480:0.01`` bounds the pan error at another
frame size too (the photos cover-cropped to it, the network at that size's stroke plan): a map's pan
rise is not the same at every size, and the shipped v2 had less pan margin at 640x480 than at 384.
Content and steadiness are what the map trades: a map fitted for style alone halved The Great Wave's
style distance on training photos, at +26 % content distance and +22 % pan error. Twelve numbers per
style: L-BFGS converges in a few dozen VGG passes.

The map costs time where it runs, after the network's last convolution: on OpenVINO on an AVX2
CPU it kept the last layers out of INT8 and cost 1-6 % of v2's time at 640x480. ``python -m
trainer bake-palette`` (:func:`bake_palette`) moves it into the network's per-style rows instead:
the same network without a palette, its per-style rows (every conditional norm's scale and
shift, nothing shared) trained to paint what the model with the palette paints, by L1 on
training crops, so the served graph is the plain v2 one. Baked from a fine-tune of the shipped v2
with a fitted palette it met every quality line held out, but its INT8 models missed the gate, and
the fine-tune (not the palette) had moved the stroke step at stroke 1 under 0.9 (README, Generator v2).

``--noise`` trains the rows under one int8 step of uniform rounding noise at the input of every
convolution an INT8 build quantizes (:class:`RoundingNoise`): rows that paint the same under that
noise should give an INT8 model that moves the picture less. The bake above with ``--noise 1``
passed the INT8 gate (31.0 dB at worst with ONNX Runtime's quantizer, 31.6 with NNCF's) where the
bake without it had missed (29.2 and 28.9), at an L1 to the palette model of 0.0075 against 0.0057;
the same bake of the palette on the shipped weights stayed where that palette model was (29.5 and
29.7 against 29.7 and 29.5), and with twice the gate's photos held out the first fell behind the
shipped file (32.2 against 34.5 dB). Its effect is not established (README, Generator v2).

The bake is not exact where a palette's change is small: the palette on the shipped weights, fitted
with the pan bounded at 640x480 too, moved The Great Wave's picture by 3.5 levels of 255 on average,
the baked rows stayed 1.6 levels from it, and on training photos the bake kept about two thirds of
the palette's style gain (README, Generator v2). A longer L1 bake did not move it; the loss was in
every VGG layer the style distance reads. ``--gram W`` adds W x the relative Gram distance of the
baked picture to the palette model's (relu1_1..relu4_1, per crop: the style distance's own measure,
against the teacher, not the painting), and ``--start`` goes on from an earlier bake's rows: 700
steps of that from the L1 bake kept the whole gain (the shipped v2, README).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common.cli import opt
from common.paths import CONTENT_DIR
from common.sizes import format_size, parse_size
from common.split import held_out
from trainer.checkpoint import Checkpoint, load_checkpoint, load_generator, save_checkpoint
from trainer.data import (
    ContentImages,
    DataError,
    cover_crop,
    find_painting,
    load_rgb,
    painting_crops,
    training_files,
)
from trainer.losses import CONTENT_LAYER, STYLE_LAYERS, relative_style_error
from trainer.metrics import PAN_STEP
from trainer.models import GeneratorV2, Palette, build_generator, one_hot
from trainer.vgg import VGG19Features, gram

log = logging.getLogger(__name__)

PENALTY = 1000.0  # weight of a squared relative overshoot of content or pan past its allowed rise


@dataclass(frozen=True)
class PanBound:
    """The pan error at frames of ``size`` (width, height) may rise by at most ``rise`` (relative)."""

    size: tuple[int, int]
    rise: float

    @classmethod
    def parse(cls, text: str) -> PanBound:
        """``WxH:RISE``, e.g. ``640x480:0.01``."""
        size, sep, rise = text.partition(":")
        try:
            bound = cls(parse_size(size), float(rise))
        except ValueError:
            bound = None
        if not sep or bound is None or not 0 <= bound.rise < 10 or any(v < 64 or v % 8 for v in bound.size):
            raise ValueError(
                f"expected WIDTHxHEIGHT:RISE (sides multiples of 8, at least 64; a rise >= 0), got {text!r}"
            )
        return bound

    @property
    def key(self) -> str:
        return f"pan@{format_size(self.size)}"


@dataclass(frozen=True)
class PaletteConfig:
    """Fit the palette rows of a v2 model. Fields with help are CLI options."""

    base: str = opt(help="the model (.safetensors, v2)", flag="base")
    out: str = opt(help="the copy with fitted palette rows to write", metavar="PATH")
    paintings: str = opt(
        help="folder holding the paintings the styles were learned from (matched by file name, subfolders too)",
        metavar="DIR",
    )
    content_dir: str = opt(
        str(CONTENT_DIR), "folder of photos to fit on (its held-out split is left out)", flag="--content",
        metavar="DIR",
    )  # fmt: skip
    photos: int = opt(3, "photos, spread evenly over the folder's training split")
    size: int = opt(384, "side of the square photo and painting crops, px (a multiple of 8)")
    content_rise: float = opt(0.03, "how far the content distance may rise, relative (0.03: 3 %%)")
    pan_rise: float = opt(0.03, "how far the pan error (flicker under a known camera motion) may rise, relative")
    pan_at: tuple[PanBound, ...] = opt(
        (), "also bound the pan error at another frame size: WIDTHxHEIGHT:RISE (repeat), e.g. 640x480:0.01",
        action="append", parse=PanBound.parse, metavar="WxH:RISE",
    )  # fmt: skip
    styles: tuple[str, ...] = opt((), "fit only these styles (names; repeat), the others keep their rows",
                                  action="append", flag="--style", metavar="NAME")  # fmt: skip
    iterations: int = opt(16, "L-BFGS iterations per style")
    command: str = ""


@dataclass(frozen=True)
class BakeConfig:
    """Bake a v2 model's palette into its per-style rows. Fields with help are CLI options."""

    base: str = opt(help="the model with a palette (.safetensors, v2; python -m trainer fit-palette)", flag="base")
    out: str = opt(help="the model without a palette to write", metavar="PATH")
    content_dir: str = opt(
        str(CONTENT_DIR), "folder of photos to train on (its held-out split is left out)", flag="--content",
        metavar="DIR",
    )  # fmt: skip
    steps: int = opt(2000, "training steps (batches)")
    batch: int = opt(4, "crops per step, each in a random style and stroke")
    crop: int = opt(256, "side of the square crops, px (a multiple of 8), cut at random scales")
    lr: float = opt(2e-3, "Adam's learning rate, along a cosine to 0 at the last step")
    finest_stroke: float = opt(0.45, "finest network stroke drawn; strokes are log-uniform up to the boldest anchor")
    noise: float = opt(
        0.0,
        "train under rounding noise at every quantized convolution's input, in int8 steps of that input's "
        "range (1: what int8 rounds off), meant to make an INT8 build move the picture less; 0: none",
    )
    gram: float = opt(
        0.0,
        "also match the palette model's style statistics, with this weight: the relative Gram distance "
        "(VGG relu1_1..relu4_1, per crop) of the baked picture to the palette model's; 0: L1 only",
    )
    start: str = opt(
        "", "start from this model's rows instead of the network's own: an earlier bake of the same palette "
        "model (e.g. to go on with --gram); its shared weights must be the palette model's", metavar="PATH",
    )  # fmt: skip
    seed: int = opt(0, "random seed for the crops, styles and strokes")
    command: str = ""


def _tensor(images: list[np.ndarray]) -> torch.Tensor:
    return torch.stack([torch.from_numpy(im).permute(2, 0, 1).float() / 255.0 for im in images])


@dataclass
class StyleFit:
    """One style's fit: its new row [3,4] and the three terms before and after (training photos)."""

    row: torch.Tensor
    before: dict[str, float]
    after: dict[str, float]


class PaletteFitter:
    """Fits palette rows for a network without a palette, on fixed photos. Its logits are computed
    once per style, so each L-BFGS step costs one VGG pass over the photos."""

    def __init__(
        self,
        generator: GeneratorV2,
        photos: list[np.ndarray],
        rises: dict[str, float],
        iterations: int,
        pan_photos: dict[str, list[np.ndarray]] | None = None,
    ) -> None:
        """``rises``: how far "content", "pan" (at the photos' size) and each key of ``pan_photos``
        (the same photos at another size, where the pan error is bounded too) may rise."""
        pans = {"pan": photos, **(pan_photos or {})}
        if any(p.shape[0] % 8 or p.shape[1] % 8 for p in photos):
            raise ValueError("photos must be multiples of 8 px on each side")
        if generator.palette is not None:
            raise ValueError("the fitter takes the network without its palette")
        if set(rises) != {"content", *pans}:
            raise ValueError(f"a rise for each of content, {', '.join(pans)} is needed, got {', '.join(rises)}")
        self.g = generator.eval()
        self.vgg = VGG19Features()
        self.vgg.requires_grad_(False)
        self.rises, self.iterations = rises, iterations
        self.x = _tensor(photos)
        # two frames of each photo panning PAN_STEP px (bench.quality.inputs.pan_frames), at each size
        self.pans = {key: self._pan(frames) for key, frames in pans.items()}
        with torch.no_grad():
            self.content = self.vgg(self.x, [CONTENT_LAYER])[CONTENT_LAYER]

    @staticmethod
    def _pan(photos: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        width = photos[0].shape[1] - PAN_STEP
        width -= width % 8
        first, second = (_tensor([p[:, t * PAN_STEP : t * PAN_STEP + width] for p in photos]) for t in (0, 1))
        return first, second

    @torch.no_grad()
    def logits(self, x: torch.Tensor, style: int) -> torch.Tensor:
        """The picture's logits [N,3,H,W] for one-hot ``style`` at user stroke 1."""
        g = self.g
        _, stroke = g.config.stroke_scale.plan(x.shape[2], x.shape[3], 1.0)
        w = torch.zeros(x.shape[0], g.config.num_styles)
        w[:, style] = 1.0
        y = g(x, w, None if stroke is None else torch.tensor(stroke))
        return torch.logit(y.clamp(1e-5, 1 - 1e-5))

    def terms(self, row: torch.Tensor, z: dict[str, Any], grams: dict[str, torch.Tensor]) -> dict[str, Any]:
        """style, content and each pan error of the pictures that ``row`` [3,4] makes of the logits ``z``."""

        def picture(logits: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(torch.einsum("ij,njhw->nihw", row[:, :3], logits) + row[:, 3, None, None])

        y = picture(z["photo"])
        feats = self.vgg(y, STYLE_LAYERS)
        style = relative_style_error(feats, grams).mean()
        f = feats[CONTENT_LAYER]
        content = ((f - self.content).pow(2).sum((1, 2, 3)) / self.content.pow(2).sum((1, 2, 3))).mean()
        out = {"style": style, "content": content}
        for key in self.pans:
            first, second = (picture(t) for t in z[key])
            out[key] = (second[..., :-PAN_STEP] - first[..., PAN_STEP:]).abs().mean() * 255.0
        return out

    def fit(self, style: int, painting: list[np.ndarray]) -> StyleFit:
        """The row for ``style`` whose pictures best trade style for content and steadiness (module docstring)."""
        with torch.no_grad():
            grams = {k: gram(v).mean(0) for k, v in self.vgg(_tensor(painting), STYLE_LAYERS).items()}
        z: dict[str, Any] = {"photo": self.logits(self.x, style)}
        z.update({key: tuple(self.logits(t, style) for t in frames) for key, frames in self.pans.items()})
        identity = Palette.identity()
        with torch.no_grad():
            before = {k: float(v) for k, v in self.terms(identity, z, grams).items()}
        row = identity.clone().requires_grad_(True)
        opt = torch.optim.LBFGS([row], lr=1, max_iter=self.iterations, history_size=self.iterations,
                                line_search_fn="strong_wolfe")  # fmt: skip

        def closure() -> torch.Tensor:
            opt.zero_grad()
            t = self.terms(row, z, grams)
            over = [t[k] / before[k] - (1.0 + r) for k, r in self.rises.items()]
            loss = t["style"] / before["style"] + PENALTY * sum(torch.relu(o) ** 2 for o in over)
            loss.backward()
            return loss

        opt.step(closure)  # type: ignore[no-untyped-call]
        with torch.no_grad():
            after = {k: float(v) for k, v in self.terms(row, z, grams).items()}
        return StyleFit(row.detach().clone(), before, after)


def without_palette(ckpt: Checkpoint) -> GeneratorV2:
    """The network of a v2 checkpoint without its palette (what the rows are fitted to, or baked into)."""
    g = build_generator(dataclasses.replace(ckpt.generator_config, palette=False))
    g.load_state_dict({k: v for k, v in ckpt.generator_state.items() if k != "palette.rows"})
    assert isinstance(g, GeneratorV2)
    return g


class RoundingNoise:
    """Uniform noise of one int8 step (of each tensor's own range in the batch, uint8 where it is never
    negative) times ``scale`` at the input of every convolution that INT8 builds quantize, drawn from
    its own generator (``seed``), so that a bake with it is as reproducible as one without."""

    def __init__(self, g: torch.nn.Module, scale: float, seed: int = 0) -> None:
        self.scale = scale
        self.generator = torch.Generator().manual_seed(seed)
        self.handles = [
            m.register_forward_pre_hook(self.hook)
            for m in g.modules()
            if isinstance(m, torch.nn.Conv2d) and m.groups == 1
        ]

    def hook(self, module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        x = inputs[0]
        with torch.no_grad():
            levels = 255.0 if bool((x >= 0).all()) else 127.0
            step = x.abs().amax() / levels
            u = torch.rand(x.shape, generator=self.generator).to(x)
        return (x + (u - 0.5) * step * self.scale, *inputs[1:])

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def training_photos(folder: str | Path, count: int, sizes: list[tuple[int, int]]) -> list[list[np.ndarray]]:
    """``count`` photos spread evenly over the training split of ``folder``, cover-cropped to each of
    ``sizes`` (width, height): one list per size, the same photos in each."""
    files = training_files(folder, held_out)
    if not files:
        raise DataError(f"no training photos (jpg, png, webp) under {folder}")
    picks = [load_rgb(files[round(i * (len(files) - 1) / max(1, count - 1))]) for i in range(min(count, len(files)))]
    return [[cover_crop(im, size) for im in picks] for size in sizes]


def fit_palette(config: PaletteConfig, progress: bool = True) -> Path:
    """`python -m trainer fit-palette`: a copy of ``config.base`` with fitted palette rows."""
    from tqdm import tqdm

    if config.size % 8 or config.size < 64:
        raise ValueError(f"--size must be a multiple of 8 and at least 64, got {config.size}")
    if min(config.content_rise, config.pan_rise) < 0 or config.photos < 1 or config.iterations < 1:
        raise ValueError("--content-rise and --pan-rise must be >= 0, --photos and --iterations >= 1")
    if len({b.size for b in config.pan_at}) < len(config.pan_at):
        raise ValueError("--pan-at names a frame size twice")
    ckpt = load_checkpoint(config.base)
    if ckpt.generator_config.version != 2:
        raise ValueError("fit-palette needs a v2 model (v1 has no palette)")
    names = ckpt.style_names
    unknown = [n for n in config.styles if n not in names]
    if unknown:
        raise ValueError(f"no style named {', '.join(map(repr, unknown))}; the model has {', '.join(names)}")
    chosen = [i for i, n in enumerate(names) if not config.styles or n in config.styles]
    found = {i: find_painting(ckpt.styles[i].source, [Path(config.paintings)]) for i in chosen}
    paintings = {i: path for i, path in found.items() if path is not None}
    missing = [ckpt.styles[i].source for i in chosen if i not in paintings]
    if missing:
        raise DataError(f"no painting named {', '.join(missing)} under {config.paintings}")
    cfg = ckpt.generator_config
    plain = without_palette(ckpt)
    rows = ckpt.generator_state.get("palette.rows", Palette.identity().repeat(cfg.num_styles, 1, 1)).clone()
    square, *others = training_photos(
        config.content_dir, config.photos, [(config.size, config.size), *(b.size for b in config.pan_at)]
    )
    rises = {"content": config.content_rise, "pan": config.pan_rise, **{b.key: b.rise for b in config.pan_at}}
    fitter = PaletteFitter(plain, square, rises, config.iterations,
                           {b.key: photos for b, photos in zip(config.pan_at, others, strict=True)})  # fmt: skip
    record: dict[str, Any] = {**dataclasses.asdict(config), "fits": {}}
    for i in tqdm(chosen, disable=not progress, unit="style"):
        fit = fitter.fit(i, painting_crops(paintings[i], config.size, config.size))
        rows[i] = fit.row
        record["fits"][names[i]] = {"row": fit.row.tolist(), "before": fit.before, "after": fit.after}
        b, a = fit.before, fit.after
        pans = ", ".join(f"{k} {b[k]:.2f} -> {a[k]:.2f}" for k in fitter.pans)
        log.info("%s: style %.4f -> %.4f, content %.3f -> %.3f, %s", names[i], b["style"], a["style"], b["content"],
                 a["content"], pans)  # fmt: skip
    return save_checkpoint(
        config.out,
        dataclasses.replace(
            ckpt,
            generator_config=dataclasses.replace(cfg, palette=True),
            generator_state={**ckpt.generator_state, "palette.rows": rows},
            train={**ckpt.train, "fit_palette": [*ckpt.train.get("fit_palette", []), record]},
        ),
    )


def _start_from(student: GeneratorV2, path: str) -> list[dict[str, Any]]:
    """Load the per-style rows of the model at ``path`` into ``student``, which must share its config
    (without a palette) and every other weight. Returns the bakes that model records, so the new
    checkpoint keeps every pass that made its rows."""
    other = load_checkpoint(path)
    rows = {n for n, p in student.named_parameters() if any(p is r for r in student.style_parameters())}
    own = student.state_dict()
    if other.generator_config != student.config or set(other.generator_state) != set(own):
        raise ValueError(f"--start {path}: not a bake of this palette model (another network or config)")
    if any(not torch.equal(v, other.generator_state[k]) for k, v in own.items() if k not in rows):
        raise ValueError(f"--start {path}: its shared weights are not the palette model's")
    student.load_state_dict(other.generator_state)
    return list(other.train.get("bake_palette", []))


def bake_palette(config: BakeConfig, progress: bool = True) -> Path:
    """`python -m trainer bake-palette`: the model without its palette, its per-style rows trained to
    paint what the model with it paints (module docstring). Returns the path written."""
    from tqdm import tqdm

    if config.crop % 8 or config.crop < 64:
        raise ValueError(f"--crop must be a multiple of 8 and at least 64, got {config.crop}")
    if config.steps < 1 or config.batch < 1 or config.lr <= 0 or config.finest_stroke <= 0:
        raise ValueError("--steps and --batch must be >= 1, --lr and --finest-stroke > 0")
    if config.noise < 0 or config.gram < 0:
        raise ValueError("--noise and --gram must be >= 0")
    teacher, ckpt = load_generator(config.base)
    cfg = ckpt.generator_config
    if cfg.version != 2 or not cfg.palette:
        raise ValueError("bake-palette needs a v2 model with a palette (python -m trainer fit-palette makes one)")
    student = without_palette(ckpt)
    earlier = _start_from(student, config.start) if config.start else []
    teacher.requires_grad_(False)
    student.eval().requires_grad_(False)  # eval: no layer of v2 behaves differently in training
    rows = student.style_parameters()
    for p in rows:
        p.requires_grad_(True)
    data = ContentImages.from_folder(config.content_dir, config.crop, work_side=640, skip=held_out)
    opt_ = torch.optim.Adam(rows, lr=config.lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(opt_, lambda s: 0.5 * (1 + math.cos(math.pi * s / config.steps)))
    rng = random.Random(config.seed)
    lo, hi = math.log2(config.finest_stroke), math.log2(cfg.strokes[-1])
    noise = RoundingNoise(student, config.noise, config.seed) if config.noise > 0 else None
    vgg = VGG19Features() if config.gram > 0 else None
    losses: list[float] = []
    style_terms: list[float] = []  # the Gram term, with --gram
    bar = tqdm(range(config.steps), disable=not progress, unit="step", desc="bake-palette")
    for _ in bar:
        x = data.batch(config.batch, rng)
        style = one_hot([rng.randrange(cfg.num_styles) for _ in x], cfg.num_styles)
        stroke = torch.tensor([2 ** rng.uniform(lo, hi) for _ in x])
        with torch.no_grad():
            want = teacher(x, style, stroke)
        got = student(x, style, stroke)
        l1 = (got - want).abs().mean()
        loss = l1
        if vgg is not None:
            with torch.no_grad():
                target = {k: gram(v) for k, v in vgg(want, STYLE_LAYERS).items()}
            feats = vgg(got, STYLE_LAYERS)
            term = relative_style_error(feats, target).mean()
            style_terms.append(float(term.detach()))
            loss = l1 + config.gram * term
        opt_.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        opt_.step()
        schedule.step()
        losses.append(float(l1.detach()))
        bar.set_postfix(l1=f"{sum(losses[-50:]) / len(losses[-50:]):.4f}")
    if noise is not None:
        noise.remove()
    k = max(1, min(50, len(losses) // 2))  # the first and last 50 steps, or halves of a shorter run
    record = {
        **dataclasses.asdict(config),
        "l1_first": float(np.mean(losses[:k])),
        "l1_last": float(np.mean(losses[-k:])),
    }
    if style_terms:
        record.update(gram_first=float(np.mean(style_terms[:k])), gram_last=float(np.mean(style_terms[-k:])))
        log.info("bake-palette: Gram distance to the palette model %.4f -> %.4f", record["gram_first"],
                 record["gram_last"])  # fmt: skip
    log.info("bake-palette: L1 to the palette model %.4f -> %.4f (means over the first and last %d steps)",
             record["l1_first"], record["l1_last"], k)  # fmt: skip
    return save_checkpoint(
        config.out,
        dataclasses.replace(
            ckpt,
            generator_config=student.config,
            generator_state={k: v.detach().clone() for k, v in student.state_dict().items()},
            train={**ckpt.train, "bake_palette": [*ckpt.train.get("bake_palette", []), *earlier, record]},
        ),
    )
