"""Export, build and inspect stylecast generators.

    # checkpoint -> one self-contained ONNX file (uint8 NHWC in/out, checked against torch)
    python -m engines export engines/models/default.safetensors --out engines/models/default.onnx

    # ONNX -> TensorRT plan (GPU with TensorRT >= 10), with manifest.json beside it; by default into
    # engines/models/default.engines/tensorrt-fp16, where the server looks for it
    python -m engines build engines/models/default.onnx --backend tensorrt --precision fp16 \\
        --shapes 320x240:640x480:1280x720

    # ONNX -> OpenVINO model cache for this CPU (those sizes start without a compile), same manifest scheme
    python -m engines build engines/models/default.onnx --backend openvino --precision fp32

    # INT8 model beside it, written only if it passes the quality gate on held-out photos
    python -m engines quantize engines/models/default.onnx --calib photos/ --paintings paintings/

    # a Triton model repository (config.pbtxt checked as Triton's ModelConfig), or a real Triton server
    python -m engines triton repo engines/models/default.onnx --out repo --kind onnxruntime --max-batch 8
    python -m engines triton serve engines/models/default.onnx --backend openvino --grpc-port 8001

    # which backend and precision would serve this model here, and why
    python -m engines info engines/models/default.onnx

The speed benchmark beside the published peer is ``python -m bench.model_speed``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from common.cli import add_options, from_args
from engines.runtime.base import EngineError, InputError
from engines.runtime.manifest import EngineSpec, default_engine_dir
from engines.runtime.precision import INT8_MAX_FLOAT_CONVS, INT8_MAX_QUALITY_LOSS, PRECISIONS, PSNR_FLOOR
from engines.runtime.registry import backend_choices


def cmd_export(args: argparse.Namespace) -> int:
    from engines.export import export_onnx

    suffix = ".fp16.onnx" if args.precision == "fp16" else ".onnx"
    out = args.out or Path(args.checkpoint).with_name(Path(args.checkpoint).stem + suffix)
    # always checked: onnx.checker, then ONNX Runtime vs torch (fp16: against float32, at its PSNR floor)
    path = export_onnx(args.checkpoint, out, opset=args.opset, precision=args.precision)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from engines.build import build_engine, ensure_engine

    spec = from_args(EngineSpec, args)
    out = args.out or default_engine_dir(args.onnx, spec.backend, spec.precision)
    if args.force:
        manifest = build_engine(args.onnx, spec, out)
    else:
        manifest = ensure_engine(args.onnx, spec, out, rebuild=not args.refuse_stale)
    print(json.dumps({"folder": str(out), **{k: v for k, v in vars(manifest).items() if k != "extra"}}, indent=2))
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    from engines.quantize import chosen, format_gates, quantize

    out, gates = quantize(
        args.onnx,
        args.calib,
        args.out,
        method=args.method,
        calib_photos=args.calib_photos,
        holdout_photos=args.holdout,
        size=args.size,
        psnr_floor=args.psnr_floor,
        max_loss=args.max_loss,
        paintings=tuple(args.paintings),
        threads=args.threads,
        max_float_convs=args.max_float_convs,
    )
    print(format_gates(gates))
    best = chosen(gates)  # what quantize() wrote: None exactly when it wrote nothing
    if out is None or best is None:
        print("no quantized model passed the gate: nothing written", file=sys.stderr)
        return 3
    print(f"wrote {out} ({best.method})")
    return 0


def cmd_triton_repo(args: argparse.Namespace) -> int:
    from engines.triton import RepoSpec, write_repo

    spec = RepoSpec(
        name=args.name,
        kind=args.kind,
        max_batch=args.max_batch,
        instances=args.instances,
        queue_delay_us=args.queue_delay_us,
    )
    folder = write_repo(args.onnx, args.out, spec, args.plan)
    print(f"wrote {folder}/config.pbtxt and {folder}/1/ (checked as Triton's ModelConfig)")
    return 0


def cmd_triton_serve(args: argparse.Namespace) -> int:
    from engines.triton import serve

    serve(
        args.onnx,
        args.backend,
        name=args.name,
        precision=args.precision,
        grpc_port=args.grpc_port,
        http_port=args.http_port,
        metrics_port=args.metrics_port,
        max_batch=args.max_batch,
        queue_delay_us=args.queue_delay_us,
        num_threads=args.threads,
    )
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from engines.runtime import load_backend, read_model_info

    if Path(args.model).suffix == ".onnx":
        info = read_model_info(args.model)
        print(f"styles ({len(info.styles)}): {', '.join(info.styles)}")
        print(f"generator: {info.generator}")
    backend = load_backend(args.model, args.backend, num_threads=args.threads, precision=args.precision)
    print(f"backend: {backend.name} ({backend.precision})")
    print(f"reason: {backend.reason}")
    print(f"precision: {backend.precision_reason}")
    backend.close()
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
    p.add_argument(
        "--precision", choices=("fp32", "fp16"), default="fp32",
        help="fp16: a float16 graph with uint8 ends, MODEL.fp16.onnx by default, what a TensorRT fp16 plan is "
        "built from (TensorRT 11 has no FP16 flag); checked against float32 at the fp16 PSNR floor",
    )  # fmt: skip
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("build", help="ONNX -> TensorRT plan or OpenVINO model cache, with manifest.json")
    p.add_argument("onnx", type=Path, help="exported stylecast model (.onnx)")
    add_options(p, EngineSpec)
    p.add_argument(
        "--out",
        type=Path,
        help="output folder (engine + manifest.json); default: <model folder>/<stem>.engines/<backend>-<precision>, "
        "where the server and load_backend look for it",
    )
    p.add_argument(
        "--refuse-stale",
        action="store_true",
        help="refuse (exit 2, naming the field that differs) a cached engine whose manifest does not match, "
        "instead of rebuilding it",
    )
    p.add_argument("--force", action="store_true", help="build even if a matching engine is cached")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser(
        "quantize", help="ONNX -> INT8 ONNX (post-training static), written only if it passes the quality gate"
    )
    p.add_argument("onnx", type=Path, help="exported stylecast model (.onnx)")
    p.add_argument("--calib", type=Path, required=True, help="folder of photos: most calibrate, a held-out part judges")
    p.add_argument("--out", type=Path, help="the INT8 model (default: <stem>.int8.onnx beside the model)")
    p.add_argument(
        "--method",
        choices=("auto", "onnxruntime", "nncf"),
        default="auto",
        help="quantizer (default: every one installed, the better kept)",
    )
    p.add_argument("--calib-photos", type=int, default=32, help="photos to calibrate on (default: 32)")
    p.add_argument("--holdout", type=int, default=6, help="photos held out for the gate (default: 6)")
    p.add_argument(
        "--size", default="320x240", help="frame size for calibration and the gate, WIDTHxHEIGHT (default: 320x240)"
    )
    p.add_argument(
        "--psnr-floor",
        type=float,
        default=PSNR_FLOOR["int8"],
        help="dB vs float32 on every held-out image (default: %(default)s)",
    )
    p.add_argument(
        "--max-loss",
        type=float,
        default=INT8_MAX_QUALITY_LOSS,
        help="how much worse (relative) than float32 the style and content distance may be (default: %(default)s)",
    )
    p.add_argument(
        "--paintings",
        type=Path,
        action="append",
        default=[],
        help="folder holding the style paintings, for the style distance (default: the model's thumbnails)",
    )
    p.add_argument(
        "--max-float-convs",
        type=int,
        default=INT8_MAX_FLOAT_CONVS,
        help="where rounding every convolution misses the PSNR floor on calibration photos, keep up to this many "
        "of the most sensitive ones in float (never more than a quarter; 0: none; default: %(default)s)",
    )
    p.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("triton", help="NVIDIA Triton: write a model repository, or run a real server (PyTriton)")
    tsub = p.add_subparsers(dest="triton_command", required=True)
    t = tsub.add_parser("repo", help="ONNX (or a TensorRT plan) -> REPO/NAME/1/model.* + a checked config.pbtxt")
    t.add_argument("onnx", type=Path, help="exported stylecast model (.onnx)")
    t.add_argument("--out", type=Path, required=True, help="the repository folder (Triton's --model-repository)")
    t.add_argument("--name", default="stylecast", help="the model's name on the server (default: stylecast)")
    t.add_argument("--kind", choices=("onnxruntime", "openvino", "tensorrt"), default="onnxruntime",
                   help="Triton backend to run it (default: onnxruntime)")  # fmt: skip
    t.add_argument(
        "--plan", type=Path, help="--kind tensorrt: a folder from python -m engines build --backend tensorrt"
    )
    t.add_argument("--max-batch", type=int, default=8, help="max_batch_size (default: 8)")
    t.add_argument("--instances", type=int, default=1, help="model instances (default: 1)")
    t.add_argument("--queue-delay-us", type=int, default=500,
                   help="dynamic batcher: microseconds a request may wait for others (default: 500)")  # fmt: skip
    t.set_defaults(func=cmd_triton_repo)
    t = tsub.add_parser("serve", help="run a real Triton server (PyTriton) hosting the model on one of our backends")
    t.add_argument("onnx", type=Path, help="exported stylecast model (.onnx, or .safetensors for torch backends)")
    t.add_argument("--backend", default="auto", choices=[b for b in backend_choices() if b != "triton"],
                   help="runtime inside the server (default: auto, the fastest here)")  # fmt: skip
    t.add_argument("--precision", default="auto", choices=("auto", *PRECISIONS), help="(default: auto)")
    t.add_argument("--name", default="stylecast", help="the model's name on the server (default: stylecast)")
    t.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (default: 8001)")
    t.add_argument("--http-port", type=int, default=8000, help="HTTP port (default: 8000)")
    t.add_argument("--metrics-port", type=int, default=8002, help="Prometheus metrics port (default: 8002)")
    t.add_argument("--max-batch", type=int, default=8, help="largest batch the dynamic batcher forms (default: 8)")
    t.add_argument("--queue-delay-us", type=int, default=500,
                   help="dynamic batcher: microseconds a request may wait for others (default: 500)")  # fmt: skip
    t.add_argument("--threads", type=int, help="CPU threads for the runtime (default: all cores)")
    t.set_defaults(func=cmd_triton_serve)

    p = sub.add_parser("info", help="model styles and the backend load_backend would pick here, with the reason")
    p.add_argument("model", type=Path, help=".onnx or .safetensors")
    p.add_argument("--backend", default="auto", choices=backend_choices(), help="auto (default) or a backend name")
    p.add_argument("--threads", type=int, help="CPU threads (default: all cores)")
    p.add_argument(
        "--precision",
        default="auto",
        choices=("auto", *PRECISIONS),
        help="auto (default: the fastest that passes its parity gate here) or fp32, bf16, fp16, int8",
    )
    p.set_defaults(func=cmd_info)

    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return int(args.func(args))
    except (EngineError, InputError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
