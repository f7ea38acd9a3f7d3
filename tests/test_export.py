"""The ONNX export: contract (names, dtypes, dynamic dims, metadata), parity, TensorRT ops."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from engines.export import compare_uint8, export_onnx, read_onnx_info, verify_onnx  # noqa: E402
from engines.runtime.model import file_sha256, read_model_info  # noqa: E402
from engines.wrap import UInt8Generator  # noqa: E402
from trainer.checkpoint import load_generator  # noqa: E402

OPS_FILE = Path(__file__).resolve().parents[1] / "engines" / "tensorrt_onnx_ops.txt"


def tensorrt_ops() -> tuple[set[str], int, int]:
    ops, lo, hi = set(), 0, 0
    for line in OPS_FILE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("opset_min"):
            lo = int(line.split()[1])
        elif line.startswith("opset_max"):
            hi = int(line.split()[1])
        else:
            ops.add(line)
    return ops, lo, hi


def test_contract_inputs_outputs_and_metadata(tiny_onnx: Path, tiny_checkpoint: Path) -> None:
    model = onnx.load(str(tiny_onnx))
    onnx.checker.check_model(model, full_check=True)
    ins = {i.name: i.type.tensor_type for i in model.graph.input}
    outs = {o.name: o.type.tensor_type for o in model.graph.output}
    assert list(ins) == ["image", "style"] and list(outs) == ["stylized"]
    assert ins["image"].elem_type == onnx.TensorProto.UINT8
    assert ins["style"].elem_type == onnx.TensorProto.FLOAT
    assert outs["stylized"].elem_type == onnx.TensorProto.UINT8
    dims = [d.dim_param or d.dim_value for d in ins["image"].shape.dim]
    assert dims == ["batch", "height", "width", 3]
    assert [d.dim_param or d.dim_value for d in ins["style"].shape.dim] == ["batch", 3]
    # Self-contained: no external data side file, no tensor stored outside.
    assert not list(tiny_onnx.parent.glob("*.onnx.data"))
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in model.graph.initializer)

    info = read_onnx_info(tiny_onnx)
    assert info.styles == ["ember", "glacier", "moss"]
    assert info.sources == ["ember.png", "glacier.png", "moss.png"]
    assert info.generator["num_styles"] == 3 and info.stride == 4
    assert info.checkpoint_sha256 == file_sha256(tiny_checkpoint)
    # The torch-free reader sees the same metadata.
    light = read_model_info(tiny_onnx)
    assert light == info  # every field, the same dataclass
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["stylecast.generator"])["width"] == 16
    assert meta["stylecast.format_version"] == "1"


@pytest.mark.parametrize("hw", [(64, 96), (120, 200)])
def test_onnxruntime_matches_torch(tiny_onnx: Path, tiny_checkpoint: Path, hw: tuple[int, int]) -> None:
    """ONNX Runtime output within 1 uint8 level of torch (<= 1% of values off), several mixes, batch 3."""
    generator, _ = load_generator(tiny_checkpoint)
    ref = UInt8Generator(generator).eval()
    sess = ort.InferenceSession(str(tiny_onnx), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (3, *hw, 3), dtype=np.uint8)
    style = np.array([[1, 0, 0], [0.2, 0.3, 0.5], [7.0, 0.0, 3.0]], np.float32)  # one-hot, mix, unnormalised
    (got,) = sess.run(["stylized"], {"image": image, "style": style})
    with torch.no_grad():
        want = ref(torch.from_numpy(image), torch.from_numpy(style)).numpy()
    assert got.dtype == np.uint8 and got.shape == (3, *hw, 3)
    compare_uint8(got, want, "ort vs torch")
    # Row scale does not matter (normalised in-graph), and styles really differ.
    (scaled,) = sess.run(["stylized"], {"image": image, "style": style * 10})
    compare_uint8(scaled, got, "scaled weights")
    (one, other) = sess.run(["stylized"], {"image": image[:1].repeat(2, 0), "style": np.eye(3, dtype=np.float32)[:2]})[
        0
    ]
    assert np.abs(one.astype(int) - other.astype(int)).mean() > 1.0


def test_verify_onnx_catches_a_wrong_model(tiny_onnx: Path, tiny_checkpoint: Path) -> None:
    """The export check is able to fail: a generator with other weights does not pass."""
    generator, _ = load_generator(tiny_checkpoint)
    verify_onnx(tiny_onnx, generator)  # the right one passes
    with torch.no_grad():
        for p in generator.style_parameters():
            p.add_(0.5)
    with pytest.raises(AssertionError, match="max \\|diff\\|"):
        verify_onnx(tiny_onnx, generator)


def test_only_tensorrt_supported_ops(tiny_onnx: Path) -> None:
    supported, lo, hi = tensorrt_ops()
    assert len(supported) > 100  # the list is the real table, not a hand-picked few
    model = onnx.load(str(tiny_onnx))
    opset = {o.domain: o.version for o in model.opset_import}
    assert lo <= opset[""] <= hi
    assert set(opset) <= {"", "ai.onnx"}, f"custom op domains: {opset}"
    used = {n.op_type for n in model.graph.node}
    assert not model.functions, "local functions would hide ops from this check"
    assert used - supported == set(), f"ops TensorRT's parser does not support: {sorted(used - supported)}"


def test_export_refuses_bad_checkpoint(tmp_path: Path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
    with pytest.raises(ValueError, match="not a safetensors"):
        export_onnx(bad, tmp_path / "bad.onnx")
    with pytest.raises(FileNotFoundError):
        export_onnx(tmp_path / "missing.safetensors", tmp_path / "x.onnx")


def test_a_failed_export_leaves_nothing_half_written(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check fails after the whole file was written: the temp file goes, the old model stays."""
    import engines.export

    out = tmp_path / "model.onnx"
    out.write_bytes(b"the model being served")
    seen: list[Path] = []

    def parity_fails(path: str | Path, generator: object) -> None:
        seen.append(Path(path))
        assert onnx.load(str(path)).graph.node, "the temp file holds the whole exported model"
        raise AssertionError("ONNX Runtime vs torch: max |diff| 9 levels (allowed 1)")

    monkeypatch.setattr(engines.export, "verify_onnx", parity_fails)
    with pytest.raises(AssertionError, match="max \\|diff\\| 9"):
        export_onnx(tiny_checkpoint, out)
    assert seen and seen[0].parent == tmp_path and seen[0] != out  # the check ran on a temp file beside it
    assert not seen[0].exists()  # ... which is gone
    assert out.read_bytes() == b"the model being served"  # the model in use was never touched
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_a_v2_model_with_the_up_sampling_blur_exports_and_matches_torch(
    tiny_v2_checkpoint: Path, tmp_path: Path
) -> None:
    """``trainer grow --up-blur`` (a fixed depthwise blur after each coarse pixel shuffle) exports like any
    v2 model: the same contract, torch parity at two sizes, only ops TensorRT parses, the config in
    the metadata."""
    from engines.tensorrt_rules import tensorrt_problems
    from trainer.train import grow

    blurred = grow(str(tiny_v2_checkpoint), str(tmp_path / "blur.safetensors"), up_blur=True)
    path = export_onnx(blurred, tmp_path / "blur.onnx")
    g, _ = load_generator(blurred)
    assert g.config.up_blur and read_model_info(path).generator["up_blur"] is True
    verify_onnx(path, g, sizes=((64, 96), (120, 160)))
    model = onnx.load(str(path))
    groups = [a.i for n in model.graph.node if n.op_type == "Conv" for a in n.attribute if a.name == "group"]
    assert sorted(groups)[-2:] == [8, 8]  # the two blurs: one filter per channel (width 8, half width 8)
    assert tensorrt_problems(model) == []
