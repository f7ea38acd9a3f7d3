"""engines.build: manifests, cache checks (rebuild or refuse, naming the field), the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from common.sizes import parse_size
from engines.build import build_engine, ensure_engine
from engines.runtime.base import EngineError
from engines.runtime.manifest import EngineSpec, Manifest, ManifestMismatch, ShapeProfile, default_engine_dir
from engines.runtime.model import file_sha256

ROOT = Path(__file__).resolve().parents[1]


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` -> (inode, mtime in ns): a rewrite (atomic or not) changes one of them."""
    return {str(p.relative_to(folder)): (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def test_shape_parsing() -> None:
    assert parse_size("640x480") == (640, 480)  # (width, height), as everywhere
    prof = ShapeProfile.parse("320x240:640x480:1280x720")
    assert prof.min_hw == (240, 320) and prof.max_hw == (720, 1280) and str(prof) == "320x240:640x480:1280x720"
    with pytest.raises(ValueError, match="MIN:OPT:MAX"):
        ShapeProfile.parse("320x240:640x480")
    with pytest.raises(ValueError, match="multiples of 4"):
        ShapeProfile.parse("321x240:640x480:1280x720")
    with pytest.raises(ValueError, match="min <= opt <= max"):
        ShapeProfile.parse("640x480:320x240:1280x720")
    with pytest.raises(ValueError, match="WIDTHxHEIGHT"):
        parse_size("640by480")


SMALL = (ShapeProfile((48, 64), (96, 128), (96, 128)),)  # two sizes compiled ahead: 64x48, 128x96


def test_openvino_build_writes_a_model_cache_and_manifest(tiny_onnx: Path, tmp_path: Path) -> None:
    out = tmp_path / "ov"
    spec = EngineSpec(backend="openvino", precision="fp32", shapes=SMALL, num_threads=1)
    manifest = build_engine(tiny_onnx, spec, out)
    data = json.loads((out / "manifest.json").read_text())
    assert data["onnx_sha256"] == file_sha256(tiny_onnx)
    assert data["backend"] == "openvino" and data["precision"] == "fp32"
    assert data["shapes"] == [{"min_hw": [48, 64], "opt_hw": [96, 128], "max_hw": [96, 128]}]
    assert data["runtime_version"] and data["device"] and data["build_seconds"] >= 0
    assert data["extra"]["properties"]["PERFORMANCE_HINT"] == "LATENCY"
    blobs = list((out / manifest.artifact).iterdir())
    assert len(blobs) == 2 and all(b.stat().st_size > 1000 for b in blobs)  # one compiled model per size


def test_cached_engine_reused_rebuilt_or_refused(tiny_onnx: Path, tmp_path: Path) -> None:
    out = tmp_path / "ov"
    spec = EngineSpec(backend="openvino", precision="fp32", shapes=SMALL, num_threads=1)
    ensure_engine(tiny_onnx, spec, out)
    built = snapshot(out)
    ensure_engine(tiny_onnx, spec, out)
    assert snapshot(out) == built  # matching manifest: reused, no file rewritten

    # Another model under the same name: refused with the field, old and new values ...
    other = tmp_path / "model.onnx"
    # One more metadata entry (protobuf field 14 = {key "k", value "v"}): valid ONNX, other sha256.
    other.write_bytes(tiny_onnx.read_bytes() + b"\x72\x06\x0a\x01k\x12\x01v")
    with pytest.raises(ManifestMismatch, match="onnx_sha256") as err:
        ensure_engine(other, spec, out, rebuild=False)
    assert err.value.field == "onnx_sha256" and err.value.wanted == file_sha256(other)
    assert snapshot(out) == built  # refused: nothing touched
    # ... or rebuilt.
    rebuilt = ensure_engine(other, spec, out, rebuild=True)
    assert rebuilt.onnx_sha256 == file_sha256(other)
    assert snapshot(out)["manifest.json"] != built["manifest.json"]

    # A manifest from another runtime version or precision is not used silently either.
    data = json.loads((out / "manifest.json").read_text())
    data["runtime_version"] = "2020.1"
    (out / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ManifestMismatch, match="runtime_version is '2020.1'"):
        ensure_engine(other, spec, out, rebuild=False)
    with pytest.raises(ManifestMismatch, match="precision"):
        ensure_engine(other, EngineSpec(backend="openvino", precision="fp16", shapes=SMALL), out, rebuild=False)


def test_openvino_backend_serves_from_the_build(tiny_onnx: Path, tmp_path: Path) -> None:
    from engines.runtime import load_backend
    from engines.runtime.openvino_backend import OpenVinoBackend

    out = tmp_path / "ov"
    build_engine(tiny_onnx, EngineSpec(backend="openvino", precision="fp32", shapes=SMALL, num_threads=1), out)
    built = snapshot(out)
    served = load_backend(tiny_onnx, "openvino-cpu", num_threads=1, engine_dir=out, precision="fp32")
    assert served.engine_dir == out  # type: ignore[attr-defined]
    plain = OpenVinoBackend(tiny_onnx, num_threads=1)
    frame = np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    w = np.array([1, 0, 2], np.float32)
    np.testing.assert_array_equal(served.stylize(frame, w), plain.stylize(frame, w))
    # The built size came from the cache: OpenVINO added no entry for it (a compile would have).
    assert snapshot(out) == built

    # A cache built for another model is refused, naming the field, not used silently.
    other = tmp_path / "other.onnx"
    other.write_bytes(tiny_onnx.read_bytes() + b"\x72\x06\x0a\x01k\x12\x01v")
    with pytest.raises(ManifestMismatch, match="onnx_sha256"):
        OpenVinoBackend(other, num_threads=1, engine_dir=out)
    # ... and "auto" goes on to the next backend, saying why (decided by the error's type).
    fallback = load_backend(other, num_threads=1, engine_dir=out, precision="fp32")
    assert fallback.name == "onnxruntime-cpu"
    assert "openvino-cpu: failed to load (cached engine" in fallback.reason and "onnx_sha256" in fallback.reason
    # Without an engine folder (none at the default place either) it compiles as before.
    assert not default_engine_dir(tiny_onnx, "openvino", "fp32").exists()
    plain_again = load_backend(tiny_onnx, "openvino-cpu", num_threads=1, precision="fp32")
    assert plain_again.engine_dir is None  # type: ignore[attr-defined]


def test_bad_manifest_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EngineError, match="build the engine first"):
        Manifest.read(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(EngineError, match="not a valid engine manifest"):
        Manifest.read(tmp_path)


@pytest.mark.tensorrt
def test_tensorrt_build_and_cache(tiny_onnx: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    import shutil

    from conftest import need_gpu

    from engines.export import export_onnx
    from engines.runtime import tensorrt_backend

    need_gpu(tensorrt_backend.unavailable_reason())
    shutil.copyfile(tiny_onnx, tmp_path / "tiny.onnx")
    tiny_onnx = tmp_path / "tiny.onnx"
    export_onnx(tiny_checkpoint, tmp_path / "tiny.fp16.onnx", precision="fp16")
    spec = EngineSpec(
        precision="fp16",
        shapes=(ShapeProfile((64, 64), (240, 320), (480, 640)),),
        max_batch=2,
        timing_cache=tmp_path / "timing.cache",
    )
    manifest = build_engine(tiny_onnx, spec, tmp_path / "trt")
    assert manifest.compute_capability and manifest.device and (tmp_path / "timing.cache").stat().st_size > 0
    assert manifest.shapes == [{"min_hw": [64, 64], "opt_hw": [240, 320], "max_hw": [480, 640]}]
    with pytest.raises(ManifestMismatch, match="shapes"):
        ensure_engine(tiny_onnx, EngineSpec(precision="fp16", max_batch=2), tmp_path / "trt", rebuild=False)
    # The runtime never builds: without a plan, TensorRT is unavailable and says how to build one.
    from engines.runtime import load_backend

    with pytest.raises(EngineError, match="no TensorRT plan in .*python -m engines build"):
        load_backend(tiny_onnx, "tensorrt", engine_dir=tmp_path / "empty")


def test_cli_export_build_info(tiny_checkpoint: Path, tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "engines", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
        )

    ckpt = tmp_path / "m.safetensors"
    ckpt.write_bytes(tiny_checkpoint.read_bytes())
    res = run("export", str(ckpt), "--out", str(tmp_path / "m.onnx"))
    assert res.returncode == 0, res.stderr[-2000:]
    res = run(
        "build",
        str(tmp_path / "m.onnx"),
        "--backend",
        "openvino",
        "--precision",
        "fp32",
        "--shapes",
        "64x48:64x48:64x48",
    )
    assert res.returncode == 0, res.stderr[-2000:]
    built = json.loads(res.stdout)
    # By default into the folder load_backend looks in.
    assert built["backend"] == "openvino" and built["folder"] == str(tmp_path / "m.engines" / "openvino-fp32")
    assert built["shapes"] == [{"min_hw": [48, 64], "opt_hw": [48, 64], "max_hw": [48, 64]}]
    res = run("info", str(tmp_path / "m.onnx"), "--backend", "openvino", "--precision", "fp32")
    assert res.returncode == 0 and "backend: openvino-cpu (fp32)" in res.stdout and "reason: " in res.stdout
    assert "precision: fp32 requested explicitly" in res.stdout
    res = run("info", str(tmp_path / "missing.onnx"))
    assert res.returncode == 2 and "model file not found" in res.stderr
    res = run("build", "--help")
    assert "MiB" in res.stdout and "WIDTHxHEIGHT" in res.stdout
    words = " ".join(res.stdout.split())  # argparse wraps lines anywhere
    assert "(default: 4)" in words and "(default: 320x240:640x480:1280x720)" in words  # from EngineSpec


def test_bench_runs_interleaved_and_writes_json(tiny_onnx: Path, tiny_v2_onnx: Path, tmp_path: Path) -> None:
    from bench.model_speed import format_table, run_bench
    from bench.results import write_json
    from common.cpu import cpu_bf16_flag

    result = run_bench(
        tiny_onnx, sizes=((64, 48),), backends=("openvino-cpu", "no-such"), repeats=2, warmup=1, progress=False,
        compare=(("v2", tiny_v2_onnx),),
    )  # fmt: skip
    ours = [r for r in result["rows"] if r["model"] == "ours"]
    want = ["fp32", "bf16"] if cpu_bf16_flag() else ["fp32"]  # every precision the backend runs here
    assert [(r["backend"], r["precision"], r["size"]) for r in ours] == [("openvino-cpu", p, "64x48") for p in want]
    assert all(r["median_ms"] > 0 for r in ours)
    assert "ours no-such fp32" in result["skipped"]
    assert result["cpu"]["model"] and isinstance(result["cpu"]["flags"], list)
    best = result["best"][0]
    assert best["size"] == "64x48" and best["ours_ms"] == min(r["median_ms"] for r in ours)
    # a second model of ours, timed in the same turns, with its ratio to ours
    v2 = [r for r in result["rows"] if r["model"] == "v2"]
    assert [r["precision"] for r in v2] == want and "v2 no-such fp32" in result["skipped"]
    fastest = min(v2, key=lambda r: r["median_ms"])
    assert best["compare"]["v2"]["ms"] == fastest["median_ms"]
    assert best["compare"]["v2"]["over_ours"] == round(fastest["median_ms"] / best["ours_ms"], 2)
    # each turn's median is kept, so the two models pair turn by turn (repeats 2: one turn of 4 timed calls)
    assert all(len(r["turn_ms"]) == 1 and r["turn_ms"][0] > 0 for r in result["rows"])
    pair = best["compare"]["v2"]["paired_over_ours"]
    assert pair["turns"] == 1 and pair["ci90"][0] <= pair["median"] <= pair["ci90"][1]
    table = format_table(result)
    assert "| ours | openvino-cpu | fp32 | 64x48 |" in table and "CPU: " in table
    assert "| v2 | openvino-cpu | fp32 | 64x48 |" in table and "- 64x48: v2 (openvino-cpu" in table
    path = write_json(result, tmp_path / "speed.json")
    assert json.loads(path.read_text())["rows"] == result["rows"]


def test_the_paired_ratio_cancels_load_that_both_models_saw_in_the_same_turn() -> None:
    """On a 2-vCPU host load comes in bursts: here the second half of the run is 1.6x slower for both.
    The overall medians then say little (b is 10 % slower than a in every turn, but its overall median
    is 60 % above a's, since a burst covered more of b's turns); pairing by turn gives 1.10."""
    from bench.model_speed import Timing, best_per_size, format_table, paired_ratio

    load = [1.0] * 5 + [1.6] * 6  # the burst starts in the middle of the run
    a = Timing("ours", "openvino-cpu", "int8", "640x480", 10.0, 16.0, 44, turn_ms=[10.0 * x for x in load])
    b = Timing("v2", "openvino-cpu", "int8", "640x480", 17.6, 17.6, 44, turn_ms=[11.0 * x for x in load])
    pair = paired_ratio(b, a)
    assert pair == {"median": 1.1, "ci90": [1.1, 1.1], "turns": 11}
    assert b.median_ms / a.median_ms > 1.7  # what the overall medians of this run would have said
    # noisy turns: the interval widens around the median and contains it
    noisy = Timing("v2", "openvino-cpu", "int8", "640x480", 11.0, 12.0, 44, turn_ms=[11, 10, 12, 11.5, 10.5] * 2 + [11])
    flat = Timing("ours", "openvino-cpu", "int8", "640x480", 10.0, 10.0, 44, turn_ms=[10.0] * 11)
    wide = paired_ratio(noisy, flat)
    assert wide is not None and wide["ci90"][0] < wide["median"] == 1.1 < wide["ci90"][1]
    # rows not timed in the same turns do not pair
    assert paired_ratio(b, Timing("ours", "onnxruntime-cpu", "int8", "640x480", 1, 1, 44, turn_ms=a.turn_ms)) is None
    assert paired_ratio(b, Timing("ours", "openvino-cpu", "int8", "640x480", 1, 1, 44, turn_ms=[1.0])) is None
    best = best_per_size([a, b])[0]
    assert best["compare"]["v2"]["paired_over_ours"] == pair
    result = {
        "cpu": {"model": "x", "flags": [], "cores": 2}, "threads": 2, "repeats": 44, "warmup": 1,
        "best": [best], "rows": [], "timed": {"ours": "o", "peer": "p"}, "notes": [], "skipped": {},
    }  # fmt: skip
    assert "1.76x ours (paired by turn: 1.100x, 90 % interval 1.100-1.100, 11 turns)" in format_table(result)


def test_bench_counts_as_a_models_speed_only_precisions_the_gate_lets_through(
    tiny_onnx: Path, tiny_v2_onnx: Path
) -> None:
    """An int8 model whose kernels round too far on this CPU is refused by load_backend's auto, so the
    bench must not report its time as the model's speed (seen: v2's int8 on an AMD EPYC, 29.8 dB)."""
    from dataclasses import asdict

    from bench.model_speed import Timing, _gate, best_per_size, format_table
    from engines.runtime import load_backend

    def ov(path: Path) -> object:
        return load_backend(path, "openvino-cpu", num_threads=1, precision="fp32")

    # Real backends: the same model as the "int8" of one label passes (identical pictures), another
    # model standing in for the "int8" of the other label is far from its fp32 and is refused.
    same, other = ov(tiny_onnx), ov(tiny_v2_onnx)
    ours = [("m", "fp32", ov(tiny_onnx)), ("m", "int8", same), ("n", "fp32", ov(tiny_onnx)), ("n", "int8", other)]
    gate = _gate(ours)
    assert gate[("m", "openvino-cpu", "int8")] == (float("inf"), True)
    db, passes = gate[("n", "openvino-cpu", "int8")]
    assert db is not None and db < 30 and not passes

    rows = [
        Timing("ours", "openvino-cpu", "fp32", "64x48", 10.0, 11.0, 2),
        Timing("ours", "openvino-cpu", "int8", "64x48", 5.0, 6.0, 2, 29.8, False),
        Timing("v2", "openvino-cpu", "fp32", "64x48", 12.0, 13.0, 2),
        Timing("v2", "openvino-cpu", "int8", "64x48", 6.0, 7.0, 2, 33.0, True),
        Timing("peer", "openvino-cpu", "fp32", "64x48", 40.0, 41.0, 2),
    ]
    best = best_per_size(rows)[0]
    assert best["ours"] == "openvino-cpu fp32" and best["ours_ms"] == 10.0 and best["peer_over_ours"] == 4.0
    assert best["compare"]["v2"]["config"] == "openvino-cpu int8" and best["compare"]["v2"]["over_ours"] == 0.6
    result = {
        "cpu": {"model": "x", "flags": [], "cores": 2}, "threads": 2, "repeats": 2, "warmup": 1,
        "best": [best], "rows": [asdict(r) for r in rows], "timed": {"ours": "o", "peer": "p"},
        "notes": [], "skipped": {},
    }  # fmt: skip
    table = format_table(result)
    assert "| ours | openvino-cpu | int8 | 64x48 | 5.0 | 6.0 | 29.8 dB: refused here, not counted as fastest |" in table
    assert "| v2 | openvino-cpu | int8 | 64x48 | 6.0 | 7.0 | 33.0 dB |" in table
