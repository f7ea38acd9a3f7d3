"""Train multi-style generators.

Copy-paste commands:

    # train 2 styles on a folder of photos (CPU is fine for a few hundred steps)
    python -m trainer train --content photos/ --style wave.png="Great Wave" --style starry.jpg \\
        --out runs/model.safetensors --steps 400 --size 192 --batch 4

    # continue the same run later (restores weights, optimisers and the step)
    python -m trainer train --content photos/ --style wave.png="Great Wave" --style starry.jpg \\
        --out runs/model.safetensors --steps 800 --resume

    # teach an existing model one more painting (only its normalisation rows train)
    # (--content: photos to learn on; default: the credited set in trainer/content)
    python -m trainer add-style runs/model.safetensors --style my_painting.jpg="Mine" \\
        --out runs/model_plus.safetensors --steps 300

    # a deeper copy that computes the same picture (new trunk blocks start as identities),
    # then train it on: --blocks must match
    python -m trainer grow runs/model.safetensors --blocks 5 --out runs/deep/model.safetensors
    python -m trainer train ... --out runs/deep/model.safetensors --blocks 5 --steps 2000 --resume
    # ... or the same model with the up-sampling blur (steadier under a pan); train on with --up-blur
    python -m trainer grow runs/model.safetensors --up-blur --out runs/blur/model.safetensors
    # ... and after the last, full-resolution one too; train on with --up-blur --head-blur
    python -m trainer grow runs/model.safetensors --up-blur --head-blur --out runs/blur2/model.safetensors

    # fit each style's colour map (v2), the network frozen: style distance to the painting against
    # content and steadiness, on photos of the training split (--paintings: where the paintings are)
    python -m trainer fit-palette runs/model.safetensors --paintings paintings/ --out runs/model_palette.safetensors
    # ... then move the maps into the per-style rows, so the served graph pays nothing for them
    python -m trainer bake-palette runs/model_palette.safetensors --out runs/model_baked.safetensors
    # ... and a second pass from there that also matches the palette model's Gram matrices (slower)
    python -m trainer bake-palette runs/model_palette.safetensors --start runs/model_baked.safetensors \
        --gram 10 --crop 192 --steps 700 --lr 1e-3 --out runs/model_baked2.safetensors

    # a grid of every style, plus a 50/50 mix of styles 0 and 1
    python -m trainer sample runs/model.safetensors --content photo.jpg --out sheet.png --mix "0:0.5,1:0.5"

    # what a checkpoint holds (config, styles, how it was trained)
    python -m trainer info runs/model.safetensors

The options of train and add-style are the fields of ``TrainConfig``,
``AddStyleConfig`` and ``LossWeights`` (``trainer/train.py``), defaults included.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from common.cli import add_options, arg_type, from_args
from trainer.data import DataError, parse_style_arg
from trainer.palette import BakeConfig, PaletteConfig
from trainer.train import ADD_STYLE_LOSSES, AddStyleConfig, LossWeights, TrainConfig, command_line

LOSS = "loss_"  # LossWeights' values on the namespace (its "style" would meet add-style's --style)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trainer", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="subcommand", required=True)

    t = sub.add_parser("train", help="train a generator on content photos and style paintings")
    add_options(t, TrainConfig)
    add_options(t.add_argument_group("loss weights"), LossWeights, prefix=LOSS)

    a = sub.add_parser("add-style", help="learn one more painting into an existing model (others stay identical)")
    add_options(a, AddStyleConfig)
    a.add_argument(
        "--style",
        required=True,
        type=arg_type(parse_style_arg),
        metavar="PATH[=NAME]",
        help="the new painting, optional '=NAME'",
    )
    # The critic has no head for a new style: no adversarial weight here.
    add_options(
        a.add_argument_group("loss weights"), LossWeights, exclude=("adversarial",), defaults=ADD_STYLE_LOSSES,
        prefix=LOSS,
    )  # fmt: skip

    g = sub.add_parser(
        "grow",
        help="a changed copy of a model to train on: deeper (same picture) and/or with the up-sampling blur",
    )
    g.add_argument("model", help="a model (.safetensors)")
    g.add_argument("--blocks", type=int, help="residual blocks in the copy (more than the model's); same picture")
    g.add_argument(
        "--up-blur",
        action="store_true",
        help="v2: blur after each coarse up-sampling (steadier under a pan; the picture changes until trained)",
    )
    g.add_argument(
        "--head-blur",
        action="store_true",
        help="v2: the same blur after the last, full-resolution up-sampling (on the picture's logits)",
    )
    g.add_argument(
        "--out", required=True, help="checkpoint to write (resume from it with the same --blocks/--up-blur/--head-blur)"
    )

    f = sub.add_parser(
        "fit-palette", help="v2: fit each style's colour map on the picture, the network frozen (trainer/palette.py)"
    )
    add_options(f, PaletteConfig)

    b = sub.add_parser(
        "bake-palette",
        help="v2: move a fitted palette into the per-style rows, so the served graph has none (trainer/palette.py)",
    )
    add_options(b, BakeConfig)

    s = sub.add_parser("sample", help="render every style (and a mix) on photos into one PNG grid")
    s.add_argument("model", help="a model (.safetensors)")
    s.add_argument("--content", action="append", required=True, help="a photo; repeat for more rows")
    s.add_argument("--out", required=True, help="PNG to write")
    s.add_argument("--mix", help="extra column with a mix: 'INDEX:WEIGHT,...' or 'NAME:WEIGHT,...'")
    s.add_argument("--size", type=int, default=256, help="tile side in pixels (default: 256)")

    i = sub.add_parser("info", help="print what a checkpoint holds")
    i.add_argument("model", help="a model (.safetensors)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    from trainer.checkpoint import CheckpointError
    from trainer.train import add_style, describe, grow, render_sample, train

    try:
        if args.subcommand == "train":
            cfg = from_args(TrainConfig, args, losses=from_args(LossWeights, args, LOSS), command=command_line())
            print(train(cfg))
        elif args.subcommand == "add-style":
            path, name = args.style
            losses = from_args(LossWeights, args, LOSS, adversarial=0.0)
            print(add_style(from_args(AddStyleConfig, args, style=path, name=name, losses=losses,
                                      command=command_line())))  # fmt: skip
        elif args.subcommand == "fit-palette":
            from trainer.palette import fit_palette

            print(fit_palette(from_args(PaletteConfig, args, command=command_line())))
        elif args.subcommand == "bake-palette":
            from trainer.palette import bake_palette

            print(bake_palette(from_args(BakeConfig, args, command=command_line())))
        elif args.subcommand == "grow":
            print(grow(args.model, args.out, args.blocks, args.up_blur, args.head_blur))
        elif args.subcommand == "sample":
            print(render_sample(args.model, args.content, args.out, args.mix, args.size))
        elif args.subcommand == "info":
            print(describe(args.model))
    except (DataError, CheckpointError, FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
