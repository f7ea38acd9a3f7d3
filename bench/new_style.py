"""A user's paintings learned through the real server, while a peer streams: time, quality, fps.

    python -m bench.new_style                                   # the three paintings below, the shipped model
    python -m bench.new_style --painting a.jpg --painting b.png --seconds 15

One run: the real app on loopback (``bench.loopback``, ``--allow-new-styles``, a fresh
models folder) serves the shipped model, one real aiortc peer streams a 320x240
picture at 30 fps the whole time, and each painting is uploaded with
``POST /api/styles`` as the page does. Per painting it reports:

* the time to learn it: upload to the new style being served (the job's own time, and
  what the learning process spent in add-style, export and parity check);
* the peer's fps in the ``--seconds`` before the upload (no training: the baseline)
  and while the painting was learned, in turns, and the job's steps and ETA;
* quality on photos that are not in the training folder (``../shared/data/content``
  folders other than the ones ``trainer/content`` was cut from), 384x384: our style and
  content distance (``trainer.metrics``, the served backend, one-hot on the new style)
  beside the peer's one-shot arbitrary-style network fed the same painting.

The three default paintings are not in the shipped model and were chosen before any
measurement: a detail with heavy brushwork, a woodblock print and a landscape.
A table and JSON (``bench/results/new_style.json``); nothing passes or fails on a time.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from bench.data import SHARED_DATA
from bench.loopback import Peer, local_server, pattern
from bench.results import RESULTS_DIR, write_json
from common.cpu import cpu_summary
from common.paths import DEFAULT_MODEL

log = logging.getLogger("bench.new_style")
PAINTINGS = (
    "styles/gcompris-qt-data__details/PortraitOfPereTanguy_background.webp",
    "styles/gcompris-qt-data__paintings/Katsushika_Hokusai_Ejiri_in_Suruga_Province_1830_1833.png",
    "styles/gcompris-qt-data__paintings/Bazille_The_Ramparts_at_Aigues_Mortes_1867.png",
)
# Photo folders of ../shared/data/content that trainer/content does not draw from (trainer.content_set).
HELD_OUT = ("opencv-doc", "mate-backgrounds", "plasma-workspace-wallpapers", "lomiri-wallpapers-16.04__-20.04",
            "tuxpaint-data", "palapeli-data")  # fmt: skip
EVAL_SIZE = 384


def fps_between(arrivals: list[float], t0: float, t1: float) -> float:
    n = sum(1 for t in arrivals if t0 <= t < t1)
    return n / max(t1 - t0, 1e-6)


def style_name(painting: Path) -> str:
    """The file name's words, as many as fit the server's 40 characters (as the page suggests them)."""
    name = ""
    for word in painting.stem.replace("_", " ").split():
        if len(name) + 1 + len(word) > 40:
            break
        name = f"{name} {word}".strip()
    return name or painting.stem[:40]


def held_out_photos(data: Path, count: int) -> list[np.ndarray]:
    """``count`` 384x384 photos spread over the held-out folders (copied into one folder, then chosen)."""
    import shutil

    from bench.quality.inputs import select_photos

    with tempfile.TemporaryDirectory(prefix="held-out-") as tmp:
        for name in HELD_OUT:
            if (data / "content" / name).is_dir():
                shutil.copytree(data / "content" / name, Path(tmp) / name)
        return [img for _, img in select_photos(Path(tmp), count, (EVAL_SIZE, EVAL_SIZE), held_out_only=False)]


async def learn_one(http: aiohttp.ClientSession, url: str, painting: Path, name: str) -> dict[str, Any]:
    form = aiohttp.FormData()
    form.add_field("image", painting.read_bytes(), filename=painting.name)
    form.add_field("name", name)
    t0 = time.monotonic()
    async with http.post(f"{url}/api/styles", data=form) as resp:
        job = await resp.json()
        if resp.status != 202:
            raise SystemExit(f"{painting.name} was refused: {job.get('error')}")
    while job["state"] not in ("done", "failed", "cancelled"):
        await asyncio.sleep(0.5)
        async with http.get(f"{url}/api/styles/jobs/{job['id']}") as resp:
            job = await resp.json()
        if job["state"] == "learning" and job["step"] and job["step"] % 50 == 0:
            log.info("%s: step %d of %d, ETA %.0f s", name, job["step"], job["steps"], job["eta_s"] or 0)
    if job["state"] != "done":
        raise SystemExit(f"learning {painting.name} {job['state']}: {job.get('error')}")
    return {**job, "t0": t0, "t1": time.monotonic()}


def quality(
    vgg: Any, backend: Any, painting: Path, index: int, photos: list[np.ndarray], stats: list[Any]
) -> dict[str, float]:
    """Mean style/content distance of ours (style ``index`` on the served ``backend``) and the one-shot peer."""
    from bench.peer import OneShotPeer
    from trainer.data import painting_crops
    from trainer.metrics import content_distance, style_distance

    grams = vgg.mean_grams(painting_crops(painting, EVAL_SIZE, EVAL_SIZE))
    peer = OneShotPeer()
    vector = peer.style_vector(painting)
    weights = np.eye(len(backend.styles), dtype=np.float32)[index]
    out: dict[str, list[float]] = {"ours_style": [], "ours_content": [], "peer_style": [], "peer_content": []}
    for photo, ref in zip(photos, stats, strict=True):
        for who, img in (("ours", backend.stylize(photo, weights)), ("peer", peer.stylize(photo, vector))):
            s = vgg.stats(img)
            out[f"{who}_style"].append(style_distance(s.grams, grams))
            out[f"{who}_content"].append(content_distance(s.content, ref.content))
    return {k: round(float(np.mean(v)), 4) for k, v in out.items()}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from trainer.metrics import VggMetrics

    paintings = [Path(p) for p in args.painting] or [args.data / p for p in PAINTINGS]
    for p in paintings:
        if not p.is_file():
            raise SystemExit(f"painting not found: {p}")
    photos = held_out_photos(args.data, args.photos)
    vgg = VggMetrics()
    photo_stats = [vgg.stats(p) for p in photos]
    models = Path(tempfile.mkdtemp(prefix="bench-models-"))
    config: dict[str, Any] = {"allow_new_styles": True, "models_dir": models, "default_resolution": "320x240"}
    if args.steps:
        config["learn_steps"] = args.steps
    if args.learn_threads:
        config["learn_threads"] = args.learn_threads
    rows = []
    async with local_server(args.model, **config) as srv, aiohttp.ClientSession() as http:
        peer = Peer(pattern(320, 240))
        await peer.connect(http, srv.url)
        await peer.wait_frames(30, timeout=60)
        for painting in paintings:
            name = style_name(painting)
            t_base = time.monotonic()
            await asyncio.sleep(args.seconds)  # the baseline: the same stream with nothing learning
            base_fps = fps_between(peer.arrivals, t_base, time.monotonic())
            log.info("learning %s (stream at %.1f fps before)", painting.name, base_fps)
            job = await learn_one(http, srv.url, painting, name)
            during = fps_between(peer.arrivals, job["t0"], job["t1"])
            # Off the event loop (backends are called from worker threads): the server and the peer share
            # this loop, and scoring takes seconds on 2 cores, long enough for the server to close a
            # session that sends no video.
            q = await asyncio.to_thread(
                quality, vgg, srv.server.model.backend, painting, job["style_index"], photos, photo_stats
            )
            row = {
                "painting": painting.name,
                "name": name,
                "learn_s": round(job["t1"] - job["t0"], 1),  # upload to the style being served
                "job_s": job["elapsed_s"],
                "steps": job["steps"],
                "fps_before": round(base_fps, 2),
                "fps_during": round(during, 2),
                "fps_ratio": round(during / base_fps, 3) if base_fps else None,
                **q,
                "style_wins": q["ours_style"] < q["peer_style"],
                "content_no_higher": q["ours_content"] <= q["peer_content"],
            }
            rows.append(row)
            log.info("%s", row)
        backend = srv.server.model.backend
        served = {"name": backend.name, "precision": backend.precision, "styles": len(backend.styles)}
        await peer.close()
    return {
        "bench": "new_style",
        "cpu": cpu_summary(),
        "command": "python -m bench.new_style " + " ".join(args.argv),
        "photos": len(photos),
        "eval_size": EVAL_SIZE,
        "backend": served,
        "paintings": rows,
        "median_learn_s": statistics.median(r["learn_s"] for r in rows),
    }


def table(result: dict[str, Any]) -> str:
    lines = [
        f"CPU: {result['cpu']}",
        f"served on {result['backend']['name']} {result['backend']['precision']}; {result['photos']} held-out photos "
        f"at {result['eval_size']}x{result['eval_size']}",
        "",
        "| painting | learn (s) | steps | fps before / during | ours style / content | peer one-shot style / content |",
        "|---|---|---|---|---|---|",
    ]
    for r in result["paintings"]:
        lines.append(
            f"| {r['painting']} | {r['learn_s']:.0f} | {r['steps']} | {r['fps_before']:.1f} / {r['fps_during']:.1f} | "
            f"{r['ours_style']:.4f} / {r['ours_content']:.3f} | {r['peer_style']:.4f} / {r['peer_content']:.3f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import sys

    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(prog="python -m bench.new_style", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="the served model (default: the shipped one)")
    p.add_argument("--painting", action="append", default=[], help="a painting to learn (repeat; default: three)")
    p.add_argument("--data", type=Path, default=SHARED_DATA, help="the project's material (paintings, photos)")
    p.add_argument("--photos", type=int, default=8, help="held-out photos to score on (default: 8)")
    p.add_argument("--seconds", type=float, default=15.0, help="baseline stream window before each upload")
    p.add_argument("--steps", type=int, default=None, help="steps per painting (default: the server's)")
    p.add_argument("--learn-threads", type=int, default=None, help="threads of the learning process (the server's)")
    p.add_argument("--json", type=Path, default=RESULTS_DIR / "new_style.json", help="where the JSON goes")
    args = p.parse_args(argv)
    args.argv = argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("aioice", "aiortc", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    result = asyncio.run(run(args))
    print(table(result))
    print(f"wrote {write_json(result, args.json)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
