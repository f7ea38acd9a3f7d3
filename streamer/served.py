"""The model the server serves, as one immutable object that a new version replaces whole.

Everything that belongs to "the model being served" (the loaded backend, its styles and
presets, the version folder, the model file, the thumbnails, how many styles came with
the shipped model) lives in one frozen :class:`ServedModel`. The server keeps one
reference to it; a learned or deleted style swaps in a new one with a single
assignment (``streamer.app.Server.serve``), and sessions read it through that
reference, so nothing can show the styles of one version with the backend of another.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engines.runtime.base import Backend, EngineError
from engines.runtime.versions import ModelVersion, lineage, version_of
from streamer.mixer import Preset, build_presets


@dataclass(frozen=True)
class ServedModel:
    """One model as served: the backend and everything that describes it (see the module docstring)."""

    backend: Backend
    path: Path  # the model file the backend was loaded from
    thumbnails_dir: Path  # <i>.jpg per style (it may not exist)
    version: ModelVersion | None  # the learned version, None for the model as shipped
    shipped_styles: int  # styles 0..shipped_styles-1 came with the shipped model; the rest were learned
    styles: tuple[str, ...] = field(init=False)
    presets: tuple[Preset, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "styles", tuple(self.backend.styles))
        object.__setattr__(self, "presets", tuple(build_presets(list(self.backend.styles))))

    @classmethod
    def load(cls, backend: Backend, path: Path, thumbnails_dir: Path, remote: bool = False) -> ServedModel:
        """The model at ``path`` (a shipped model or a version folder's), loaded as ``backend``."""
        version = None if remote else version_of(path)
        if version is not None:
            thumbnails_dir = version.thumbnails
        shipped = len(backend.styles)
        if not remote and path.is_file():
            try:
                shipped = lineage(path)[1]
            except EngineError:
                pass
        return cls(backend, path, thumbnails_dir, version, shipped)

    @property
    def backend_info(self) -> dict[str, str]:
        b = self.backend
        return {"name": b.name, "precision": b.precision, "reason": b.reason, "precision_reason": b.precision_reason}

    def thumbnail(self, index: int) -> Path | None:
        """The thumbnail file of style ``index``: ``<i>.jpg`` or ``<style name>.jpg``, if present."""
        if not 0 <= index < len(self.styles):
            return None
        folder = self.thumbnails_dir
        for name in (f"{index}.jpg", f"{self.styles[index]}.jpg"):
            p = folder / name
            # The style name comes from the model file: never let it leave the folder.
            if p.is_file() and p.resolve().parent == folder.resolve():
                return p
        return None

    def styles_json(self) -> list[dict[str, Any]]:
        v = self.version.record.number if self.version else 0
        return [
            {
                "index": i,
                "name": n,
                # the version in the URL: after a delete, index i is another painting
                "thumbnail": f"/styles/{i}.jpg?v={v}" if self.thumbnail(i) else None,
                "learned": i >= self.shipped_styles,
            }
            for i, n in enumerate(self.styles)
        ]
