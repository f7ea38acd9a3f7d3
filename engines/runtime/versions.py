"""Model versions: the shipped model plus the styles users learned into it, one folder per version.

A models folder (``--models-dir``, default ``~/.local/share/stylecast/models``) holds::

    v0001/model.onnx           the whole generator, exported and parity-checked
    v0001/model.safetensors    its checkpoint (what the next version is learned from)
    v0001/thumbnails/<i>.jpg   one per style, as the shipped model folder has them
    v0001/paintings/<file>     the painting each added style was learned from
    v0001/version.json         what changed, from which parent, on top of which shipped model

Each version grows from the one served before it; its ``base_sha256`` names the
shipped ONNX file the line started from, so a server started with another
``--model`` never picks up versions that are not its own. The server serves the
newest version of its own line (:func:`latest`). Folders appear whole: a version is
written under a temporary name and renamed (``engines.learn``). Nothing here
needs torch, so the server reads versions with the serving extra alone.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from engines.runtime.base import EngineError
from engines.runtime.model import file_sha256

VERSION_FILE = "version.json"
ONNX_FILE = "model.onnx"
CHECKPOINT_FILE = "model.safetensors"
FOLDER = re.compile(r"^v(\d{4,})$")
# A version in the making lives in a work folder with one of these prefixes and the pid of the
# process writing it (PID_FILE), until it is renamed vNNNN; a folder whose process is gone is litter.
WORK_PREFIXES = (".learning-", ".deleting-")
PID_FILE = "pid"


@dataclass(frozen=True)
class VersionRecord:
    """What ``version.json`` holds."""

    number: int
    base_sha256: str  # sha256 of the shipped ONNX file this line of versions grew from
    parent: str  # the model this version was made from (a path)
    styles: tuple[str, ...]
    shipped_styles: int  # the first this many styles came with the shipped model: not deletable
    change: str  # "added NAME" or "deleted NAME"
    created: str  # ISO time

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "styles": list(self.styles)}


@dataclass(frozen=True)
class ModelVersion:
    """One version folder and its record."""

    folder: Path
    record: VersionRecord

    @property
    def onnx(self) -> Path:
        return self.folder / ONNX_FILE

    @property
    def checkpoint(self) -> Path:
        return self.folder / CHECKPOINT_FILE

    @property
    def thumbnails(self) -> Path:
        return self.folder / "thumbnails"

    @classmethod
    def read(cls, folder: Path) -> ModelVersion:
        path = folder / VERSION_FILE
        try:
            raw = json.loads(path.read_text())
            record = VersionRecord(**{**raw, "styles": tuple(raw["styles"])})
        except (OSError, ValueError, TypeError, KeyError) as e:
            raise EngineError(f"model version {folder} is unreadable: {e}") from e
        return cls(folder, record)


def versions(models_dir: Path, base_sha256: str) -> list[ModelVersion]:
    """The complete versions under ``models_dir`` grown from the shipped model ``base_sha256``, oldest first."""
    if not models_dir.is_dir():
        return []
    found: list[ModelVersion] = []
    for folder in sorted(models_dir.iterdir()):
        if not (FOLDER.match(folder.name) and (folder / VERSION_FILE).is_file() and (folder / ONNX_FILE).is_file()):
            continue
        try:
            v = ModelVersion.read(folder)
        except EngineError:
            continue  # a damaged folder is skipped, not served
        if v.record.base_sha256 == base_sha256:
            found.append(v)
    return sorted(found, key=lambda v: v.record.number)


def latest(models_dir: Path, base_model: Path) -> ModelVersion | None:
    """The newest version grown from ``base_model`` (the shipped ONNX file), or None."""
    if not base_model.is_file():
        return None
    found = versions(models_dir, file_sha256(base_model))
    return found[-1] if found else None


def next_number(models_dir: Path) -> int:
    """The number the next version folder gets (one past the highest in use, whatever its line)."""
    numbers = [int(m.group(1)) for p in models_dir.glob("v*") if (m := FOLDER.match(p.name))]
    return max(numbers, default=0) + 1


def version_of(model: Path) -> ModelVersion | None:
    """The version whose ONNX file ``model`` is, or None (a shipped model, or any other file)."""
    if model.name == ONNX_FILE and (model.parent / VERSION_FILE).is_file():
        return ModelVersion.read(model.parent)
    return None


def lineage(model: Path) -> tuple[str, int]:
    """(base sha256, shipped style count) of the line ``model`` belongs to: its version record's
    if ``model`` is a version's ONNX file, else its own (a shipped model starts a line)."""
    version = version_of(model)
    if version is not None:
        return version.record.base_sha256, version.record.shipped_styles
    from engines.runtime.model import read_model_info

    return file_sha256(model), len(read_model_info(model).styles)
