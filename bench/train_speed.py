"""Training speed per precision: seconds per step, float32 vs bf16 (or fp16) autocast, interleaved.

    python -m bench.train_speed --steps 12                          # default recipe on ../shared/data
    python -m bench.train_speed --content photos/ --style a.png --style b.png --size 160 --batch 4

One Trainer per precision on the same photos, paintings and seed; their steps run
in turns (A B A B ...), so machine drift hits both alike. The first ``--warmup``
steps of each are not counted. Also times ``add-style`` steps the same way (only
the new style's rows train). Prints a table with the CPU and writes JSON.
Nothing passes or fails on a time.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.data import PAINTINGS, PHOTOS
from bench.results import RESULTS_DIR, write_json
from common.cpu import cpu_summary

log = logging.getLogger("bench.train_speed")

DEFAULT_STYLES = (
    PAINTINGS / "opencv-doc" / "starry_night.jpg",
    PAINTINGS / "gcompris-qt-data__paintings" / "Katsushika_Hokusai_The_Great_Wave_off_Kanagawa_1823_1829.png",
)


def time_training(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from trainer.train import TrainConfig, Trainer

    torch.set_num_threads(args.threads)
    trainers = {}
    with tempfile.TemporaryDirectory() as tmp:
        for precision in args.precisions:
            cfg = TrainConfig(
                content_dir=str(args.content),
                styles=tuple((str(p), None) for p in args.style),
                out=str(Path(tmp) / f"{precision}.safetensors"),
                steps=10**6,
                size=args.size,
                batch=args.batch,
                precision=precision,
                adversarial_start=0,  # the full step: perceptual, temporal and adversarial terms, and D
                sample_every=0,
                save_every=0,
                device="cpu",
            )
            trainers[precision] = Trainer(cfg)
        samples: dict[str, list[float]] = {p: [] for p in trainers}
        for i in range(args.warmup + args.steps):
            for p, t in trainers.items():
                t0 = time.perf_counter()
                t.train_step()
                t.step += 1
                if i >= args.warmup:
                    samples[p].append(time.perf_counter() - t0)
    return {p: {"s_per_step": statistics.median(v), "steps": len(v)} for p, v in samples.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.train_speed", description=__doc__.split("\n\n")[0])
    p.add_argument("--content", type=Path, default=PHOTOS, help="photos folder (default: %(default)s)")
    p.add_argument("--style", type=Path, action="append", help="a painting, repeatable (default: two shipped styles)")
    p.add_argument("--size", type=int, default=160, help="crop side in px (default: 160, the shipped recipe)")
    p.add_argument("--batch", type=int, default=4, help="crops per step (default: 4)")
    p.add_argument("--steps", type=int, default=10, help="timed steps per precision (default: 10)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per precision first (default: 2)")
    p.add_argument("--precisions", default="fp32,bf16", help="comma-separated (default: fp32,bf16)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    p.add_argument("--json", type=Path, default=RESULTS_DIR / "train_speed.json", help="results file")
    args = p.parse_args(argv)
    args.style = args.style or list(DEFAULT_STYLES)
    args.precisions = [x.strip() for x in args.precisions.split(",") if x.strip()]
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    result = {
        "bench": "train_speed",
        "command": "python -m bench.train_speed " + " ".join(sys.argv[1:] if argv is None else argv),
        "cpu": cpu_summary(),
        "size": args.size,
        "batch": args.batch,
        "threads": args.threads,
        "train_step": time_training(args),
    }
    base = result["train_step"].get("fp32", {}).get("s_per_step")
    print(f"CPU: {result['cpu']['model']} ({', '.join(result['cpu']['flags'])}), {args.threads} threads")
    print(f"train step, batch {args.batch} at {args.size} px, full loss (perceptual, temporal, adversarial, D):")
    print("| precision | s per step (median) | vs fp32 |\n| --- | ---: | ---: |")
    for prec, r in result["train_step"].items():
        ratio = f"{base / r['s_per_step']:.2f}x" if base else "-"
        print(f"| {prec} | {r['s_per_step']:.3f} | {ratio} |")
    print(f"wrote {write_json(result, args.json)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
