"""The v2 palette: a per-style colour map on the picture's logits, and ``python -m trainer fit-palette``."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from PIL import Image  # noqa: E402

from trainer.__main__ import main as trainer_main  # noqa: E402
from trainer.checkpoint import load_checkpoint, load_generator, save_checkpoint  # noqa: E402
from trainer.models import GeneratorConfig, GeneratorV2, build_generator, one_hot  # noqa: E402
from trainer.palette import RoundingNoise  # noqa: E402
from trainer.train import extend_generator  # noqa: E402


def _v2(palette: bool, num_styles: int = 2) -> GeneratorV2:
    torch.manual_seed(0)
    g = build_generator(
        GeneratorConfig.v2(num_styles, width=8, half_width=4, deep_width=8, num_blocks=1, palette=palette)
    )
    assert isinstance(g, GeneratorV2)
    with torch.no_grad():  # rows that differ per style and anchor, as after training (not the palette's)
        for p in g.style_parameters()[: len(g.norms) * 2]:
            p.add_(0.5 * torch.randn_like(p))
    return g.eval()


def test_an_identity_palette_is_the_network_and_a_mix_mixes_the_maps() -> None:
    plain, coloured = _v2(False), _v2(True)
    coloured.load_state_dict({**plain.state_dict(), "palette.rows": coloured.palette.rows.detach()})  # type: ignore[union-attr]
    x = torch.rand(2, 3, 32, 40)
    w = torch.tensor([[1.0, 0.0], [0.3, 0.7]])
    with torch.no_grad():
        assert torch.allclose(plain(x, w), coloured(x, w), atol=1e-6)
        rows = coloured.palette.rows  # type: ignore[union-attr]
        rows[0, 0, 3] = 2.0  # style 0: red logit + 2
        rows[0, 2] = torch.tensor([0.0, 1.0, 0.0, 0.0])  # style 0: blue takes green's logit
        y0 = torch.logit(plain(x, w).double())
        y1 = torch.logit(coloured(x, w).double())
    assert torch.allclose(y1[:, 0] - y0[:, 0], torch.tensor([2.0, 0.6]).double()[:, None, None], atol=1e-3)
    assert torch.allclose(y1[:, 1], y0[:, 1], atol=1e-4)  # green untouched
    assert torch.allclose(y1[0, 2], y0[0, 1], atol=1e-3)  # style 0 alone: blue is green
    assert torch.allclose(y1[1, 2], 0.3 * y0[1, 1] + 0.7 * y0[1, 2], atol=1e-3)  # the mix averages the maps


def test_a_new_style_starts_from_the_identity_map_and_old_maps_are_kept() -> None:
    g = _v2(True)
    with torch.no_grad():
        g.palette.rows.add_(0.3 * torch.randn_like(g.palette.rows))  # type: ignore[union-attr]
    grown = extend_generator(g)
    assert isinstance(grown, GeneratorV2) and grown.palette is not None and g.palette is not None
    assert torch.equal(grown.palette.rows[:2], g.palette.rows)
    assert torch.equal(grown.palette.rows[2], torch.cat([torch.eye(3), torch.zeros(3, 1)], 1))
    assert any(p is grown.palette.rows for p in grown.style_parameters())  # add-style learns it with the rest


def test_the_palette_is_a_v2_setting() -> None:
    with pytest.raises(ValueError, match="v2 settings"):
        GeneratorConfig(4, palette=True)


def _pictures(folder: Path, names: list[str], seed: int, stripes: bool) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i, name in enumerate(names):
        yy, xx = np.mgrid[0:96, 0:120] / 120
        if stripes:  # a 'painting': two strong colours in stripes
            c = rng.uniform(0, 1, (2, 3))
            img = np.where(((xx * 120) // (5 + i)) % 2 == 0, 1.0, 0.0)[..., None] * (c[0] - c[1]) + c[1]
        else:  # a 'photo': gradients and a blob
            img = np.stack([xx, yy, 1 - xx * yy], -1) * rng.uniform(0.5, 1.0, 3)
            img[((yy - 0.4) ** 2 + (xx - 0.5) ** 2) < 0.04] = rng.uniform(0, 1, 3)
        Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(folder / name)


def _with_palette(base: Path, path: Path) -> Path:
    """A copy of ``base`` (v2) with random, far from identity, palette rows."""
    ckpt = load_checkpoint(base)
    g = build_generator(dataclasses.replace(ckpt.generator_config, palette=True))
    assert isinstance(g, GeneratorV2) and g.palette is not None
    torch.manual_seed(1)
    with torch.no_grad():
        rows = g.palette.rows + 0.3 * torch.randn_like(g.palette.rows)
    return save_checkpoint(
        path,
        dataclasses.replace(ckpt, generator_config=g.config, generator_state={**ckpt.generator_state,
                                                                                "palette.rows": rows}),
    )  # fmt: skip


@pytest.fixture
def fit_setup(tiny_v2_checkpoint: Path, tmp_path: Path) -> tuple[Path, Path, Path]:
    paintings, photos = tmp_path / "paintings" / "deep", tmp_path / "photos"
    _pictures(paintings, [s.source for s in load_checkpoint(tiny_v2_checkpoint).styles], 1, stripes=True)
    _pictures(photos, [f"p{i}.png" for i in range(6)], 2, stripes=False)
    return tiny_v2_checkpoint, paintings.parent, photos


def test_fit_palette_moves_one_styles_colours_towards_its_painting(
    fit_setup: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    base, paintings, photos = fit_setup
    out = tmp_path / "fitted.safetensors"
    args = [str(base), "--paintings", str(paintings), "--content", str(photos), "--out", str(out)]
    assert trainer_main(["fit-palette", *args, "--photos", "2", "--size", "64", "--content-rise", "0.3", "--pan-rise",
                         "0.3", "--pan-at", "96x64:0.2", "--iterations", "8", "--style", "glacier"]) == 0  # fmt: skip
    g, ckpt = load_generator(out)
    assert isinstance(g, GeneratorV2) and g.config.palette and g.palette is not None
    identity = torch.cat([torch.eye(3), torch.zeros(3, 1)], 1)
    assert torch.equal(g.palette.rows[0], identity) and torch.equal(g.palette.rows[2], identity)  # not asked for
    assert not torch.allclose(g.palette.rows[1], identity, atol=1e-3)
    (record,) = ckpt.train["fit_palette"]
    fit = record["fits"]["glacier"]
    assert set(record["fits"]) == {"glacier"}
    before, after = fit["before"], fit["after"]
    assert after["style"] < 0.95 * before["style"]
    # content and steadiness rose no further than allowed (the penalty lets them past by a hair), at both sizes
    assert after["content"] <= 1.31 * before["content"] and after["pan"] <= 1.31 * before["pan"]
    assert after["pan@96x64"] <= 1.21 * before["pan@96x64"]
    assert record["pan_at"] == [{"size": [96, 64], "rise": 0.2}]
    # the network itself is the base's, tensor for tensor
    base_state = load_checkpoint(base).generator_state
    assert all(torch.equal(v, ckpt.generator_state[k]) for k, v in base_state.items())
    # ... and the model serves: other styles' pictures are the base's
    g0, _ = load_generator(base)
    x = torch.rand(1, 3, 32, 40)
    with torch.no_grad():
        assert torch.allclose(g(x, one_hot([0], 3)), g0(x, one_hot([0], 3)), atol=1e-6)
        assert not torch.allclose(g(x, one_hot([1], 3)), g0(x, one_hot([1], 3)), atol=1e-3)


def test_fit_palette_says_what_is_wrong(
    fit_setup: tuple[Path, Path, Path], tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base, paintings, photos = fit_setup
    common = ["--paintings", str(paintings), "--content", str(photos), "--out", str(tmp_path / "x.safetensors")]
    assert trainer_main(["fit-palette", str(tiny_checkpoint), *common]) == 2
    assert "needs a v2 model" in capsys.readouterr().err
    assert trainer_main(["fit-palette", str(base), *common, "--style", "lava"]) == 2
    assert "no style named 'lava'" in capsys.readouterr().err
    assert trainer_main(["fit-palette", str(base), *common[2:], "--paintings", str(photos)]) == 2
    assert "no painting named ember.png" in capsys.readouterr().err
    for bad in ("640x480", "630x480:0.01", "640x480:-1", "640x480:x"):
        with pytest.raises(SystemExit):
            trainer_main(["fit-palette", str(base), *common, "--pan-at", bad])
        assert "expected WIDTHxHEIGHT:RISE" in capsys.readouterr().err
    assert trainer_main(["fit-palette", str(base), *common, "--pan-at", "96x64:0.1", "--pan-at", "96x64:0.2"]) == 2
    assert "names a frame size twice" in capsys.readouterr().err
    assert not (tmp_path / "x.safetensors").exists()


def test_a_palette_model_exports_and_matches_torch(tiny_v2_checkpoint: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxscript")
    onnx = pytest.importorskip("onnx")
    from engines.export import export_onnx, verify_onnx
    from engines.tensorrt_rules import tensorrt_problems

    path = _with_palette(tiny_v2_checkpoint, tmp_path / "pal.safetensors")
    onnx_path = export_onnx(path, tmp_path / "pal.onnx")
    g, _ = load_generator(path)
    verify_onnx(onnx_path, g, sizes=((64, 96), (120, 160)))
    assert tensorrt_problems(onnx.load(str(onnx_path))) == []


def test_bake_palette_moves_the_maps_into_the_rows_and_serves_without_one(
    fit_setup: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    base, _, photos = fit_setup
    teacher_path = _with_palette(base, tmp_path / "pal.safetensors")
    out = tmp_path / "baked.safetensors"
    args = ["--content", str(photos), "--steps", "150", "--batch", "2", "--crop", "64", "--lr", "1e-2"]
    assert trainer_main(["bake-palette", str(teacher_path), "--out", str(out), *args, "--noise", "0.5"]) == 0
    baked, ckpt = load_generator(out)
    teacher, _ = load_generator(teacher_path)
    plain, _ = load_generator(base)
    assert isinstance(baked, GeneratorV2) and baked.palette is None and not baked.config.palette
    assert dataclasses.replace(teacher.config, palette=False) == baked.config
    # only the per-style rows moved: every shared weight is the base's, tensor for tensor
    rows = {n for n, p in baked.named_parameters() if any(p is r for r in baked.style_parameters())}
    base_state = load_checkpoint(base).generator_state
    assert rows and all(torch.equal(v, ckpt.generator_state[k]) for k, v in base_state.items() if k not in rows)
    assert any(not torch.equal(base_state[k], ckpt.generator_state[k]) for k in rows)
    # the baked network paints closer to the palette model than the network it started from,
    # on a picture it was not trained on, at a stroke and style mix of its own
    x = torch.rand(1, 3, 64, 80)
    w, stroke = torch.tensor([[0.2, 0.8, 0.0]]), torch.tensor([1.3])
    with torch.no_grad():
        want = teacher(x, w, stroke)
        before = (plain(x, w, stroke) - want).abs().mean()
        after = (baked(x, w, stroke) - want).abs().mean()
    assert after < 0.85 * before  # 0.76 seen (with and without the noise): the rows absorb a random map in part
    (record,) = ckpt.train["bake_palette"]
    assert record["steps"] == 150 and record["noise"] == 0.5 and record["l1_last"] < record["l1_first"]


def _gram_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    from trainer.losses import STYLE_LAYERS, relative_style_error
    from trainer.vgg import VGG19Features, gram

    vgg = VGG19Features()
    fa, fb = vgg(a, STYLE_LAYERS), vgg(b, STYLE_LAYERS)
    return float(relative_style_error(fa, {k: gram(v) for k, v in fb.items()}).mean())


def test_a_second_bake_goes_on_from_the_first_and_the_gram_term_matches_the_palette_models_statistics(
    fit_setup: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    base, _, photos = fit_setup
    teacher_path = _with_palette(base, tmp_path / "pal.safetensors")
    first, still, plain_, gram_ = (tmp_path / f"{n}.safetensors" for n in ("first", "still", "plain", "gram"))
    args = [str(teacher_path), "--content", str(photos), "--batch", "2", "--crop", "64"]
    assert trainer_main(["bake-palette", *args, "--out", str(first), "--steps", "60", "--lr", "1e-2"]) == 0
    # --start loads the first bake's rows: at a learning rate of nothing they come out as they went in
    assert trainer_main(["bake-palette", *args, "--out", str(still), "--steps", "1", "--lr", "1e-12",
                         "--start", str(first)]) == 0  # fmt: skip
    a, b = load_checkpoint(first).generator_state, load_checkpoint(still).generator_state
    assert all(torch.allclose(v, b[k], atol=1e-6) for k, v in a.items())
    assert not all(torch.allclose(v, load_checkpoint(base).generator_state[k], atol=1e-3) for k, v in a.items())
    # from there the Gram term moves the picture's statistics towards the palette model's, more than the
    # same steps without it
    more = [*args, "--steps", "40", "--lr", "1e-2", "--start", str(first)]
    assert trainer_main(["bake-palette", *more, "--out", str(plain_)]) == 0
    assert trainer_main(["bake-palette", *more, "--out", str(gram_), "--gram", "20"]) == 0
    teacher, _ = load_generator(teacher_path)
    (baked, _), (grammed, ckpt) = load_generator(plain_), load_generator(gram_)
    x = torch.stack([torch.from_numpy(np.array(Image.open(photos / f"p{i}.png"))).permute(2, 0, 1) for i in (1, 4)])
    x, w = x[..., :88, :112].float() / 255.0, torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]])
    with torch.no_grad():
        want = teacher(x, w)
        d_l1, d_gram = _gram_distance(baked(x, w), want), _gram_distance(grammed(x, w), want)
    assert d_gram < 0.8 * d_l1, (d_gram, d_l1)
    first_pass, record = ckpt.train["bake_palette"]  # the pass it started from is recorded before its own
    assert first_pass["steps"] == 60 and first_pass["gram"] == 0 and not first_pass["start"]
    assert record["gram"] == 20 and record["start"] == str(first) and record["gram_last"] < record["gram_first"]


def test_bake_palette_says_what_is_wrong(
    fit_setup: tuple[Path, Path, Path], tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base, _, photos = fit_setup
    common = ["--content", str(photos), "--out", str(tmp_path / "x.safetensors")]
    for model in (tiny_checkpoint, base):  # v1; v2 without a palette
        assert trainer_main(["bake-palette", str(model), *common]) == 2
        assert "needs a v2 model with a palette" in capsys.readouterr().err
    teacher = _with_palette(base, tmp_path / "pal.safetensors")
    assert trainer_main(["bake-palette", str(teacher), *common, "--crop", "60"]) == 2
    assert "--crop must be a multiple of 8" in capsys.readouterr().err
    assert trainer_main(["bake-palette", str(teacher), *common, "--noise", "-1"]) == 2
    assert "--noise and --gram must be >= 0" in capsys.readouterr().err
    assert trainer_main(["bake-palette", str(teacher), *common, "--gram", "-1"]) == 2
    assert "--noise and --gram must be >= 0" in capsys.readouterr().err
    # --start: a model whose shared weights are not the palette model's, or another network
    other = load_checkpoint(base)
    state = {k: v + 0.01 if k == "head.weight" else v for k, v in other.generator_state.items()}
    moved = save_checkpoint(tmp_path / "moved.safetensors", dataclasses.replace(other, generator_state=state))
    assert trainer_main(["bake-palette", str(teacher), *common, "--start", str(moved)]) == 2
    assert "its shared weights are not the palette model's" in capsys.readouterr().err
    assert trainer_main(["bake-palette", str(teacher), *common, "--start", str(tiny_checkpoint)]) == 2
    assert "not a bake of this palette model" in capsys.readouterr().err
    assert trainer_main(["bake-palette", str(teacher), "--content", str(tmp_path / "none"), *common[2:]]) == 2
    assert not (tmp_path / "x.safetensors").exists()


def test_rounding_noise_is_one_int8_step_of_each_input_and_goes_when_removed() -> None:
    conv = torch.nn.Conv2d(1, 1, 1, bias=False)
    blur = torch.nn.Conv2d(2, 2, 3, groups=2, bias=False)  # grouped: INT8 builds leave it in float
    with torch.no_grad():
        conv.weight.fill_(1.0)
    net = torch.nn.Sequential(conv, blur)
    noise = RoundingNoise(net, 1.0)
    assert len(noise.handles) == 1
    for x, levels in ((torch.rand(1, 1, 64, 64) * 3.0, 255.0), (torch.randn(1, 1, 64, 64), 127.0)):
        with torch.no_grad():
            moved = conv(x) - x
        step = float(x.abs().max()) / levels
        assert 0 < float(moved.abs().max()) <= step / 2 + 1e-6
        assert float(moved.abs().max()) > step / 4  # spread over the whole step, as rounding errors are
    noise.remove()
    with torch.no_grad():
        assert torch.equal(conv(x), x)
    # its own generator: the same seed draws the same noise whatever else draws from torch's, another seed not
    a, b, c = (RoundingNoise(torch.nn.Conv2d(1, 1, 1), 1.0, seed=s) for s in (7, 7, 8))
    first = a.hook(conv, (x,))[0]
    torch.rand(5)
    assert torch.equal(b.hook(conv, (x,))[0], first) and not torch.equal(c.hook(conv, (x,))[0], first)
