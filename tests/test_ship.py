"""engines.ship: a trained checkpoint becomes a model folder the server can serve."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from PIL import Image  # noqa: E402

from engines.runtime import load_backend  # noqa: E402
from engines.runtime.model import file_sha256, read_model_info  # noqa: E402
from engines.ship import ship  # noqa: E402
from trainer.checkpoint import load_checkpoint  # noqa: E402


def _paintings(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for i, name in enumerate(["ember", "glacier", "moss"]):
        rgb = np.zeros((90, 120, 3), np.uint8)
        rgb[..., i] = 200
        Image.fromarray(rgb).save(folder / f"{name}.png")
    return folder


def test_ship_writes_weights_onnx_and_thumbnails(tmp_path: Path, tiny_checkpoint: Path) -> None:
    # The paintings sit one folder below the one given: found by file name, recursively.
    _paintings(tmp_path / "paintings" / "nested")
    out = tmp_path / "model"
    written = ship(tiny_checkpoint, out, "default", paintings=[tmp_path / "paintings"], thumbnails_from=())
    assert {p.name for p in written} >= {"default.safetensors", "default.onnx", "0.jpg", "1.jpg", "2.jpg"}
    ckpt = load_checkpoint(out / "default.safetensors")
    assert ckpt.style_names == ["ember", "glacier", "moss"]
    assert ckpt.discriminator_state is None and not ckpt.optimizers
    # Thumbnail i is painting i (the glacier painting is the green one).
    with Image.open(out / "thumbnails" / "1.jpg") as im:
        assert im.size == (160, 160)
        r, g, b = np.asarray(im).reshape(-1, 3).mean(0)
        assert g > 150 and r < 50 and b < 50
    backend = load_backend(out / "default.onnx", "onnxruntime")
    assert backend.styles == ["ember", "glacier", "moss"]
    # The ONNX is the slim checkpoint's export (its recorded sha256), and the slim file keeps the styles' sources.
    assert read_model_info(out / "default.onnx").checkpoint_sha256 == file_sha256(out / "default.safetensors")
    assert [s.source for s in ckpt.styles] == ["ember.png", "glacier.png", "moss.png"]


def test_ship_reuses_a_shipped_models_thumbnails(tmp_path: Path, tiny_checkpoint: Path) -> None:
    _paintings(tmp_path / "paintings")
    first = tmp_path / "first"
    ship(tiny_checkpoint, first, "default", paintings=[tmp_path / "paintings"], thumbnails_from=())
    # Without the paintings (a user without the training data), the styles' names find the
    # thumbnails of an already shipped model.
    second = tmp_path / "second"
    ship(tiny_checkpoint, second, "default", paintings=[], thumbnails_from=[first])
    for i in range(3):
        assert (second / "thumbnails" / f"{i}.jpg").read_bytes() == (first / "thumbnails" / f"{i}.jpg").read_bytes()


def test_ship_says_which_painting_is_missing(tmp_path: Path, tiny_checkpoint: Path) -> None:
    with pytest.raises(FileNotFoundError, match="painting 'ember.png' of style 'ember' not found.*--paintings"):
        ship(tiny_checkpoint, tmp_path / "out", "default", paintings=[], thumbnails_from=())
