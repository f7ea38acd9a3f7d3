"""common: the one size parser, the one mix parser, and command lines built from config dataclasses."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import pytest

from common.cli import add_options, from_args, opt
from common.mix import parse_mix, style_index
from common.sizes import fit_size, format_size, parse_size, parse_sizes

STYLES = ["ember", "glacier", "The Starry Night", "7"]


def test_sizes_are_width_by_height_everywhere() -> None:
    assert parse_size("640x480") == (640, 480)
    assert parse_size(" 1280X720 ") == (1280, 720)
    assert parse_sizes("320x240, 640x480,") == [(320, 240), (640, 480)]
    assert format_size((640, 480)) == "640x480"
    for bad, why in [
        ("640by480", "WIDTHxHEIGHT"),
        ("640x", "WIDTHxHEIGHT"),
        ("8x8", "between"),
        ("5000x10", "between"),
    ]:
        with pytest.raises(ValueError, match=why):
            parse_size(bad)
    with pytest.raises(ValueError, match="at least one size"):
        parse_sizes(",")


def test_fit_size_scales_down_to_the_box_never_up() -> None:
    assert fit_size(640, 480, (320, 240)) == (320, 240)
    assert fit_size(1280, 720, (640, 480)) == (640, 360)
    assert fit_size(160, 120, (640, 480)) == (160, 120)
    w, h = fit_size(642, 481, (320, 240))
    assert w % 4 == 0 and h % 4 == 0 and w <= 320 and h <= 240
    assert fit_size(767, 577, (640, 480), multiple=2) == (638, 480)


def test_mixes_by_name_or_index_one_rule() -> None:
    assert parse_mix("0:0.5,glacier:0.5", STYLES) == [0.5, 0.5, 0.0, 0.0]
    assert parse_mix("The Starry Night", STYLES) == [0.0, 0.0, 1.0, 0.0]  # a bare key: weight 1
    assert parse_mix("The Starry Night:3, 1:1", STYLES) == [0.0, 1.0, 3.0, 0.0]  # as given, not normalised
    assert parse_mix("7:2", STYLES) == [0.0, 0.0, 0.0, 2.0]  # a style's name wins over an index
    assert style_index("3", STYLES) == 3
    for bad, why in [
        ("nope:1", "unknown style 'nope'"),
        ("9:1", "out of range"),
        ("0:-1,1:2", "non-negative"),
        ("0:nan", "finite"),
        ("0:inf", "finite"),
        ("0:x", "must be a number"),
        ("0:0,1:0", "no style a positive weight"),
        ("", "no style a positive weight"),
        ("0:1,ember:2", "named twice"),
    ]:
        with pytest.raises(ValueError, match=why):
            parse_mix(bad, STYLES)


@dataclass(frozen=True)
class Example:
    name: str = opt(help="a required text", flag="name")  # positional
    out: Path = opt(help="a required path")
    count: int = opt(3, "how many")
    rate: float | None = opt(None, "a rate (default: none)")
    sizes: tuple[str, ...] = opt(("64x48",), "sizes", parse=lambda t: format_size(parse_size(t)))
    extra: tuple[str, ...] = opt((), "repeatable", action="append", flag="--extra-item")
    fast: bool = opt(False, "a positive flag")
    checks: bool = opt(True, "on unless --no-checks")
    hidden: str = "not an option"


def test_options_come_from_the_dataclass_with_its_defaults() -> None:
    p = argparse.ArgumentParser()
    add_options(p, Example)
    assert from_args(Example, p.parse_args(["a", "--out", "o.txt"])) == Example(name="a", out=Path("o.txt"))
    got = from_args(
        Example,
        p.parse_args(
            ["b", "--out", "x", "--count", "5", "--rate", "0.5", "--sizes", "20X30", "32x32", "--extra-item", "e1"]
            + ["--extra-item", "e2", "--fast", "--no-checks"]
        ),
    )
    assert got == Example("b", Path("x"), 5, 0.5, ("20x30", "32x32"), ("e1", "e2"), True, False)
    text = " ".join(p.format_help().split())
    assert "how many (default: 3)" in text and "sizes (default: 64x48)" in text and "--hidden" not in text
    with pytest.raises(SystemExit):
        p.parse_args(["a"])  # --out is required: it has no default


def test_a_parse_error_is_a_usage_error_with_the_reason(capsys: pytest.CaptureFixture[str]) -> None:
    p = argparse.ArgumentParser()
    add_options(p, Example)
    with pytest.raises(SystemExit):
        p.parse_args(["a", "--out", "o", "--sizes", "big"])
    assert "WIDTHxHEIGHT" in capsys.readouterr().err


def test_the_command_lines_default_to_the_config_dataclasses() -> None:
    """Parsing nothing gives each config's own defaults: no default is written a second time."""
    from engines.runtime.manifest import EngineSpec
    from streamer.__main__ import build_parser as streamer_parser
    from streamer.config import StreamerConfig

    assert from_args(StreamerConfig, streamer_parser().parse_args([])) == StreamerConfig()
    p = argparse.ArgumentParser()
    add_options(p, EngineSpec)
    assert from_args(EngineSpec, p.parse_args([])) == EngineSpec()


def test_the_trainer_command_lines_default_to_the_config_dataclasses() -> None:
    pytest.importorskip("torch")
    from trainer.__main__ import LOSS, build_parser
    from trainer.train import ADD_STYLE_LOSSES, AddStyleConfig, LossWeights, TrainConfig

    args = build_parser().parse_args(["train", "--content", "c", "--style", "s.png=S", "--out", "o"])
    assert from_args(TrainConfig, args, losses=from_args(LossWeights, args, LOSS)) == TrainConfig(
        content_dir="c", styles=(("s.png", "S"),), out="o"
    )
    args = build_parser().parse_args(
        ["add-style", "b", "--style", "p.png", "--content", "c", "--out", "o", "--style-weight", "3"]
    )
    assert args.style == ("p.png", None) and args.loss_style == 3.0  # two "style"s, kept apart
    cfg = from_args(AddStyleConfig, args, style="p.png", losses=from_args(LossWeights, args, LOSS, adversarial=0.0))
    want = AddStyleConfig(style="p.png", base="b", content_dir="c", out="o", losses=LossWeights(style=3, adversarial=0))
    assert cfg == want
    assert (cfg.batch, cfg.style_size, cfg.precision) == (TrainConfig.batch, TrainConfig.style_size, "auto")
    # without --style-weight, add-style's own loss defaults (a stronger style term than train's)
    args = build_parser().parse_args(["add-style", "b", "--style", "p.png", "--out", "o"])
    cfg = from_args(AddStyleConfig, args, style="p.png", losses=from_args(LossWeights, args, LOSS, adversarial=0.0))
    assert cfg == AddStyleConfig(style="p.png", base="b", out="o") and cfg.losses == ADD_STYLE_LOSSES
