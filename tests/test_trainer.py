"""Trainer: models, losses, data, checkpoints, resume, add-style, CLI. Tiny seeded configs."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from PIL import Image  # noqa: E402

from trainer.__main__ import main as trainer_main  # noqa: E402
from trainer.checkpoint import CheckpointError, load_checkpoint, load_generator  # noqa: E402
from trainer.data import ContentImages, DataError, StyleImage  # noqa: E402
from trainer.losses import resolution_step_loss, shift_pair, temporal_loss  # noqa: E402
from trainer.models import (  # noqa: E402
    Discriminator,
    DiscriminatorConfig,
    Generator,
    GeneratorConfig,
    GeneratorV2,
    build_generator,
    check_style,
    one_hot,
)
from trainer.train import (  # noqa: E402
    LR_FLOOR,
    AddStyleConfig,
    LossWeights,
    TrainConfig,
    Trainer,
    add_style,
    lr_scale,
    sample_strokes,
)

TINY = {"width": 8, "half_width": 4, "num_blocks": 1, "disc_width": 8}


def _photo(path: Path, seed: int, size: tuple[int, int] = (72, 56)) -> Path:
    """A smooth synthetic 'photo': gradients plus a few blobs, different per seed."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    img = np.stack([xx, yy, 1 - xx * yy], -1) * rng.uniform(0.5, 1.0, 3)
    for _ in range(3):
        cy, cx, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.1, 0.3)
        img[((yy - cy) ** 2 + (xx - cx) ** 2) < r * r] = rng.uniform(0, 1, 3)
    Image.fromarray((img * 255).astype(np.uint8)).save(path)
    return path


def _painting(path: Path, seed: int) -> Path:
    """A synthetic 'painting': strong coloured stripes with noise."""
    rng = np.random.default_rng(seed)
    xx = np.arange(96)[None, :, None]
    colors = rng.uniform(0, 1, (2, 3))
    stripes = np.where((xx // (4 + seed * 3)) % 2 == 0, colors[0], colors[1]) * np.ones((96, 1, 1))
    img = np.clip(stripes + rng.normal(0, 0.05, (96, 96, 3)), 0, 1)
    Image.fromarray((img * 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture
def data(tmp_path: Path) -> tuple[Path, list[Path]]:
    content = tmp_path / "photos" / "nested"
    content.mkdir(parents=True)
    for i in range(4):
        _photo(content / f"p{i}.{'png' if i % 2 else 'jpg'}", i)
    styles = [_painting(tmp_path / f"s{i}.png", i) for i in range(2)]
    return content.parent, styles


def _config(data: tuple[Path, list[Path]], out: Path, **kw: object) -> TrainConfig:
    content, styles = data
    base: dict[str, object] = dict(
        content_dir=str(content),
        styles=tuple((str(p), f"style{i}") for i, p in enumerate(styles)),
        out=str(out),
        steps=2,
        size=32,
        batch=2,
        sample_every=0,
        save_every=0,
        adversarial_start=0,
        device="cpu",
        holdout=False,  # four photos: the held-out split has its own test
        **TINY,
    )
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


# --- models -----------------------------------------------------------------


def test_generator_shapes_and_range() -> None:
    torch.manual_seed(0)
    g = Generator(GeneratorConfig(3, width=8, half_width=4, num_blocks=2)).eval()
    for h, w in [(32, 48), (60, 84)]:  # v1: multiples of 4
        with torch.no_grad():
            y = g(torch.rand(2, 3, h, w), one_hot([0, 2], 3))
        assert y.shape == (2, 3, h, w)
        assert 0.0 <= float(y.min()) and float(y.max()) <= 1.0


def test_one_hot_equals_style_and_mix_lies_between() -> None:
    torch.manual_seed(0)
    g = Generator(GeneratorConfig(3, width=8, half_width=4, num_blocks=2)).eval()
    with torch.no_grad():
        for p in g.style_parameters():
            p.add_(torch.randn_like(p))
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        a = g(x, one_hot([0], 3))
        b = g(x, one_hot([1], 3))
        # Weights are normalised: any positive scale of a one-hot is that style.
        assert torch.equal(g(x, torch.tensor([[5.0, 0.0, 0.0]])), a)
        mix = g(x, torch.tensor([[0.5, 0.5, 0.0]]))
    d_ab = (a - b).abs().mean()
    assert d_ab > 1e-3
    assert (mix - a).abs().mean() < d_ab and (mix - b).abs().mean() < d_ab
    assert not torch.equal(mix, a) and not torch.equal(mix, b)
    # The mixed normalisation rows are exactly the average of the two styles' rows.
    norm = g.stem_norm
    w = g.normalize_style(torch.tensor([1.0, 1.0, 0.0]), 1)
    assert torch.allclose(w @ norm.gamma, (norm.gamma[0] + norm.gamma[1]) / 2)


def test_bad_style_inputs_give_clear_errors() -> None:
    with pytest.raises(ValueError, match="out of range"):
        one_hot([0, 3], 3)
    with pytest.raises(ValueError, match="non-negative"):
        check_style(torch.tensor([0.5, -0.1, 0.6]), 3)
    with pytest.raises(ValueError, match="all be zero"):
        check_style(torch.zeros(3), 3)
    with pytest.raises(ValueError, match="need 3 values"):
        check_style(torch.ones(2), 3)


def test_discriminator_has_a_head_per_style() -> None:
    d = Discriminator(DiscriminatorConfig(3, width=8, num_scales=2))
    x = torch.rand(2, 3, 64, 64)
    out0 = d(x, torch.tensor([0, 0]))
    out2 = d(x, torch.tensor([2, 2]))
    assert [o.shape for o in out0] == [(2, 1, 8, 8), (2, 1, 4, 4)]
    assert not torch.equal(out0[0], out2[0])


def test_shift_pair_views_align() -> None:
    x = torch.arange(20 * 24, dtype=torch.float32).view(1, 1, 20, 24)
    for dy, dx in [(3, -2), (-5, 4), (0, 1)]:
        a, b = shift_pair(x, dy, dx)
        assert a.shape == b.shape and a.shape[-1] % 4 == 0 and a.shape[-2] % 4 == 0
        # view_a[i, j] == view_b[i+dy, j+dx] wherever both exist
        i, j = max(-dy, 0) + 1, max(-dx, 0) + 1
        assert a[0, 0, i, j] == b[0, 0, i + dy, j + dx]


# --- data ---------------------------------------------------------------------


def test_empty_folder_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        ContentImages.from_folder(tmp_path / "empty", 32)
    with pytest.raises(DataError, match="not found"):
        ContentImages.from_folder(tmp_path / "missing", 32)


def test_corrupt_and_tiny_images_are_skipped_with_a_warning(
    data: tuple[Path, list[Path]], caplog: pytest.LogCaptureFixture
) -> None:
    content, _ = data
    (content / "broken.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    _photo(content / "tiny.png", 9, size=(8, 8))
    with caplog.at_level(logging.WARNING):
        imgs = ContentImages.from_folder(content, 32)
    assert len(imgs) == 4
    assert "broken.jpg" in caplog.text and "tiny.png" in caplog.text
    crop = imgs.crop(__import__("random").Random(0))
    assert crop.shape == (3, 32, 32)


def test_only_corrupt_images_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(b"nope")
    with pytest.raises(DataError, match="none of the 1 images"):
        ContentImages.from_folder(tmp_path, 32)


def test_bad_style_image_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="style image not found"):
        StyleImage.load(tmp_path / "nope.jpg", None, 128)
    (tmp_path / "bad.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="cannot read style image"):
        StyleImage.load(tmp_path / "bad.png", None, 128)


# --- training, checkpoints, resume, add-style ---------------------------------------


def test_one_step_finite_losses_and_both_networks_change(data: tuple[Path, list[Path]], tmp_path: Path) -> None:
    tr = Trainer(_config(data, tmp_path / "m.safetensors"))
    g0 = {k: v.clone() for k, v in tr.G.state_dict().items()}
    d0 = {k: v.clone() for k, v in tr.D.state_dict().items()}
    stats = tr.train_step()
    assert set(stats) >= {"content", "style", "tv", "temporal", "adv_g", "d"}
    assert all(np.isfinite(v) for v in stats.values())
    assert any(not torch.equal(g0[k], v) for k, v in tr.G.state_dict().items())
    assert any(not torch.equal(d0[k], v) for k, v in tr.D.state_dict().items() if k.endswith("original"))


def test_train_without_gan_leaves_no_adversarial_term(data: tuple[Path, list[Path]], tmp_path: Path) -> None:
    tr = Trainer(_config(data, tmp_path / "m.safetensors", losses=LossWeights(adversarial=0.0)))
    stats = tr.train_step()
    assert "adv_g" not in stats and "d" not in stats


@pytest.mark.parametrize("arch", [1, 2])
def test_bf16_training_tracks_fp32(data: tuple[Path, list[Path]], tmp_path: Path, arch: int) -> None:
    """Same seed, same data: the bf16 autocast run's losses stay close to the float32 run's, step by step.

    v2's temporal loss compares pictures a fraction of a uint8 level apart: it tracks only because the
    generator's last layer runs in float32 (bf16 would round the picture to about one level)."""
    losses: dict[str, list[dict[str, float]]] = {}
    for precision in ("fp32", "bf16"):
        cfg = _config(data, tmp_path / f"{precision}.safetensors", steps=5, size=48, precision=precision, arch=arch)
        trainer = Trainer(cfg, on_step=lambda step, stats, p=precision: losses.setdefault(p, []).append(stats))
        assert trainer.autocast.precision == precision
        trainer.run(progress=False)
    for step, (a, b) in enumerate(zip(losses["fp32"], losses["bf16"], strict=True)):
        for key in ("content", "style", "temporal", "total"):
            assert b[key] == pytest.approx(a[key], rel=0.1), (step, key, a[key], b[key])
    assert losses["fp32"] != losses["bf16"]  # really two different arithmetics


def test_auto_precision_follows_the_cpu() -> None:
    from common.cpu import cpu_bf16_flag
    from trainer.precision import pick_autocast

    auto = pick_autocast("auto", torch.device("cpu"))
    assert auto.precision == ("bf16" if cpu_bf16_flag() else "fp32") and auto.reason.startswith("auto: ")
    with pytest.raises(ValueError, match="fp16 is for CUDA"):
        pick_autocast("fp16", torch.device("cpu"))


@pytest.mark.parametrize("arch", [1, 2])
def test_checkpoint_round_trip_identical_outputs(data: tuple[Path, list[Path]], tmp_path: Path, arch: int) -> None:
    out = tmp_path / "m.safetensors"
    tr = Trainer(_config(data, out, arch=arch))
    tr.run(progress=False)
    g, ckpt = load_generator(out)
    assert type(g) is type(tr.G) and g.config == tr.G.config and g.config.version == arch
    assert out.stat().st_mode & 0o777 == 0o644  # readable by others, like any model file
    assert ckpt.style_names == ["style0", "style1"]
    assert ckpt.step == 2 and ckpt.train["size"] == 32
    # The data list: every content file used, relative to the content folder.
    assert sorted(ckpt.train["data"]["content_files"]) == [f"nested/p{i}.{'png' if i % 2 else 'jpg'}" for i in range(4)]
    x = torch.rand(1, 3, 32, 48)
    w = torch.tensor([[0.3, 0.7]])
    tr.G.eval()
    with torch.no_grad():
        assert torch.equal(tr.G(x, w), g(x, w))
        assert torch.equal(tr.G(x, w, torch.tensor([1.6])), g(x, w, torch.tensor([1.6])))


def test_resume_continues_at_the_right_step(data: tuple[Path, list[Path]], tmp_path: Path) -> None:
    out = tmp_path / "m.safetensors"
    Trainer(_config(data, out, steps=2)).run(progress=False)
    seen: list[int] = []
    tr = Trainer(_config(data, out, steps=4, resume=True), on_step=lambda s, _: seen.append(s))
    assert tr.step == 2
    assert int(tr.opt_g.state_dict()["state"][0]["step"]) == 2  # optimiser state came back too
    tr.run(progress=False)
    assert seen == [3, 4]
    assert load_checkpoint(out).step == 4


def test_a_resumed_run_trains_at_its_own_rates_and_decays_on_one_curve(
    data: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    out = tmp_path / "m.safetensors"
    Trainer(_config(data, out, steps=2, lr=2e-3)).run(progress=False)
    rates: list[tuple[float, float, float]] = []

    def record(step: int, _: dict[str, float]) -> None:
        (g, rows), (d,) = tr.opt_g.param_groups, tr.opt_d.param_groups
        rates.append((g["lr"], rows["lr"], d["lr"]))

    # The saved optimiser state carries lr 2e-3; this stage asks for 1e-3 and a decay from step 3 to 6.
    cfg = _config(data, out, steps=6, resume=True, lr=1e-3, lr_decay_from=3, style_lr_mult=10.0, lr_d=2e-4)
    tr = Trainer(cfg, on_step=record)
    tr.run(progress=False)
    scales = [lr_scale(s, 3, 6) for s in (2, 3, 4, 5)]  # the rates step s trained with
    assert scales[:2] == [1.0, 1.0] and scales[2] > scales[3] > LR_FLOOR
    np.testing.assert_allclose(rates, [(1e-3 * k, 1e-2 * k, 2e-4 * k) for k in scales], rtol=1e-9)
    assert lr_scale(6, 3, 6) == pytest.approx(LR_FLOOR) and lr_scale(3, None, 6) == 1.0
    with pytest.raises(ValueError, match="lr-decay-from"):
        _config(data, out, steps=6, lr_decay_from=6)


def test_resume_refuses_a_different_style_list(data: tuple[Path, list[Path]], tmp_path: Path) -> None:
    out = tmp_path / "m.safetensors"
    Trainer(_config(data, out, steps=1)).run(progress=False)
    content, styles = data
    cfg = _config((content, styles[:1]), out, resume=True)
    with pytest.raises(ValueError, match="trained on styles"):
        Trainer(cfg)


def test_corrupt_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")
    with pytest.raises(CheckpointError):
        load_generator(bad)
    with pytest.raises(FileNotFoundError):
        load_generator(tmp_path / "missing.safetensors")


@pytest.mark.parametrize("arch", [1, 2])
def test_add_style_keeps_old_styles_bit_identical(data: tuple[Path, list[Path]], tmp_path: Path, arch: int) -> None:
    base = tmp_path / "base.safetensors"
    Trainer(_config(data, base, arch=arch)).run(progress=False)
    new_painting = _painting(tmp_path / "new.png", 5)
    out = tmp_path / "plus.safetensors"
    add_style(
        AddStyleConfig(
            base=str(base), style=str(new_painting), name="newcomer", content_dir=str(data[0]),
            out=str(out), steps=3, size=32, batch=2, device="cpu",
        ),
        progress=False,
    )  # fmt: skip
    g0, c0 = load_generator(base)
    g1, c1 = load_generator(out)
    assert c1.style_names == ["style0", "style1", "newcomer"]
    x = torch.rand(1, 3, 32, 40)
    with torch.no_grad():
        for i in range(2):
            assert torch.equal(g0(x, one_hot([i], 2)), g1(x, one_hot([i], 3)))
            for stroke in (0.5, 1.3, 2.0):  # every stroke anchor's rows are kept too
                s = torch.tensor([stroke])
                assert torch.equal(g0(x, one_hot([i], 2), s), g1(x, one_hot([i], 3), s))
        # the new style learned something: it is not the starting point (mean of the old rows)
        start = g1(x, torch.tensor([[1.0, 1.0, 0.0]]))
        assert (g1(x, one_hot([2], 3)) - start).abs().mean() > 1e-4
    assert "add_style" in c1.train


def test_add_style_defaults_follow_the_model_version_and_given_values_win() -> None:
    cfg = AddStyleConfig(style="p.png", base="b", out="o")
    assert (cfg.steps, cfg.size) == (None, None)
    v1, v2 = cfg.for_model(1), cfg.for_model(2)
    assert (v1.steps, v1.size) == (180, 160) and (v2.steps, v2.size) == (160, 192)
    given = AddStyleConfig(style="p.png", base="b", out="o", steps=7, size=64).for_model(2)
    assert (given.steps, given.size) == (7, 64)


def test_cli_train_sample_info(data: tuple[Path, list[Path]], tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    content, styles = data
    out = tmp_path / "cli.safetensors"
    rc = trainer_main([
        "train", "--content", str(content), "--style", f"{styles[0]}=Stripes", "--style", str(styles[1]),
        "--out", str(out), "--steps", "2", "--size", "32", "--batch", "2", "--width", "8", "--half-width", "4",
        "--blocks", "1", "--sample-every", "1", "--device", "cpu",
    ])  # fmt: skip
    assert rc == 0 and out.is_file()
    assert (tmp_path / "cli_samples_000002.png").is_file()
    ckpt = load_checkpoint(out)
    assert ckpt.style_names == ["Stripes", "s1"]
    assert "trainer" in ckpt.train["command"]
    sheet = tmp_path / "sheet.png"
    photo = next(content.rglob("*.png"))
    assert (
        trainer_main(
            [
                "sample",
                str(out),
                "--content",
                str(photo),
                "--out",
                str(sheet),
                "--mix",
                "0:1,1:1",
                "--size",
                "64",
            ]
        )
        == 0
    )
    # input + 2 styles + mix, and (v2, the default) style 0 at the finest and the boldest stroke
    assert Image.open(sheet).size == (64 * 6, 64 + 14)
    assert trainer_main(["info", str(out)]) == 0
    assert '"Stripes"' in capsys.readouterr().out


@pytest.mark.parametrize("arch", [1, 2])
def test_grow_starts_from_the_same_picture_and_training_reaches_the_new_blocks(
    data: tuple[Path, list[Path]], tmp_path: Path, capsys: pytest.CaptureFixture, arch: int
) -> None:
    base, grown = tmp_path / "base.safetensors", tmp_path / "deep" / "m.safetensors"
    Trainer(_config(data, base, arch=arch, size=64)).run(progress=False)  # 64: a dilated block needs 8 px at 1/8
    assert trainer_main(["grow", str(base), "--blocks", "3", "--out", str(grown)]) == 0
    g0, _ = load_generator(base)
    g1, ckpt = load_generator(grown)
    assert g1.config == GeneratorConfig(**{**g0.config.to_dict(), "num_blocks": 3})
    assert ckpt.train["grow"] == [{"from": str(base), "num_blocks": [1, 3], "step": 2}]
    assert ckpt.step == 2 and list(ckpt.optimizers) == ["d"] and ckpt.discriminator_state is not None
    x, w = torch.rand(2, 3, 32, 48), torch.tensor([[0.3, 0.7], [1.0, 0.0]])
    stroke = torch.tensor([0.7, 1.6]) if arch == 2 else None
    with torch.no_grad():
        assert torch.equal(g0(x, w, stroke), g1(x, w, stroke))  # the new blocks add exactly nothing
    new_block = g1.blocks[2]
    assert new_block.n2.gamma.abs().max() == 0 and new_block.n1.gamma.abs().min() > 0  # only the exit is shut

    # Resuming needs the grown shape, and says so; with it, training opens the new blocks.
    with pytest.raises(ValueError, match="num_blocks 3 \\(this run: 1\\).*--blocks"):
        Trainer(_config(data, grown, arch=arch, size=64, resume=True, steps=4))
    Trainer(_config(data, grown, arch=arch, size=64, resume=True, steps=4, num_blocks=3)).run(progress=False)
    g2, ckpt2 = load_generator(grown)
    assert ckpt2.step == 4 and g2.blocks[2].n2.gamma.abs().max() > 0
    with torch.no_grad():
        assert not torch.equal(g0(x, w, stroke), g2(x, w, stroke))

    # Growing must add blocks.
    assert trainer_main(["grow", str(grown), "--blocks", "3", "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "more than the model's 3" in capsys.readouterr().err


def _shift_error(g: torch.nn.Module, x: torch.Tensor, w: torch.Tensor, d: int) -> float:
    """Mean |G(x)[..., d:] - G(x moved left by d)[..., :-d]|: the picture's change under a d-px pan."""
    width = x.shape[-1] - 8
    with torch.no_grad():
        a, b = g(x[..., :width], w), g(x[..., d : d + width], w)
    return float((a[..., d:] - b[..., :-d]).abs().mean())


def test_the_up_sampling_blur_makes_the_picture_follow_the_scene_and_grow_adds_it(
    data: tuple[Path, list[Path]], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    base, blurred = tmp_path / "base.safetensors", tmp_path / "blur" / "m.safetensors"
    Trainer(_config(data, base, size=64)).run(progress=False)
    assert trainer_main(["grow", str(base), "--up-blur", "--out", str(blurred)]) == 0
    g0, _ = load_generator(base)
    g1, ckpt = load_generator(blurred)
    assert g1.config == GeneratorConfig(**{**g0.config.to_dict(), "up_blur": True})
    assert ckpt.train["grow"] == [{"from": str(base), "step": 2, "up_blur": True}]
    assert sorted(ckpt.optimizers) == ["d", "g"]  # same tensors: Adam carries on
    assert all(torch.equal(a, b) for a, b in zip(g0.state_dict().values(), g1.state_dict().values(), strict=True))

    # Same weights; a shift that is not a multiple of the stride (8 px) lands the scene elsewhere on
    # the network's grid, and the blurred model's picture changes less with it.
    x, w = torch.rand(1, 3, 64, 96), one_hot([0], 2)
    sharp, soft = (sum(_shift_error(g, x, w, d) for d in range(1, 8)) for g in (g0, g1))
    assert soft < 0.9 * sharp  # 0.75x here; stage 6 with it, before any training: 0.52x at d = 3

    # Resuming needs the option, and says so; with it, training carries on.
    with pytest.raises(ValueError, match="up_blur True \\(this run: False\\).*--up-blur"):
        Trainer(_config(data, blurred, size=64, resume=True, steps=3))
    Trainer(_config(data, blurred, size=64, resume=True, steps=3, up_blur=True)).run(progress=False)
    assert load_generator(blurred)[1].step == 3

    # The same blur after the last, full-resolution shuffle too: the finest marks stop following
    # the grid as well, and the picture changes less again.
    both = tmp_path / "both" / "m.safetensors"
    assert trainer_main(["grow", str(blurred), "--head-blur", "--out", str(both)]) == 0
    g2, ckpt2 = load_generator(both)
    assert g2.config == GeneratorConfig(**{**g1.config.to_dict(), "head_blur": True})
    assert ckpt2.train["grow"][-1] == {"from": str(blurred), "step": 3, "head_blur": True}
    g1, _ = load_generator(blurred)  # as trained on above
    soft, softer = (sum(_shift_error(g, x, w, d) for d in range(1, 8)) for g in (g1, g2))
    assert softer < soft
    with pytest.raises(ValueError, match="head_blur True \\(this run: False\\).*--head-blur"):
        Trainer(_config(data, both, size=64, resume=True, steps=4, up_blur=True))
    Trainer(_config(data, both, size=64, resume=True, steps=4, up_blur=True, head_blur=True)).run(progress=False)
    assert load_generator(both)[1].step == 4

    # Nothing to change, a v1 model, or a model that has it already: a clear error each.
    assert trainer_main(["grow", str(base), "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "--blocks N (deeper), --up-blur or --head-blur" in capsys.readouterr().err
    assert trainer_main(["grow", str(blurred), "--up-blur", "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "this one has it" in capsys.readouterr().err
    assert trainer_main(["grow", str(both), "--head-blur", "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "--head-blur needs a v2 model without it (this one has it)" in capsys.readouterr().err
    with pytest.raises(ValueError, match="v2 setting"):
        _config(data, base, arch=1, up_blur=True)
    with pytest.raises(ValueError, match="v2 setting"):
        _config(data, base, arch=1, head_blur=True)


def test_training_on_drops_a_fitted_stroke_floor_and_unit(data: tuple[Path, list[Path]], tmp_path: Path) -> None:
    """A stroke floor and unit describe the marks a file paints now (bench.stroke_step --fit-floor,
    bench.stroke_unit --fit); training changes them, so a resumed run goes on without them rather
    than refusing or keeping stale ones."""
    import dataclasses

    from trainer.checkpoint import load_checkpoint, save_checkpoint

    out = tmp_path / "m.safetensors"
    Trainer(_config(data, out, size=64)).run(progress=False)
    ckpt = load_checkpoint(out)
    save_checkpoint(
        out,
        dataclasses.replace(
            ckpt, generator_config=dataclasses.replace(ckpt.generator_config, stroke_floor=0.4, stroke_unit=0.8)
        ),
    )
    assert load_checkpoint(out).generator_config.stroke_scale.facts()["stroke_unit"] == 0.8
    Trainer(_config(data, out, size=64, resume=True, steps=3)).run(progress=False)
    after = load_checkpoint(out)
    assert after.step == 3 and after.generator_config.stroke_floor == 0.0 and after.generator_config.stroke_unit == 1.0


def test_style_emphasis_weights_the_named_styles_and_bad_values_are_refused(
    data: tuple[Path, list[Path]], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from trainer.train import Trainer, parse_emphasis

    assert parse_emphasis("The Great Wave=2") == ("The Great Wave", 2.0)
    assert parse_emphasis("a=b=0.5") == ("a=b", 0.5)  # the factor follows the last '='
    for bad in ("Spring", "=2", "Spring=x"):
        with pytest.raises(ValueError):
            parse_emphasis(bad)
    for factor in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="positive"):
            _config(data, tmp_path / "m.safetensors", style_emphasis=(("style1", factor),))
    trainer = Trainer(_config(data, tmp_path / "m.safetensors", style_emphasis=(("style1", 2.5),)))
    assert trainer.emphasis.tolist() == [1.0, 2.5]  # style order, 1 where not named
    with pytest.raises(ValueError, match=r"does not have: \['style9'\]"):
        Trainer(_config(data, tmp_path / "m.safetensors", style_emphasis=(("style9", 2.0),)))
    # From the command line, repeated, and recorded in the checkpoint's config.
    content, styles = data
    out = tmp_path / "cli.safetensors"
    args = ["train", "--content", str(content), "--out", str(out), "--size", "32", "--steps", "1", "--batch", "2"]
    args += ["--style", f"{styles[0]}=a", "--style", f"{styles[1]}=b", "--no-holdout", "--sample-every", "0"]
    args += ["--width", "8", "--half-width", "4", "--blocks", "1", "--device", "cpu"]
    assert trainer_main([*args, "--style-emphasis", "b=3", "--style-emphasis", "a=0.5"]) == 0
    assert load_checkpoint(out).train["style_emphasis"] == [["b", 3.0], ["a", 0.5]]
    with pytest.raises(SystemExit) as usage:
        trainer_main([*args, "--style-emphasis", "b"])
    assert usage.value.code == 2
    assert "NAME=FACTOR" in capsys.readouterr().err


def test_cli_errors_are_clear(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "empty").mkdir()
    style = _painting(tmp_path / "s.png", 0)
    rc = trainer_main(
        [
            "train",
            "--content",
            str(tmp_path / "empty"),
            "--style",
            str(style),
            "--out",
            str(tmp_path / "m.safetensors"),
            "--size",
            "32",
        ]
    )
    assert rc == 2
    assert "no images" in capsys.readouterr().err


def test_sigterm_saves_a_checkpoint(data: tuple[Path, list[Path]], tmp_path: Path) -> None:
    """A supervisor's kill (SIGTERM) saves like Ctrl-C: the run exits 0 with its step on disk."""
    import signal
    import subprocess
    import sys
    import time

    content, styles = data
    out = tmp_path / "term.safetensors"
    cmd = [
        sys.executable, "-m", "trainer", "train", "--content", str(content), "--style", str(styles[0]),
        "--out", str(out), "--steps", "100000", "--size", "32", "--batch", "1", "--width", "8",
        "--half-width", "4", "--blocks", "1", "--sample-every", "1", "--save-every", "0", "--device", "cpu",
    ]  # fmt: skip
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob("term_samples_*.png")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-2000:]
    assert "interrupted at step" in err
    assert load_checkpoint(out).step >= 1


# --- v2: the stroke, the config, the held-out split, real-motion pairs ---------------


def _v2(num_styles: int = 2, **kw: object) -> GeneratorV2:
    torch.manual_seed(0)
    g = build_generator(GeneratorConfig.v2(num_styles, width=8, half_width=4, deep_width=8, num_blocks=1, **kw))
    assert isinstance(g, GeneratorV2)
    with torch.no_grad():  # rows that differ per style and per anchor, as after training
        for p in g.style_parameters():
            p.add_(0.5 * torch.randn_like(p))
    return g.eval()


def test_stroke_weights_are_one_hot_at_anchors_and_interpolate_between() -> None:
    g = _v2()
    t = g.stroke_weights(torch.tensor([0.5, 1.0, 2.0, 2**-0.5, 2**0.5, 0.1, 9.0]), 7, torch.float32)
    assert torch.allclose(t[:3], torch.eye(3))
    assert torch.allclose(t[3], torch.tensor([0.5, 0.5, 0.0]))  # halfway in log2 between 0.5 and 1
    assert torch.allclose(t[4], torch.tensor([0.0, 0.5, 0.5]))
    # Below the finest anchor the first step's line goes on for half a step, then stops; above the
    # boldest, the stroke is clamped.
    assert torch.allclose(t[5], torch.tensor([1.5, -0.5, 0.0])) and torch.allclose(t[6], torch.tensor([0.0, 0.0, 1.0]))
    assert torch.allclose(t.sum(1), torch.ones(7))


def test_strokes_below_the_finest_anchor_extrapolate_its_rows() -> None:
    """Finer than training drew (a stroke floor asks for it on small frames): every affine is the
    line through the two finest anchors' rows, continued, up to half a step below; the picture at
    and above the finest anchor is what it was."""
    g = _v2()
    w = torch.tensor([[0.0, 1.0]])
    rows = {s: g.style_affines(w, g.stroke_weights(torch.tensor([s]), 1, torch.float32)) for s in (0.4, 0.5, 1.0)}
    e = math.log2(0.5 / 0.4)  # how far below 0.5, in anchor steps (one octave each)
    for (g4, b4), (g5, b5), (g1, b1) in zip(rows[0.4], rows[0.5], rows[1.0], strict=True):
        assert torch.allclose(g4, g5 + e * (g5 - g1), atol=1e-6) and torch.allclose(b4, b5 + e * (b5 - b1), atol=1e-6)
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        pics = {s: g(x, w, torch.tensor([s])) for s in (0.2, 2**-1.5, 0.4, 0.5)}
    assert torch.equal(pics[0.2], pics[2**-1.5])  # clamped half a step below
    assert not torch.allclose(pics[0.4], pics[0.5], atol=1e-4)


def test_training_strokes_cover_the_anchors_and_a_share_is_the_default(
    data: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    import random

    g = _v2()
    spread = sample_strokes(g, 400, random.Random(0))
    assert spread is not None and 0.5 <= float(spread.min()) and float(spread.max()) <= 2.0
    assert not bool((spread == 1.0).any())  # log-uniform: never exactly the default
    half = sample_strokes(g, 400, random.Random(0), default_share=0.5)
    assert half is not None and 150 < int((half == 1.0).sum()) < 250
    assert sample_strokes(Generator(GeneratorConfig(2)), 4, random.Random(0), 0.5) is None  # v1: no stroke
    # 'runtime': down to the finest stroke the network paints (half a step below the 0.5 anchor), about
    # a fifth of the crops in log2 below the anchor, none below the limit.
    finer = sample_strokes(g, 400, random.Random(0), finest="runtime")
    assert finer is not None and 2**-1.5 <= float(finer.min()) < 0.37 and float(finer.max()) <= 2.0
    assert 50 < int((finer < 0.5).sum()) < 110
    assert _config(data, tmp_path / "m.safetensors", finest_stroke="runtime").finest_stroke == "runtime"
    with pytest.raises(ValueError, match="--finest-stroke must be anchor or runtime"):
        _config(data, tmp_path / "m.safetensors", finest_stroke="tiny")
    with pytest.raises(ValueError, match="default-stroke-share"):
        _config(data, tmp_path / "m.safetensors", default_stroke_share=1.5)


def test_the_shift_loss_compares_the_views_overlap_and_its_noise_is_the_only_cost_to_a_pointwise_model(
    data: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    """A per-pixel model moves exactly with its input, so with no noise the shift-stability loss is 0
    for every shift (the two outputs are cropped to the same scene pixels); the sensor noise is what
    it then pays for. A negative noise is refused."""

    class Pointwise(torch.nn.Module):
        config = GeneratorConfig.v2(2)

        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 3, 1)

        def forward(self, image: torch.Tensor, style: torch.Tensor, stroke: torch.Tensor | None = None) -> torch.Tensor:
            return torch.sigmoid(self.conv(image * 4))

    g, x, w = Pointwise(), torch.rand(2, 3, 48, 64), one_hot([0, 1], 2)
    torch.manual_seed(0)
    with torch.no_grad():
        clean = [float(temporal_loss(g, x, w, noise=0.0)) for _ in range(8)]  # type: ignore[arg-type]
        noisy = float(temporal_loss(g, x, w, noise=0.02))  # type: ignore[arg-type]
    assert max(clean) < 1e-6 and noisy > 1e-3
    with pytest.raises(ValueError, match="temporal-noise"):
        _config(data, tmp_path / "m.safetensors", temporal_noise=-0.01)


def test_stroke_changes_the_picture_and_none_means_one() -> None:
    g = _v2()
    x, w = torch.rand(2, 3, 32, 48), one_hot([0, 1], 2)
    with torch.no_grad():
        fine, one, bold = (g(x, w, torch.tensor([s, s])) for s in (0.5, 1.0, 2.0))
        assert torch.equal(g(x, w), one) and torch.equal(g(x, w, torch.tensor(1.0)), one)
        assert (fine - one).abs().mean() > 1e-3 and (bold - one).abs().mean() > 1e-3
        # per-sample strokes: row 0 fine, row 1 bold, each as if alone
        both = g(x, w, torch.tensor([0.5, 2.0]))
    assert torch.allclose(both[0], fine[0], atol=1e-6) and torch.allclose(both[1], bold[1], atol=1e-6)


def test_v2_generator_sizes_and_the_blur_folds_into_one_kernel() -> None:
    g = _v2()
    with torch.no_grad():
        y = g(torch.rand(1, 3, 40, 56), one_hot([1], 2))
    assert y.shape == (1, 3, 40, 56) and 0.0 <= float(y.min()) and float(y.max()) <= 1.0
    k = g.down1.kernel()
    assert k.shape == (4, 3, 5, 5)
    # A constant image stays constant through the blurred kernel: its weights sum like the 3x3's.
    assert torch.allclose(k.sum((2, 3)), g.down1.weight.sum((2, 3)), atol=1e-6)
    # The layer blurs and then convolves: the same output as one 5x5 conv with that kernel.
    x = torch.rand(2, 4, 22, 30, dtype=torch.float64)
    down = g.down2.double()
    with torch.no_grad():
        padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="reflect")
        want = torch.nn.functional.conv2d(padded, down.kernel(), stride=2)
        got = down(x)
    assert got.shape == want.shape == (2, 8, 11, 15) and torch.allclose(got, want, atol=1e-12)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"strokes": ()}, "increasing positive anchors"),
        ({"strokes": (2.0, 1.0)}, "increasing positive anchors"),
        ({"strokes": (0.5, 1.0, 3.0)}, "evenly spaced in log2"),
        ({"stride": 4}, "exactly 8"),
        ({"deep_width": 0}, "deep_width"),
        ({"instance_norm": "some"}, "instance_norm must be none, trunk or all"),
        ({"stroke_floor": -0.1}, "stroke_floor must be from 0 to 1"),
        ({"stroke_floor": 1.5}, "stroke_floor must be from 0 to 1"),
        ({"stroke_unit": 0.3}, "stroke_unit must be from 0.5 to 2"),
        ({"stroke_unit": 2.5}, "stroke_unit must be from 0.5 to 2"),
    ],
)
def test_v2_config_errors_are_clear(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GeneratorConfig.v2(3, **overrides)


def test_a_v1_config_without_version_reads_back_as_v1() -> None:
    stored = {"num_styles": 8, "width": 64, "half_width": 16, "num_blocks": 7, "stride": 4}  # a v1 checkpoint's JSON
    cfg = GeneratorConfig(**stored)
    assert cfg.version == 1 and cfg.strokes == () and isinstance(build_generator(cfg), Generator)
    with pytest.raises(ValueError, match="v2 settings"):
        GeneratorConfig(8, strokes=(1.0,))
    with pytest.raises(ValueError, match="v2 settings"):
        GeneratorConfig(8, stroke_floor=0.3)
    with pytest.raises(ValueError, match="v2 settings"):
        GeneratorConfig(8, stroke_unit=0.8)
    with pytest.raises(ValueError, match="unknown generator version"):
        GeneratorConfig(8, version=3)


def test_training_leaves_out_the_held_out_photos(tmp_path: Path) -> None:
    from common.split import held_out

    folder = tmp_path / "photos"
    folder.mkdir()
    names = [f"p{i:02d}.png" for i in range(24)]
    for i, name in enumerate(names):
        _photo(folder / name, i)
    expected_out = {n for n in names if held_out(n)}
    assert 0 < len(expected_out) < len(names)  # the hash split holds some out, not all
    kept = ContentImages.from_folder(folder, 32, skip=held_out)
    assert {p.name for p in kept.paths} == set(names) - expected_out


def test_a_copy_of_a_held_out_photo_elsewhere_is_left_out_of_training_too(tmp_path: Path) -> None:
    from common.split import held_out

    folder = tmp_path / "photos"
    (folder / "other").mkdir(parents=True)
    names = [f"p{i:02d}.png" for i in range(24)]
    for i, name in enumerate(names):
        _photo(folder / name, i, size=(160, 120))
    out = sorted(n for n in names if held_out(n))
    # A smaller, re-encoded copy of a held-out photo under another name, as a second folder of a
    # photo collection often has; its own path is not held out, so only its picture gives it away.
    copy = next(f"other/copy{i}.jpg" for i in range(100) if not held_out(f"other/copy{i}.jpg"))
    Image.open(folder / out[0]).resize((100, 75)).save(folder / copy, quality=80)
    kept = {p.relative_to(folder).as_posix() for p in ContentImages.from_folder(folder, 32, skip=held_out).paths}
    assert kept == set(names) - set(out)  # the copy is gone, every other training photo stays
    # Without the split nothing is compared or dropped.
    assert copy in {p.relative_to(folder).as_posix() for p in ContentImages.from_folder(folder, 32).paths}


def test_the_shipped_content_set_chooses_only_photos_training_may_use(tmp_path: Path) -> None:
    from common.split import held_out
    from trainer.content_set import FOLDERS, choose

    data = tmp_path / "data"
    for f, (folder, readme) in enumerate(FOLDERS.items()):
        (data / "content" / folder).mkdir(parents=True)
        blocks = []
        for i in range(16):
            _photo(data / "content" / folder / f"photo{i}.png", 100 * f + i)
            blocks.append(f"Files: photo{i}.png\nCopyright: someone\nLicense: CC0-1.0\nSource: https://example.org/{i}")
        (data / "attribution" / readme).parent.mkdir(parents=True)
        (data / "attribution" / readme).write_text("\n\n".join(blocks), encoding="utf-8")
    paths = [p.relative_to(data / "content").as_posix() for p, _ in choose(data, per_folder=16)]
    every = [f"{folder}/photo{i}.png" for folder in FOLDERS for i in range(16)]
    assert any(held_out(p) for p in every)  # the split holds some of these out
    assert sorted(paths) == sorted(p for p in every if not held_out(p))


def test_video_pairs_use_only_the_training_frames_and_their_warp_aligns(tmp_path: Path) -> None:
    """A synthetic pan: frame t+1 is frame t moved 2 px right. Warping the first frame with the
    measured flow must bring it much closer to the second than it was."""
    import random

    import cv2

    from common.split import video_train_frames
    from trainer.flow import VideoPairs, warp_torch

    rng = np.random.default_rng(0)
    scene = cv2.GaussianBlur(rng.integers(0, 256, (96, 400, 3), dtype=np.uint8), (0, 0), 2.0)
    path = tmp_path / "pan.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (128, 96))
    for t in range(20):
        writer.write(scene[:, 200 - 2 * t : 328 - 2 * t])
    writer.release()
    pairs = VideoPairs(path, short=96)
    assert len(pairs) == len(video_train_frames(20)) == 12
    batch = pairs.batch(3, 64, random.Random(0))
    assert batch.prev.shape == batch.cur.shape == (3, 3, 64, 64) and batch.grid.shape == (3, 64, 64, 2)
    assert float(batch.valid.mean()) > 0.5
    valid = batch.valid
    before = ((batch.prev - batch.cur).abs() * valid).sum() / valid.sum()
    after = ((warp_torch(batch.prev, batch.grid) - batch.cur).abs() * valid).sum() / valid.sum()
    assert after < 0.5 * before


def test_flow_loss_is_zero_for_a_still_video_and_joins_training(data: tuple[Path, list[Path]], tmp_path: Path) -> None:
    import cv2

    still = (np.random.default_rng(1).uniform(0, 255, (64, 80, 3))).astype(np.uint8)
    path = tmp_path / "still.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (80, 64))
    for _ in range(10):
        writer.write(still)
    writer.release()
    tr = Trainer(_config(data, tmp_path / "m.safetensors", video=str(path)))
    stats = tr.train_step()
    assert "flow" in stats and np.isfinite(stats["flow"]) and stats["flow"] < 0.05
    assert tr.data_record()["video"]["frames"] == [0, 6]


def test_the_resolution_step_loss_compares_the_half_size_pass_with_the_reduced_picture() -> None:
    """Auto resolution's step as a loss: item by item, G(half-size frame, stroke / 2) against the
    full-size picture box-reduced, only where stroke / 2 is still an anchor's size or more, with the
    full-size picture as a fixed target; and optimising it brings the two together."""
    g = _v2()
    x, w = torch.rand(3, 3, 32, 48), one_hot([0, 1, 0], 2)
    stroke = torch.tensor([0.7, 1.0, 2.0])  # 0.7 / 2 is finer than the finest anchor (0.5): left out
    y = g(x, w, stroke)
    y.retain_grad()
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def texture(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        seen.append((a.detach(), b))
        return (a.float().mean() - b.mean()).abs()

    l1, tex = resolution_step_loss(g, x, y, w, stroke, texture)
    with torch.no_grad():
        half = g(torch.nn.functional.avg_pool2d(x[1:], 2), w[1:], torch.tensor([0.5, 1.0]))
        target = torch.nn.functional.avg_pool2d(y[1:], 2)
    assert torch.allclose(l1, (half - target).abs().mean(), atol=1e-6)
    ((a, b),) = seen  # the texture term saw the same two pictures
    assert torch.allclose(a, half, atol=1e-6) and torch.equal(b, target) and not b.requires_grad
    assert float(resolution_step_loss(g, x, y, w, stroke)[1]) == 0.0  # no texture term given
    assert [float(v) for v in resolution_step_loss(g, x[:1], y[:1], w[:1], stroke[:1], texture)] == [0.0, 0.0]
    (l1 + tex).backward()  # the target is detached: only the half-size pass pulls on the weights
    assert y.grad is None and all(p.grad is not None for p in g.parameters() if p.requires_grad)

    g.zero_grad()
    y.detach_()
    opt = torch.optim.Adam(g.parameters(), lr=1e-2)
    first = float(l1.detach())
    for _ in range(30):
        opt.zero_grad()
        step = resolution_step_loss(g, x, y, w, stroke)[0]
        step.backward()
        opt.step()
    last = float(step.detach())
    assert last < 0.5 * first, (first, last)


def test_texture_distance_is_zero_for_the_same_picture_and_grows_with_the_marks() -> None:
    """The resolution step's texture term: Gram distance between two pictures, wherever the marks lie."""
    from trainer.losses import PerceptualLoss
    from trainer.vgg import VGG19Features

    loss = PerceptualLoss(VGG19Features())
    yy, xx = torch.meshgrid(torch.arange(48.0), torch.arange(48.0), indexing="ij")
    fine = (0.5 + 0.4 * torch.sin(xx * 1.2)).expand(1, 3, 48, 48)
    bold = (0.5 + 0.4 * torch.sin(xx * 0.3)).expand(1, 3, 48, 48)
    moved = torch.roll(fine, 3, dims=-1)
    same = float(loss.texture_distance(fine, fine))
    assert same < 1e-9 and float(loss.texture_distance(moved, fine)) < 0.1 * float(loss.texture_distance(bold, fine))


def test_v2_training_adds_the_resolution_step_and_checks_the_crop_side(
    data: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    tr = Trainer(_config(data, tmp_path / "m.safetensors", arch=2, size=32))
    assert "res_step" in tr.train_step()
    with pytest.raises(ValueError, match="multiple of 16 and >= 32 for a v2 generator with the resolution-step"):
        _config(data, tmp_path / "n.safetensors", arch=2, size=40)
    _config(data, tmp_path / "n.safetensors", arch=2, size=40, losses=LossWeights(resolution_step=0.0))
    assert "res_step" not in Trainer(_config(data, tmp_path / "v1.safetensors", arch=1)).train_step()


def test_each_resumed_run_is_kept_in_the_record_and_a_finished_one_is_left_alone(
    data: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    """Staged training (make train-v2): every stage's settings stay in the checkpoint, and running a
    stage that is already done again neither trains nor rewrites the record."""
    out = tmp_path / "m.safetensors"
    Trainer(_config(data, out, steps=1)).run(progress=False)
    Trainer(_config(data, out, steps=2, resume=True, losses=LossWeights(style=30.0))).run(progress=False)
    record = load_checkpoint(out).train
    assert record["losses"]["style"] == 30.0 and record["steps"] == 2
    assert [(h["reached_step"], h["steps"], h["losses"]["style"]) for h in record["history"]] == [(1, 1, 10.0)]
    before = out.read_bytes()
    Trainer(_config(data, out, steps=1, resume=True)).run(progress=False)  # stage 1 again
    assert out.read_bytes() == before


def test_relative_style_loss_is_the_benchs_style_distance_and_absolute_is_ruled_by_relu4_1() -> None:
    """``--style-norm relative`` trains the number the quality bench reports: per item, the mean over
    the four layers of ||G(out) - G(painting)||^2 / ||G(painting)||^2 (``trainer.metrics``)."""
    from trainer.losses import STYLE_LAYERS, PerceptualLoss
    from trainer.metrics import VggMetrics, style_distance, style_distance_layers
    from trainer.vgg import VGG19Features

    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:64, 0:64]
    painting = (127 + 100 * np.sin(xx[..., None] * np.array([0.9, 0.4, 0.2]) + yy[..., None] * 0.3)).astype(np.uint8)
    outputs = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), np.roll(painting, 5, axis=1) // 2 + 60]
    vgg = VGG19Features()
    metrics = VggMetrics(vgg)
    ref = metrics.stats(painting).grams

    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).permute(2, 0, 1)[None].float() / 255.0

    relative, absolute = PerceptualLoss(vgg, style_norm="relative"), PerceptualLoss(vgg)
    for loss in (relative, absolute):
        loss.set_style_targets([loss.style_targets(tensor(painting))])
    batch = torch.cat([tensor(o) for o in outputs])
    style_w = torch.ones(2, 1)
    with torch.no_grad():
        got = float(relative(batch, batch, style_w)[1])
        abs_loss = float(absolute(batch, batch, style_w)[1])
    per_item = [style_distance(metrics.stats(o).grams, ref) for o in outputs]
    assert got == pytest.approx(np.mean(per_item), rel=1e-3)
    # Item weights (--style-emphasis) scale each item's term, and nothing else.
    with torch.no_grad():
        weighted = float(relative(batch, batch, style_w, torch.tensor([3.0, 0.5]))[1])
    assert weighted == pytest.approx((3.0 * per_item[0] + 0.5 * per_item[1]) / 2, rel=1e-3)
    # The absolute sum is almost all relu4_1: its share, from the metric's per-layer terms and energies.
    layers = [style_distance_layers(metrics.stats(o).grams, ref) for o in outputs]
    energy = {k: float(ref[k].pow(2).sum()) / PerceptualLoss.feature_scale**4 for k in STYLE_LAYERS}
    parts = {k: np.mean([d[k] for d in layers]) * energy[k] for k in STYLE_LAYERS}
    assert abs_loss == pytest.approx(sum(parts.values()), rel=1e-3)
    assert parts["relu4_1"] > 0.9 * abs_loss
    with pytest.raises(ValueError, match="style_norm"):
        PerceptualLoss(vgg, style_norm="loud")
