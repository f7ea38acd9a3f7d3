"""The TensorRT path checked on the CPU: graph rules on every export (v1, v2, fp16, INT8, the shipped
files), the cast-first wrapper's exactness, the fp16 export's parity, and the pure parts of the
builder and runtime (versions, profiles, sources). What needs a GPU is bench/gpu_check.sh's."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from engines.export import export_onnx, verify_fp16  # noqa: E402
from engines.runtime.manifest import TENSORRT_MAJORS, precision_source  # noqa: E402
from engines.runtime.tensorrt_backend import nearest_profile, plan_refusal, version_unsupported  # noqa: E402
from engines.tensorrt_rules import check_file, tensorrt_problems  # noqa: E402
from engines.wrap import UInt8Generator  # noqa: E402
from trainer.checkpoint import load_generator  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "engines" / "models"


class OldWrapper(torch.nn.Module):
    """The wrapper before the fix: the layout changes on uint8 (TensorRT refuses a uint8 Transpose)."""

    def __init__(self, generator: torch.nn.Module) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, image: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        x = image.permute(0, 3, 1, 2).to(torch.float32) * (1.0 / 255.0)
        y = torch.clamp(torch.round(self.generator(x, style.to(torch.float32)).float() * 255.0), 0.0, 255.0)
        return y.to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def _export(module: torch.nn.Module, path: Path, num_styles: int, hw: tuple[int, int] = (96, 128)) -> Path:
    """Traced for one frame of ``hw`` (static shapes: enough to compare the two wrappers)."""
    image = torch.randint(0, 256, (1, *hw, 3), dtype=torch.uint8)
    with torch.no_grad():
        program = torch.onnx.export(
            module, (image, torch.ones(1, num_styles)), input_names=["image", "style"], output_names=["stylized"],
            dynamo=True, external_data=False, verbose=False,
        )  # fmt: skip
    assert program is not None
    onnx.save_model(program.model_proto, str(path))
    return path


@pytest.mark.parametrize("name", ["default.onnx", "default.int8.onnx", "v2/default.onnx", "v2/default.int8.onnx"])
def test_the_shipped_models_follow_tensorrts_rules(name: str) -> None:
    assert check_file(MODELS / name) == []


def test_every_export_follows_them_and_the_old_wrapper_did_not(
    tiny_onnx: Path, tiny_v2_onnx: Path, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    assert check_file(tiny_onnx) == [] and check_file(tiny_v2_onnx) == []
    generator, _ = load_generator(tiny_checkpoint)
    old = check_file(_export(OldWrapper(generator).eval(), tmp_path / "old.onnx", 3))
    assert any("uint8 input 'image' feeds ['Transpose']" in p for p in old), old
    assert any("uint8 output 'stylized' comes from Transpose" in p for p in old), old
    assert any("uint8 tensors inside the graph" in p for p in old), old


def test_casting_first_is_exact(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """Moving the casts to the graph's edges changes no value: bit-identical, in torch and on ONNX Runtime."""
    generator, _ = load_generator(tiny_checkpoint)
    old, new = OldWrapper(generator).eval(), UInt8Generator(generator).eval()
    rng = np.random.default_rng(0)
    image = torch.from_numpy(rng.integers(0, 256, (2, 96, 128, 3), dtype=np.uint8))
    style = torch.from_numpy(rng.random((2, 3)).astype(np.float32) + 0.1)
    with torch.no_grad():
        assert torch.equal(old(image, style), new(image, style))
    a = ort.InferenceSession(str(_export(old, tmp_path / "old.onnx", 3)), providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(str(_export(new, tmp_path / "new.onnx", 3)), providers=["CPUExecutionProvider"])
    for i in range(2):  # the graphs were traced for one frame at a time
        feeds = {"image": image.numpy()[i : i + 1], "style": style.numpy()[i : i + 1]}
        assert np.array_equal(a.run(None, feeds)[0], b.run(None, feeds)[0])


def test_uint8_qdq_and_computed_axes_are_caught() -> None:
    """The rules can fail: a uint8 Q/DQ pair (what NNCF makes after a ReLU) and a Reduce with computed axes."""
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])
    inits = [
        helper.make_tensor("s", TensorProto.FLOAT, [], [0.1]),
        helper.make_tensor("zp", TensorProto.UINT8, [], [0]),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["d"]),
        helper.make_node("Shape", ["d"], ["shape"]),
        helper.make_node("Slice", ["shape", "one", "two"], ["axes"]),
        helper.make_node("ReduceSum", ["d", "axes"], ["y"], keepdims=1),
    ]
    inits += [
        helper.make_tensor("one", TensorProto.INT64, [1], [1]),
        helper.make_tensor("two", TensorProto.INT64, [1], [2]),
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "g", [x], [y], inits), opset_imports=[helper.make_opsetid("", 18)]
    )
    problems = tensorrt_problems(model)
    assert any("QuantizeLinear" in p and "quantizes to uint8" in p for p in problems), problems
    assert any("ReduceSum" in p and "axes from a computed tensor" in p for p in problems), problems
    from engines.tensorrt_rules import tensorrt_form

    fixed = [p for p in tensorrt_problems(tensorrt_form(model)) if "uint8" in p]
    assert fixed == []


def test_the_fp16_export_passes_its_check_and_the_check_can_fail(tiny_v2_checkpoint: Path, tmp_path: Path) -> None:
    out = export_onnx(tiny_v2_checkpoint, tmp_path / "m.fp16.onnx", precision="fp16")
    model = onnx.load(str(out))
    assert check_file(out) == []
    weights = [t for t in model.graph.initializer if t.dims and len(t.dims) == 4]
    assert weights and all(t.data_type == onnx.TensorProto.FLOAT16 for t in weights)  # the convs are float16
    io = {v.name: v.type.tensor_type.elem_type for v in [*model.graph.input, *model.graph.output]}
    assert io == {"image": onnx.TensorProto.UINT8, "style": onnx.TensorProto.FLOAT,
                  "stroke": onnx.TensorProto.FLOAT, "stylized": onnx.TensorProto.UINT8}  # fmt: skip
    other, _ = load_generator(tiny_v2_checkpoint)
    with torch.no_grad():
        for p in other.style_parameters():
            p.add_(0.5)
    with pytest.raises(AssertionError, match="below the fp16 floor"):
        verify_fp16(out, other)


def test_versions_profiles_and_sources() -> None:
    assert version_unsupported("10.7.0") is None and version_unsupported("11.4.1") is None
    assert "not supported" in (version_unsupported("9.3.0") or "")
    assert "not supported" in (version_unsupported("12.0.1") or "")
    assert plan_refusal("10.7.0", "10.13.2") is None
    assert "major version that built it" in (plan_refusal("10.7.0", "11.4.1") or "")
    profiles = [((240, 320), (480, 640), 4), ((720, 1280), (1080, 1920), 2)]
    assert nearest_profile(480, 640, profiles) == 0
    assert nearest_profile(1080, 1920, profiles) == 1
    assert nearest_profile(600, 800, profiles) == 0  # between the ranges: 0.8x into the first, 1.2x into the second
    assert nearest_profile(700, 1240, profiles) == 1  # just under the second: it, not the first
    m = Path("/m/default.onnx")
    assert precision_source(m, "fp32") == m
    assert precision_source(m, "fp16") == Path("/m/default.fp16.onnx")
    assert precision_source(Path("/m/default.fp16.onnx"), "int8") == Path("/m/default.int8.onnx")


def test_no_api_that_tensorrt_11_removed_and_the_range_agrees() -> None:
    removed = re.compile(r"BuilderFlag\.(FP16|INT8|BF16|FP8)|int8_calibrator|IInt8|device_memory_size\b(?!_)")
    for path in (ROOT / "engines").rglob("*.py"):
        for i, line in enumerate(path.read_text().splitlines(), 1):
            assert not removed.search(line), f"{path.relative_to(ROOT)}:{i}: {line.strip()}"
    gpu = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["gpu"]
    spec = next(d for d in gpu if d.startswith("tensorrt"))
    assert spec == f"tensorrt>={TENSORRT_MAJORS[0]},<{TENSORRT_MAJORS[-1] + 1}"
