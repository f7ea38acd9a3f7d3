"""Make the next model version: learn a painting into the served model, or delete a learned style.

The server runs this as a child process (``sys.executable -m engines.learn``), one job
at a time, so training never shares the server's process, its memory or its GIL::

    python -m engines.learn add --model engines/models/default.onnx --painting night.jpg --name "Night Cafe"
    python -m engines.learn delete --model ~/.local/share/stylecast/models/v0003/model.onnx --style "Night Cafe"

It also works by hand: the new version lands in ``--models-dir`` and the server serves
it on its next start (or at once, when the server made the job). ``add`` runs
``trainer add-style`` on the model's checkpoint (only the new style's rows learn;
every other number stays bit-identical), exports the result to ONNX and checks it
against torch (``engines.export``), copies the thumbnails and makes the new one, and
writes the version folder (:mod:`engines.runtime.versions`) under a temporary name,
renamed when complete. ``delete`` drops a learned style's rows the same way; styles
that came with the shipped model cannot be deleted.

It runs at the lowest CPU priority (``--nice``) with ``--threads`` threads, so the
streams keep their frame rate. Progress goes to stdout as JSON lines, one object
per event, for the server (everything else a library prints goes to stderr)::

    {"event": "started", "steps": 300}
    {"event": "step", "step": 12, "steps": 300, "eta_s": 171.2}
    {"event": "preview", "path": ".../preview.jpg", "step": 12}     (every --preview-every seconds)
    {"event": "exporting"}
    {"event": "done", "folder": ".../v0004", "styles": [...], "seconds": 181.0}
    {"event": "error", "message": "..."}                              (then exit status 2)
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from common.paths import CONTENT_DIR, user_data_dir
from engines.runtime.base import EngineError
from engines.runtime.versions import (
    CHECKPOINT_FILE,
    ONNX_FILE,
    PID_FILE,
    VERSION_FILE,
    WORK_PREFIXES,
    VersionRecord,
    lineage,
    next_number,
)

log = logging.getLogger("engines.learn")
PREVIEW_SIZE = (256, 192)  # (w, h) of the preview tile
DEFAULT_MODELS_DIR = user_data_dir() / "models"


def work_folder(models_dir: Path, prefix: str = WORK_PREFIXES[0]) -> Path:
    """A fresh work folder with this process's pid in it: a server starting later removes it only
    once that process is gone (``streamer.learning.StyleJobs.clean_leftovers``)."""
    work = Path(tempfile.mkdtemp(prefix=prefix, dir=models_dir))
    (work / PID_FILE).write_text(f"{os.getpid()}\n")
    return work


class Events:
    """JSON lines on the process's real stdout; fd 1 itself is pointed at stderr, so that
    whatever a library prints cannot corrupt the protocol."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        if stream is None:
            stream = os.fdopen(os.dup(1), "w", buffering=1)
            sys.stdout.flush()
            os.dup2(2, 1)
        self.stream = stream

    def __call__(self, event: str, **fields: Any) -> None:
        try:
            self.stream.write(json.dumps({"event": event, **fields}) + "\n")
            self.stream.flush()
        except BrokenPipeError:
            # The server went away: nobody is waiting for this version. Leave through the finally
            # blocks, as a SIGTERM does, so the work folder goes too; the dead pipe is swapped for
            # /dev/null first, or the exit's own flush would fail on it again.
            self.stream = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process
            raise SystemExit(3) from None


def _checkpoint_of(model: Path) -> Path:
    ckpt = model.with_suffix(".safetensors")
    if not ckpt.is_file():
        raise EngineError(f"no checkpoint {ckpt} beside {model}: a new version is learned from the checkpoint")
    return ckpt


def _thumbnail_source(model: Path) -> Path:
    return model.parent / "thumbnails"


def _publish(
    models_dir: Path,
    work: Path,
    model: Path,
    styles: list[str],
    shipped: int,
    base_sha: str,
    change: str,
    thumbs: list[Path | None],
) -> Path:
    """Export ``work``'s checkpoint, add thumbnails and the record, and rename ``work`` to the next version."""
    from engines.export import export_onnx

    export_onnx(work / CHECKPOINT_FILE, work / ONNX_FILE)  # checked against torch on ONNX Runtime
    (work / "thumbnails").mkdir(exist_ok=True)
    (work / PID_FILE).unlink(missing_ok=True)  # a version folder belongs to no process
    for i, thumb in enumerate(thumbs):
        if thumb is not None and thumb.is_file():
            shutil.copyfile(thumb, work / "thumbnails" / f"{i}.jpg")
    for _ in range(100):  # another writer may take a number meanwhile: try the next
        number = next_number(models_dir)
        record = VersionRecord(
            number=number,
            base_sha256=base_sha,
            parent=str(model.resolve()),
            styles=tuple(styles),
            shipped_styles=shipped,
            change=change,
            created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        )
        (work / VERSION_FILE).write_text(json.dumps(record.to_json(), indent=2) + "\n")
        folder = models_dir / f"v{number:04d}"
        try:
            work.rename(folder)  # fails if the folder exists (a non-empty directory)
        except OSError:
            if folder.exists():
                continue
            raise
        return folder
    raise EngineError(f"could not find a free version number in {models_dir}")


def add(
    model: Path,
    painting: Path,
    name: str | None,
    models_dir: Path,
    events: Callable[..., None],
    *,
    content: Path = CONTENT_DIR,
    steps: int | None = None,
    size: int | None = None,
    preview_every_s: float = 3.0,
    preview_path: Path | None = None,
) -> Path:
    """Learn ``painting`` into ``model`` (an ONNX file with its checkpoint beside it); returns the new folder."""
    import numpy as np
    import torch
    from PIL import Image

    from engines.ship import thumbnail
    from trainer.checkpoint import read_generator_config
    from trainer.data import default_style_name, preview_photo
    from trainer.train import AddStyleConfig, add_style

    base_ckpt = _checkpoint_of(model)
    base_sha, shipped = lineage(model)
    name = name or default_style_name(painting)
    models_dir.mkdir(parents=True, exist_ok=True)
    work = work_folder(models_dir)
    try:
        kwargs: dict[str, Any] = {}
        if steps is not None:
            kwargs["steps"] = steps
        if size is not None:
            kwargs["size"] = size
        paintings = work / "paintings"
        paintings.mkdir()
        kept = paintings / painting.name
        shutil.copyfile(painting, kept)
        cfg = AddStyleConfig(
            style=str(kept), base=str(base_ckpt), content_dir=str(content), out=str(work / CHECKPOINT_FILE),
            name=name, command=" ".join(sys.argv), **kwargs,
        ).for_model(read_generator_config(base_ckpt).version)  # fmt: skip
        steps_total = cfg.steps or 0
        preview_src = preview_photo(content, PREVIEW_SIZE)
        preview_path = preview_path or work / "preview.jpg"
        started = time.monotonic()
        last_preview = -1e9

        def on_step(step: int, generator: Any) -> None:
            nonlocal last_preview
            now = time.monotonic()
            eta = (now - started) / step * (steps_total - step)
            events("step", step=step, steps=steps_total, eta_s=round(eta, 1))
            if now - last_preview < preview_every_s and step < steps_total:
                return
            last_preview = now
            s = generator.config.num_styles
            w = torch.zeros(1, s)
            w[0, -1] = 1
            with torch.no_grad():
                y = generator(preview_src[None], w)[0].float().clamp(0, 1)
            arr = (y.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
            tmp = preview_path.with_name(preview_path.name + ".tmp")
            Image.fromarray(arr).save(tmp, format="JPEG", quality=85)
            os.replace(tmp, preview_path)  # the server may be reading the previous one
            events("preview", path=str(preview_path), step=step)

        events("started", steps=steps_total, name=name)
        add_style(cfg, progress=False, on_step=on_step)
        events("exporting")
        from trainer.checkpoint import load_checkpoint

        styles = load_checkpoint(work / CHECKPOINT_FILE).style_names
        source = _thumbnail_source(model)
        thumbs: list[Path | None] = [source / f"{i}.jpg" for i in range(len(styles) - 1)]
        thumbs.append(thumbnail(kept, work / "new-thumbnail.jpg"))
        # the previous version's paintings travel with it (the record of what each style came from)
        if (model.parent / "paintings").is_dir():
            for p in (model.parent / "paintings").iterdir():
                if not (paintings / p.name).exists():
                    shutil.copyfile(p, paintings / p.name)
        folder = _publish(models_dir, work, model, styles, shipped, base_sha, f"added {name}", thumbs)
        for scratch in ("new-thumbnail.jpg", "preview.jpg"):
            (folder / scratch).unlink(missing_ok=True)
        events("done", folder=str(folder), styles=styles, seconds=round(time.monotonic() - started, 1))
        return folder
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)


def delete(model: Path, style: str, models_dir: Path, events: Callable[..., None]) -> Path:
    """A new version of ``model`` without the learned style named ``style``; returns its folder."""
    from trainer.checkpoint import Checkpoint, load_generator, save_checkpoint
    from trainer.train import remove_style

    base_ckpt = _checkpoint_of(model)
    base_sha, shipped = lineage(model)
    g, ckpt = load_generator(base_ckpt)
    if style not in ckpt.style_names:
        raise EngineError(f"the model has no style named {style!r}")
    index = ckpt.style_names.index(style)
    if index < shipped:
        raise EngineError(f"{style!r} came with the shipped model and cannot be deleted; only learned styles can")
    events("started", steps=1, name=style)
    started = time.monotonic()
    smaller = remove_style(g, index)
    models_dir.mkdir(parents=True, exist_ok=True)
    work = work_folder(models_dir, WORK_PREFIXES[1])
    try:
        styles = [s for i, s in enumerate(ckpt.styles) if i != index]
        train = {**ckpt.train, "deleted": [*ckpt.train.get("deleted", []), style]}
        save_checkpoint(
            work / CHECKPOINT_FILE,
            Checkpoint(smaller.config, styles, step=ckpt.step, train=train, generator_state=smaller.state_dict()),
        )
        events("exporting")
        source = _thumbnail_source(model)
        thumbs: list[Path | None] = [source / f"{i}.jpg" for i in range(len(ckpt.styles)) if i != index]
        if (model.parent / "paintings").is_dir():
            shutil.copytree(model.parent / "paintings", work / "paintings")
            gone = work / "paintings" / ckpt.styles[index].source
            gone.unlink(missing_ok=True)
        names = [s.name for s in styles]
        folder = _publish(models_dir, work, model, names, shipped, base_sha, f"deleted {style}", thumbs)
        events("done", folder=str(folder), styles=names, seconds=round(time.monotonic() - started, 1))
        return folder
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m engines.learn", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="job", required=True)
    for name, text in (("add", "learn a painting into the model"), ("delete", "delete a learned style")):
        s = sub.add_parser(name, help=text)
        s.add_argument("--model", type=Path, required=True, help="the served model (.onnx; its .safetensors beside)")
        s.add_argument(
            "--models-dir", type=Path, default=DEFAULT_MODELS_DIR,
            help=f"where versions are kept (default: {DEFAULT_MODELS_DIR})",
        )  # fmt: skip
        s.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: all cores)")
        s.add_argument("--nice", type=int, default=19, help="CPU priority increment (default: 19, the lowest)")
        if name == "add":
            s.add_argument("--painting", type=Path, required=True, help="the painting (jpg, png, webp)")
            s.add_argument("--name", help="the style's name (default: from the file name)")
            s.add_argument(
                "--content", type=Path, default=CONTENT_DIR, help="photos to learn on (default: trainer/content)"
            )
            s.add_argument("--steps", type=int, help="optimisation steps (default: add-style's)")
            s.add_argument("--size", type=int, help="crop side in px (default: add-style's)")
            s.add_argument("--preview-every", type=float, default=3.0, help="seconds between previews (default: 3)")
            s.add_argument("--preview", type=Path, help="where the preview JPEG goes (default: in the work folder)")
        else:
            s.add_argument("--style", required=True, help="the learned style's name")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # The job's log (the server keeps it beside the upload): ours at INFO, the exporter's passes not.
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    for ours in ("engines", "trainer"):
        logging.getLogger(ours).setLevel(logging.INFO)
    events = Events()
    # The server cancels a job with SIGTERM: exit through the finally blocks, which remove the work folder.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        if args.nice:
            os.nice(args.nice)
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        if args.job == "add":
            add(
                args.model, args.painting, args.name, args.models_dir, events, content=args.content,
                steps=args.steps, size=args.size, preview_every_s=args.preview_every, preview_path=args.preview,
            )  # fmt: skip
        else:
            delete(args.model, args.style, args.models_dir, events)
    except (EngineError, ValueError, OSError, AssertionError) as e:
        # ValueError: the trainer's data and checkpoint errors; AssertionError: a failed parity check
        log.exception("the job failed")
        events("error", message=str(e))
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
