"""The GPU half of ``bench/gpu_check.sh``: a TensorRT plan where TensorRT exists, and torch-CUDA timings.

    python -m bench.gpu_check --json bench/results/gpu_check.json
    ALLOW_NO_TENSORRT=1 python -m bench.gpu_check      # a GPU without TensorRT (the lent machines here)

On the shipped model (its checkpoint for torch, its ONNX for TensorRT):

* **TensorRT**: ``python -m engines build`` of an fp16 plan (the float16 graph exported first,
  ``engines export --precision fp16``) over 320x240:640x480:1920x1080, then the plan against
  torch float32 (PSNR at the fp16 floor) and its time at each size. Missing TensorRT is an
  error unless ``ALLOW_NO_TENSORRT=1`` says this machine is known to have none.
* **torch-CUDA fp16, channels_last**, for the default model (v1) and generator v2, at 640x480,
  1280x720 and 1920x1080: median ms per frame of the torch backend's own module under float16
  autocast, as the backend runs it (uint8 frame in and out on the GPU), eager and replayed as a
  CUDA graph (captured once per size; the input copied into its static buffer each call), and of
  the backend's ``stylize`` (a numpy frame in and out, the copies to and from the GPU included),
  as it serves (its own CUDA graph per shape) and with ``cuda_graphs=False``.

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
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from bench.results import RESULTS_DIR, write_json
from common.paths import DEFAULT_CHECKPOINT, DEFAULT_MODEL, MODELS_DIR

SIZES = ((640, 480), (1280, 720), (1920, 1080))  # (width, height)
V2_CHECKPOINT = MODELS_DIR / "v2" / "default.safetensors"  # generator v2, timed beside the default (v1)


def fail(message: str) -> None:
    print(f"gpu_check: {message}", file=sys.stderr)
    raise SystemExit(1)


def time_torch(checkpoint: Path, repeats: int) -> dict[str, Any]:
    """``checkpoint`` as the torch backend runs it on CUDA at fp16 (autocast float16, channels_last):
    its module on GPU-resident uint8 frames, eager and as a replayed CUDA graph, and the backend's
    own ``stylize`` (a numpy frame in and out: the copies to and from the GPU included)."""
    import torch

    from engines.runtime.torch_backend import TorchBackend

    backend = TorchBackend(checkpoint, device="cuda", precision="fp16")
    eager_backend = TorchBackend(checkpoint, device="cuda", precision="fp16", cuda_graphs=False)
    n, stroke_input = len(backend.styles), bool(backend.stroke_scale.anchors)
    out: dict[str, Any] = {"checkpoint": checkpoint.relative_to(MODELS_DIR.parent.parent).as_posix(), "sizes": {}}
    weights = np.eye(n, dtype=np.float32)[0]

    call = backend._forward  # the backend's own module under its float16 autocast, as it serves

    def replay(graph: torch.cuda.CUDAGraph, static_in: torch.Tensor, frame: torch.Tensor) -> None:
        static_in.copy_(frame)  # the new frame into the graph's static input buffer
        graph.replay()

    def median_ms(fn: Any, *args: Any) -> float:
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn(*args)
            torch.cuda.synchronize()
            times.append((time.perf_counter() - t) * 1000)
        return round(statistics.median(times), 3)

    for w, h in SIZES:
        frame = torch.randint(0, 256, (1, h, w, 3), dtype=torch.uint8, device="cuda")
        style = torch.from_numpy(weights[None]).cuda()
        stroke = torch.ones(1, device="cuda") if stroke_input else None
        with torch.inference_mode():
            for _ in range(10):
                call(frame, style, stroke)
            torch.cuda.synchronize()
            eager = median_ms(call, frame, style, stroke)
            static_in = frame.clone()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(3):
                    call(static_in, style, stroke)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = call(static_in, style, stroke)
            graphed = median_ms(replay, graph, static_in, frame)
            same = bool(torch.equal(static_out, call(frame, style, stroke)))
        image = frame[0].cpu().numpy()
        for _ in range(5):
            backend.stylize(image, weights)
            eager_backend.stylize(image, weights)
        out["sizes"][f"{w}x{h}"] = {
            "eager_ms": eager,
            "cuda_graph_ms": graphed,
            "graph_matches_eager": same,
            "backend_stylize_ms": median_ms(backend.stylize, image, weights),
            "backend_stylize_eager_ms": median_ms(eager_backend.stylize, image, weights),
        }
    backend.close()
    eager_backend.close()
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
        raise RuntimeError(f"{reason} (set ALLOW_NO_TENSORRT=1 on a GPU machine known to have none)")
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
                raise RuntimeError(
                    f"the TensorRT fp16 plan is {db:.1f} dB from torch float32 at {w}x{h}, floor {PSNR_FLOOR['fp16']}"
                )
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
    import torch

    if not torch.cuda.is_available():
        fail(f"torch {torch.__version__} sees no CUDA GPU")
    failed: list[str] = []

    def part(name: str, fn: Any, *fn_args: Any) -> dict[str, Any]:
        """One measurement; a failure is recorded in its place and the rest still run and are written."""
        try:
            return fn(*fn_args)  # type: ignore[no-any-return]
        except Exception as e:  # noqa: BLE001 - reported, and the exit status says so
            traceback.print_exc()
            failed.append(name)
            return {"error": f"{type(e).__name__}: {e}"}

    result = {
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "torch_cuda_fp16_channels_last": [
            part(f"torch-CUDA {label}", time_torch, path, args.repeats)
            for label, path in (("v1 (the default)", DEFAULT_CHECKPOINT), ("v2", V2_CHECKPOINT))
        ],
        "tensorrt_fp16": part("TensorRT", tensorrt_plan, args.repeats),
    }
    print(json.dumps(result, indent=2))
    print(f"wrote {write_json(result, args.json)}")
    if failed:
        print(f"gpu_check: failed: {', '.join(failed)} (the errors are in the results)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
