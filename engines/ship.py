"""Package a trained checkpoint as a shippable model folder.

    python -m engines.ship runs/default/default.safetensors --out engines/models --name default

writes into ``--out``:

- ``<name>.safetensors``: the generator only (discriminator and optimiser
  states stripped: serving never needs them), with all metadata kept;
- ``<name>.onnx``: exported and checked against torch (``engines.export``);
- ``thumbnails/<i>.jpg``: a 160x160 thumbnail of style i's painting, found at
  the path recorded in the checkpoint's training config or, failing that, by
  its file name under ``--paintings`` folders;
- ``<name>.int8.onnx``: the INT8 model (``engines.quantize``, calibrated on
  ``--calib`` photos or the checkpoint's content folder), only if it passes its
  quality gate; ``load_backend`` runs it where it measures faster.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from PIL import Image, ImageOps

from common.paths import MODELS_DIR
from engines.export import export_onnx
from engines.runtime.base import EngineError
from engines.runtime.model import read_model_info
from trainer.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from trainer.data import find_images, find_painting

log = logging.getLogger(__name__)
THUMB = 160


def recorded_paintings(train: dict[str, Any]) -> dict[str, str]:
    """Painting file name -> path as the training config recorded it (base run and add-style runs)."""
    paths: dict[str, str] = {}
    for entry in train.get("styles", []) or []:
        paths[Path(entry[0]).name] = entry[0]
    for added in train.get("add_style", []) or []:
        paths[Path(added["style"]).name] = added["style"]
    return paths


def existing_thumbnails(model_dir: Path) -> dict[str, Path]:
    """Style name -> thumbnail of an already shipped model folder (``<dir>/*.onnx`` + ``thumbnails/``)."""
    found: dict[str, Path] = {}
    for onnx_file in sorted(model_dir.glob("*.onnx")):
        for i, name in enumerate(read_model_info(onnx_file).styles):
            thumb = model_dir / "thumbnails" / f"{i}.jpg"
            if thumb.is_file():
                found.setdefault(name, thumb)
    return found


def thumbnail(painting: Path, out: Path) -> Path:
    """Centre-square thumbnail, JPEG."""
    with Image.open(painting) as src:
        thumb = ImageOps.fit(src.convert("RGB"), (THUMB, THUMB), Image.Resampling.LANCZOS)
    out.parent.mkdir(parents=True, exist_ok=True)
    thumb.save(out, quality=88)
    return out


def ship(
    checkpoint: Path,
    out_dir: Path,
    name: str,
    paintings: Sequence[Path] = (),
    thumbnails_from: Sequence[Path] = (MODELS_DIR,),
    calib: Path | None = None,
    int8: bool = True,
) -> list[Path]:
    """Write the serving files for ``checkpoint`` into ``out_dir``; returns their paths.

    A style's thumbnail comes from its painting (the recorded path, or found by file name
    under ``paintings``), else from a shipped model folder in ``thumbnails_from`` that has
    a style of the same name (so a model extended with ``add-style`` keeps the default
    model's thumbnails without its training data).

    With ``int8`` (and photos: ``calib``, else the folder the checkpoint was trained on),
    ``<name>.int8.onnx`` is made by ``engines.quantize`` and kept only if it passes its
    quality gate; a stale one from an earlier model is removed either way.
    """
    ckpt = load_checkpoint(checkpoint)
    train = dict(ckpt.train)
    content_dir = train.get("content_dir")
    if "data" not in train and content_dir and Path(content_dir).is_dir():
        # Checkpoints from before the trainer recorded its file list: list the recorded
        # folder with the trainer's own filter, and say when the list was made.
        root = Path(content_dir)
        train["data"] = {
            "content_files": [str(p.relative_to(root)) for p in find_images(root)],
            "style_files": [path for path, _name in train.get("styles", [])],
            "listed": "at packaging time, from content_dir with the trainer's file filter",
        }
    slim = out_dir / f"{name}.safetensors"
    save_checkpoint(
        slim,
        Checkpoint(
            generator_config=ckpt.generator_config,
            styles=ckpt.styles,
            step=ckpt.step,
            train=train,
            generator_state=ckpt.generator_state,
        ),
    )
    onnx_path = export_onnx(slim, out_dir / f"{name}.onnx")
    recorded = recorded_paintings(train)
    known: dict[str, Path] = {}
    for folder in thumbnails_from:
        if folder.is_dir() and folder.resolve() != out_dir.resolve():
            for style_name, thumb in existing_thumbnails(folder).items():
                known.setdefault(style_name, thumb)
    written = [slim, onnx_path]
    for i, style in enumerate(ckpt.styles):
        out = out_dir / "thumbnails" / f"{i}.jpg"
        painting = find_painting(style.source, paintings, recorded.get(style.source))
        if painting is not None:
            written.append(thumbnail(painting, out))
        elif style.name in known:
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(known[style.name], out)
            written.append(out)
            painting = known[style.name]
        else:
            raise FileNotFoundError(
                f"painting {style.source!r} of style {style.name!r} not found (recorded path "
                f"{recorded.get(style.source)!r}); pass the folder that holds it with --paintings"
            )
        log.info("style %d %r: thumbnail from %s", i, style.name, painting)
    stale = out_dir / f"{name}.int8.onnx"
    stale.unlink(missing_ok=True)  # it belongs to the model that was here before
    photos = calib or (Path(content_dir) if content_dir and Path(content_dir).is_dir() else None)
    if int8 and photos is None:
        log.warning("no INT8 model: no photos to calibrate on (pass --calib DIR)")
    elif int8 and photos is not None:
        from engines.quantize import format_gates, quantize

        search = [*paintings, *{Path(p).parent for p in recorded.values() if Path(p).is_file()}]
        made, gates = quantize(onnx_path, photos, stale, paintings=tuple(search))
        log.info("INT8 quality gate:\n%s", format_gates(gates))
        if made is not None:
            written.append(made)
        else:
            log.warning("no INT8 model: none passed the quality gate (see the table above)")
    return written


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m engines.ship", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("checkpoint", type=Path, help="a trained checkpoint (.safetensors)")
    p.add_argument(
        "--out", type=Path, default=MODELS_DIR, help="folder to write the model files to (default: %(default)s)"
    )
    p.add_argument("--name", default="default", help="file stem of the shipped model")
    p.add_argument("--paintings", type=Path, action="append", default=[],
                   help="folder to search for paintings whose recorded path no longer exists (repeatable)")  # fmt: skip
    p.add_argument("--calib", type=Path, help="photos for the INT8 model (default: the checkpoint's content folder)")
    p.add_argument("--int8", action=argparse.BooleanOptionalAction, default=True,
                   help="also make <name>.int8.onnx, kept only if it passes its gate (default: on)")  # fmt: skip
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        for path in ship(args.checkpoint, args.out, args.name, args.paintings, calib=args.calib, int8=args.int8):
            print(path)
    except (FileNotFoundError, ValueError, EngineError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
