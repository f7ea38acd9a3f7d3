"""The models shipped in engines/models (the default, v1) and engines/models/v2: complete,
consistent and credited."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

MODELS = Path(__file__).resolve().parents[1] / "engines" / "models"
CKPT, ONNX = "default.safetensors", "default.onnx"  # in each shipped model's folder
V2 = MODELS / "v2"  # generator v2, 12 styles (the default's 8 first), served with --model
SHIPPED = pytest.mark.parametrize("folder", [MODELS, V2], ids=["default", "v2"])


@SHIPPED
def test_model_files_exist(folder: Path) -> None:
    assert (folder / CKPT).is_file(), f"the shipped checkpoint is missing: {folder / CKPT}"
    assert (folder / ONNX).is_file(), f"the shipped ONNX is missing: {folder / ONNX}"


@SHIPPED
def test_checkpoint_describes_itself_and_its_training(folder: Path) -> None:
    pytest.importorskip("torch")
    from trainer.checkpoint import load_generator

    g, ckpt = load_generator(folder / CKPT)
    assert len(ckpt.styles) >= 8
    assert len(set(ckpt.style_names)) == len(ckpt.style_names)
    # Anyone can retrain it: the command, the data and the step count are recorded.
    assert "trainer" in ckpt.train["command"] and ckpt.train["content_dir"]
    assert len(ckpt.train["data"]["content_files"]) >= 100
    assert len(ckpt.train["styles"]) == len(ckpt.styles)
    assert ckpt.step >= 500
    # Serving files carry no discriminator or optimiser state.
    assert ckpt.discriminator_state is None and not ckpt.optimizers


@SHIPPED
def test_onnx_matches_the_checkpoint(folder: Path) -> None:
    pytest.importorskip("torch")
    from engines.export import read_onnx_info, verify_onnx
    from engines.runtime.model import file_sha256
    from trainer.checkpoint import load_generator

    g, ckpt = load_generator(folder / CKPT)
    info = read_onnx_info(folder / ONNX)
    assert info.styles == ckpt.style_names
    assert info.checkpoint_sha256 == file_sha256(folder / CKPT)
    verify_onnx(folder / ONNX, g, sizes=((64, 96), (120, 160)))


@SHIPPED
def test_styles_really_differ_on_a_photo_like_input(folder: Path) -> None:
    from engines.runtime import load_backend

    backend = load_backend(folder / ONNX, "onnxruntime")
    yy, xx = np.mgrid[0:96, 0:128]
    frame = np.stack([xx * 2, yy * 2, (xx + yy)], -1).clip(0, 255).astype(np.uint8)
    eye = np.eye(len(backend.styles), dtype=np.float32)
    outs = [backend.stylize(frame, eye[i]) for i in range(len(backend.styles))]
    for i in range(len(outs)):
        for j in range(i + 1, len(outs)):
            diff = np.abs(outs[i].astype(np.int16) - outs[j].astype(np.int16)).mean()
            assert diff > 3.0, f"styles {i} and {j} render almost alike (mean diff {diff:.2f})"


def credit_rows(text: str) -> dict[int, list[str]]:
    """The credits table: style index -> its cells (``| # | style name | painting | painter | file | from |``)."""
    rows: dict[int, list[str]] = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells and cells[0].isdigit():
            rows[int(cells[0])] = cells
    return rows


@SHIPPED
def test_every_style_has_a_thumbnail_and_its_own_credit_row(folder: Path) -> None:
    from PIL import Image

    from engines.runtime.model import read_model_info

    info = read_model_info(folder / ONNX)
    rows = credit_rows((folder / "CREDITS.md").read_text())
    # One row per style, each naming that style and its painting's file: a credit in the
    # wrong row, a missing row or a row for a style the model does not have all fail.
    assert sorted(rows) == list(range(len(info.styles))), sorted(rows)
    for i, (name, source) in enumerate(zip(info.styles, info.sources, strict=True)):
        assert rows[i][1] == name, f"credits row {i} names {rows[i][1]!r}, the model's style {i} is {name!r}"
        assert rows[i][4] == f"`{source}`", f"credits row {i} names {rows[i][4]}, style {name!r} came from {source}"
        thumb = folder / "thumbnails" / f"{i}.jpg"
        assert thumb.is_file(), f"no thumbnail for style {i} ({name})"
        with Image.open(thumb) as im:
            assert im.size[0] >= 64 and im.size[1] >= 64


@SHIPPED
def test_the_shipped_int8_model_is_the_float_models_and_passed_its_gate(folder: Path) -> None:
    import json

    from engines.runtime.model import read_model_info, read_onnx_metadata

    int8 = folder / "default.int8.onnx"
    if not int8.is_file():
        pytest.skip("no INT8 model is shipped")
    q, f = read_model_info(int8), read_model_info(folder / ONNX)
    assert q.quantized == "int8" and not f.quantized
    assert (q.styles, q.sources, q.checkpoint_sha256) == (f.styles, f.sources, f.checkpoint_sha256)
    gate = json.loads(read_onnx_metadata(int8)["stylecast.quantization"])["gate"]
    assert gate["psnr_min_db"] >= 30 and gate["style_int8"] <= 1.05 * gate["style_fp32"]
    assert gate["content_int8"] <= 1.05 * gate["content_fp32"]


def test_the_shipped_content_photos_are_few_small_and_each_credited() -> None:
    import json

    from common.paths import CONTENT_DIR

    photos = sorted(p for p in CONTENT_DIR.iterdir() if p.suffix == ".jpg")
    credits = {c["file"]: c for c in json.loads((CONTENT_DIR / "credits.json").read_text())}
    table = (CONTENT_DIR / "CREDITS.md").read_text()
    assert 16 <= len(photos) <= 64 and sum(p.stat().st_size for p in photos) < 5 * 2**20
    assert set(credits) == {p.name for p in photos}  # every photo credited, no credit without its photo
    free = ("public domain", "cc0", "cc-by", "cc by")
    for name, c in credits.items():
        assert c["author"] and c["source"].startswith("http") and c["licence"].lower().startswith(free), c
        assert f"`{name}` | {c['author']} | {c['licence']} |" in table


def test_a_step_of_auto_resolution_keeps_the_strokes_size_relative_to_the_frame() -> None:
    """Measured on the picture, not on the plan: the shipped model renders the shipped photos at 640x480
    and at 320x240 (auto resolution's step), and the stroke frequency (cycles per frame width) of the
    two must agree (``bench.stroke_step``). Without the stroke plan the network would draw its
    640x480 brush on the 320x240 frame; that is asked for too, to show the measurement sees it.
    The shipped v2 carries a stroke floor fitted on training photos (``--fit-floor``); the same model
    planned without it is measured too, and misses: the floor is what holds the step. The grey
    contrast is compared too: the frequency alone passed a picture that went hazy at 320x240."""
    from PIL import Image

    from bench.stroke_step import LARGE, step_ratios
    from common.paths import CONTENT_DIR
    from engines.runtime import load_backend
    from trainer.data import cover_crop

    backend = load_backend(V2 / ONNX, "onnxruntime-cpu", num_threads=2, precision="fp32")
    photos = []
    for path in sorted(CONTENT_DIR.glob("*.jpg"))[::3]:  # 11 of the 32: one photo swings the ratio by 0.3
        with Image.open(path) as im:
            photos.append(cover_crop(im.convert("RGB"), LARGE))
    try:
        ratios = step_ratios(backend, photos)
        assert backend.stroke_scale.floor > 0
        backend.stroke_scale = dataclasses.replace(backend.stroke_scale, floor=0.0)  # the plan before the floor
        unfloored = step_ratios(backend, photos, strokes=(1.0,)).medians()
    finally:
        backend.close()
    medians = ratios.medians()
    assert 0.9 <= medians["kept@1"] <= 1.1 and 0.9 <= medians["kept@1.6"] <= 1.1, ratios
    assert medians["jumped@1"] <= 0.85, ratios
    # and the marks keep their strength: finer marks that came out hazy would pass the frequency
    assert medians["contrast@1"] >= 0.9, ratios  # 0.97 (EPYC); a bake that painted finer marks hazily: 0.83
    assert unfloored["kept@1"] < 0.9, unfloored  # 0.893 on a Xeon (unit 0.9; 0.886 with unit 1)
