"""The GPU half of ``bench/gpu_check.sh``: a TensorRT plan where TensorRT exists, and torch-CUDA timings.

    python -m bench.gpu_check --json bench/results/gpu_check.json
    ALLOW_NO_TENSORRT=1 python -m bench.gpu_check      # a GPU without TensorRT (the lent machines here)

On the shipped model (its checkpoint for torch, its ONNX for TensorRT):

* **TensorRT**: ``python -m engines build`` of an fp16 plan (the float16 graph exported first,
  ``engines export --precision fp16``) over 320x240:640x480:1920x1080, then the plan against
  torch float32 (PSNR at the fp16 floor) and its time at each size. Missing TensorRT is an
  error unless ``ALLOW_NO_TENSORRT=1`` says this machine is known to have none.
* **torch-CUDA fp16, channels_last**, at 640x480, 1280x720 and 1920x1080: median ms per frame
  (uint8 frame in and out on the GPU, as the torch backend runs it), eager and replayed as a
  CUDA graph (captured once per size; the input copied into its static buffer each call).

Exits non-zero, saying what, when the machine has no CUDA GPU or torch sees none: this runs
where a GPU is expected, and a silent skip there would hide the reason.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.results import RESULTS_DIR, write_json
from common.paths import DEFAULT_CHECKPOINT, DEFAULT_MODEL

SIZES = ((640, 480), (1280, 720), (1920, 1080))  # (width, height)


def fail(message: str) -> None:
    print(f"gpu_check: {message}", file=sys.stderr)
    raise SystemExit(1)


def time_torch(repeats: int) -> dict[str, Any]:
    import torch

    from engines.wrap import UInt8Generator
    from trainer.checkpoint import load_generator

    if not torch.cuda.is_available():
        fail(f"torch {torch.__version__} sees no CUDA GPU")
    generator, ckpt = load_generator(DEFAULT_CHECKPOINT, device="cuda")
    module = UInt8Generator(generator.half()).eval().to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    module.dtype = torch.float16
    n = generator.config.num_styles
    out: dict[str, Any] = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "sizes": {}}
    for w, h in SIZES:
        frame = torch.randint(0, 256, (1, h, w, 3), dtype=torch.uint8, device="cuda")
        style = torch.zeros(1, n, device="cuda")
        style[0, 0] = 1
        stroke = torch.ones(1, device="cuda") if generator.config.strokes else None
        with torch.inference_mode():
            for _ in range(10):
                module(frame, style, stroke)
            torch.cuda.synchronize()
            eager = []
            for _ in range(repeats):
                t = time.perf_counter()
                module(frame, style, stroke)
                torch.cuda.synchronize()
                eager.append((time.perf_counter() - t) * 1000)
            static_in = frame.clone()
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(3):
                    module(static_in, style, stroke)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = module(static_in, style, stroke)
            graphed = []
            for _ in range(repeats):
                t = time.perf_counter()
                static_in.copy_(frame)
                graph.replay()
                torch.cuda.synchronize()
                graphed.append((time.perf_counter() - t) * 1000)
            same = bool(torch.equal(static_out, module(frame, style, stroke)))
        out["sizes"][f"{w}x{h}"] = {
            "eager_ms": round(statistics.median(eager), 3),
            "cuda_graph_ms": round(statistics.median(graphed), 3),
            "graph_matches_eager": same,
        }
    return out


def tensorrt_plan(repeats: int) -> dict[str, Any]:
    from engines.build import build_engine
    from engines.export import export_onnx
    from engines.runtime import load_backend
    from engines.runtime.manifest import EngineSpec, ShapeProfile
    from engines.runtime.precision import PSNR_FLOOR, psnr
    from engines.runtime.tensorrt_backend import unavailable_reason

    if reason := unavailable_reason():
        if os.environ.get("ALLOW_NO_TENSORRT"):
            return {"skipped": reason}
        fail(f"{reason} (set ALLOW_NO_TENSORRT=1 on a GPU machine known to have none)")
    with tempfile.TemporaryDirectory(prefix="stylecast-gpu-") as tmp:
        model = Path(tmp) / DEFAULT_MODEL.name
        model.write_bytes(DEFAULT_MODEL.read_bytes())
        export_onnx(DEFAULT_CHECKPOINT, model.with_name(model.stem + ".fp16.onnx"), precision="fp16")
        spec = EngineSpec(precision="fp16", shapes=(ShapeProfile((240, 320), (480, 640), (1080, 1920)),))
        t0 = time.perf_counter()
        manifest = build_engine(model, spec, Path(tmp) / "trt")
        build_s = time.perf_counter() - t0
        trt = load_backend(model, "tensorrt", precision="fp16", engine_dir=Path(tmp) / "trt")
        ref = load_backend(DEFAULT_CHECKPOINT, "torch-cuda", precision="fp32")
        result: dict[str, Any] = {"build_s": round(build_s, 1), "tensorrt": manifest.runtime_version, "sizes": {}}
        weights = np.eye(len(trt.styles), dtype=np.float32)[0]
        for w, h in SIZES:
            frame = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
            db = psnr(trt.stylize(frame, weights), ref.stylize(frame, weights))
            if db < PSNR_FLOOR["fp16"]:
                fail(f"the TensorRT fp16 plan is {db:.1f} dB from torch float32 at {w}x{h}, floor {PSNR_FLOOR['fp16']}")
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                trt.stylize(frame, weights)
                times.append((time.perf_counter() - t) * 1000)
            result["sizes"][f"{w}x{h}"] = {"stylize_ms": round(statistics.median(times), 3), "psnr_db": round(db, 1)}
        trt.close()
        ref.close()
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=50, help="timed calls per size (median reported)")
    p.add_argument("--json", type=Path, default=RESULTS_DIR / "gpu_check.json", help="results file")
    args = p.parse_args(argv)
    result = {"torch_cuda_fp16_channels_last": time_torch(args.repeats), "tensorrt_fp16": tensorrt_plan(args.repeats)}
    print(json.dumps(result, indent=2))
    print(f"wrote {write_json(result, args.json)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
