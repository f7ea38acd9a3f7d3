"""Train multi-style generators.

Copy-paste commands:

    # train 2 styles on a folder of photos (CPU is fine for a few hundred steps)
    python -m trainer train --content photos/ --style wave.png="Great Wave" --style starry.jpg \
        --out runs/model.safetensors --steps 400 --size 192 --batch 4

    # continue the same run later (restores weights, optimisers and the step)
    python -m trainer train --content photos/ --style wave.png="Great Wave" --style starry.jpg \
        --out runs/model.safetensors --steps 800 --resume

    # teach an existing model one more painting (only its normalisation rows train)
    python -m trainer add-style runs/model.safetensors --style my_painting.jpg="Mine" \
        --content photos/ --out runs/model_plus.safetensors --steps 300

    # a grid of every style, plus a 50/50 mix of styles 0 and 1
    python -m trainer sample runs/model.safetensors --content photo.jpg --out sheet.png --mix "0:0.5,1:0.5"

    # what a checkpoint holds (config, styles, how it was trained)
    python -m trainer info runs/model.safetensors
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from trainer.data import DataError, parse_style_arg
from trainer.train import AddStyleConfig, LossWeights, TrainConfig, command_line


def _add_loss_args(p: argparse.ArgumentParser, adversarial: bool = True) -> None:
    d = LossWeights()
    g = p.add_argument_group("loss weights")
    g.add_argument("--content-weight", type=float, default=d.content, help="VGG relu4_1 content loss weight")
    g.add_argument("--style-weight", type=float, default=d.style, help="Gram style loss weight (4 VGG layers)")
    g.add_argument("--tv-weight", type=float, default=d.tv, help="total-variation weight (smoothness)")
    g.add_argument(
        "--temporal-weight",
        type=float,
        default=d.temporal,
        help="stability weight: shifted/noisy input must give the shifted output (0 disables; video flickers)",
    )
    if adversarial:
        g.add_argument(
            "--adversarial-weight",
            type=float,
            default=d.adversarial,
            help="PatchGAN hinge loss weight (0 trains without the discriminator)",
        )


def _losses(a: argparse.Namespace) -> LossWeights:
    return LossWeights(
        a.content_weight,
        a.style_weight,
        a.tv_weight,
        a.temporal_weight,
        getattr(a, "adversarial_weight", 0.0),
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m trainer", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    d = TrainConfig(content_dir="", styles=(("", None),), out="")
    t = sub.add_parser("train", help="train a generator on content photos and style paintings")
    t.add_argument("--content", required=True, help="folder of photos (searched recursively: jpg, png, webp)")
    t.add_argument(
        "--style",
        action="append",
        required=True,
        metavar="PATH[=NAME]",
        help="a style painting, repeat for each style; '=NAME' sets its display name",
    )
    t.add_argument("--out", required=True, help="checkpoint to write (.safetensors); samples are written beside it")
    t.add_argument("--steps", type=int, default=d.steps, help="optimisation steps in total")
    t.add_argument("--size", type=int, default=d.size, help="training crop side in pixels (multiple of 4)")
    t.add_argument("--batch", type=int, default=d.batch, help="crops per step")
    t.add_argument("--lr", type=float, default=d.lr, help="generator Adam learning rate")
    t.add_argument(
        "--style-lr-mult",
        type=float,
        default=d.style_lr_mult,
        help="learning-rate multiplier of the per-style normalisation rows",
    )
    t.add_argument("--lr-d", type=float, default=d.lr_d, help="discriminator Adam learning rate")
    t.add_argument("--device", default=d.device, help="auto, cpu, cuda or cuda:N")
    t.add_argument("--seed", type=int, default=d.seed, help="random seed")
    t.add_argument(
        "--adversarial-start",
        type=int,
        default=d.adversarial_start,
        help="steps of perceptual-only warm-up before the adversarial term joins",
    )
    t.add_argument("--style-size", type=int, default=d.style_size, help="paintings are scaled to this short side, px")
    t.add_argument("--sample-every", type=int, default=d.sample_every, help="steps between sample sheets (0: none)")
    t.add_argument("--save-every", type=int, default=d.save_every, help="steps between checkpoints (0: at the end)")
    t.add_argument("--tensorboard", metavar="DIR", help="also write TensorBoard logs to DIR")
    t.add_argument("--resume", action="store_true", help="continue from --out (weights, optimisers, step)")
    t.add_argument("--width", type=int, default=d.width, help="generator channels at 1/4 scale")
    t.add_argument("--half-width", type=int, default=d.half_width, help="generator channels at 1/2 scale")
    t.add_argument("--blocks", type=int, default=d.num_blocks, help="residual blocks at 1/4 scale")
    _add_loss_args(t)

    a = sub.add_parser("add-style", help="learn one more painting into an existing model (others stay identical)")
    a.add_argument("base", help="the existing model (.safetensors)")
    a.add_argument("--style", required=True, metavar="PATH[=NAME]", help="the new painting, optional '=NAME'")
    a.add_argument("--content", required=True, help="folder of photos")
    a.add_argument("--out", required=True, help="the extended model to write")
    a.add_argument("--steps", type=int, default=300, help="optimisation steps")
    a.add_argument("--size", type=int, default=192, help="crop side in pixels (multiple of 4)")
    a.add_argument("--batch", type=int, default=4, help="crops per step")
    a.add_argument("--lr", type=float, default=1e-2, help="Adam learning rate of the new style's rows")
    a.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    a.add_argument("--seed", type=int, default=0, help="random seed")
    _add_loss_args(a, adversarial=False)  # the critic has no head for a new style

    s = sub.add_parser("sample", help="render every style (and a mix) on photos into one PNG grid")
    s.add_argument("model", help="a model (.safetensors)")
    s.add_argument("--content", action="append", required=True, help="a photo; repeat for more rows")
    s.add_argument("--out", required=True, help="PNG to write")
    s.add_argument("--mix", help="extra column with a mix: 'INDEX:WEIGHT,...' or 'NAME:WEIGHT,...'")
    s.add_argument("--size", type=int, default=256, help="tile side in pixels")

    i = sub.add_parser("info", help="print what a checkpoint holds")
    i.add_argument("model", help="a model (.safetensors)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    from trainer.checkpoint import CheckpointError
    from trainer.train import add_style, describe, render_sample, train

    try:
        if args.command == "train":
            cfg = TrainConfig(
                content_dir=args.content,
                styles=tuple(parse_style_arg(s) for s in args.style),
                out=args.out,
                steps=args.steps,
                size=args.size,
                batch=args.batch,
                lr=args.lr,
                style_lr_mult=args.style_lr_mult,
                lr_d=args.lr_d,
                device=args.device,
                seed=args.seed,
                losses=_losses(args),
                adversarial_start=args.adversarial_start,
                style_size=args.style_size,
                sample_every=args.sample_every,
                save_every=args.save_every,
                tensorboard=args.tensorboard,
                resume=args.resume,
                width=args.width,
                half_width=args.half_width,
                num_blocks=args.blocks,
                command=command_line(),
            )
            print(train(cfg))
        elif args.command == "add-style":
            path, name = parse_style_arg(args.style)
            print(add_style(AddStyleConfig(
                base=args.base, style=path, name=name, content_dir=args.content, out=args.out,
                steps=args.steps, size=args.size, batch=args.batch, lr=args.lr, device=args.device,
                seed=args.seed, losses=_losses(args), command=command_line(),
            )))  # fmt: skip
        elif args.command == "sample":
            print(render_sample(args.model, args.content, args.out, args.mix, args.size))
        elif args.command == "info":
            print(describe(args.model))
    except (DataError, CheckpointError, FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
