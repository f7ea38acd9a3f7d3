"""Where the shipped default model lives (``engines/models/``), found from this file.

The packages are installed side by side (editable or not), so ``engines/models``
is always a sibling folder of this package.
"""

from __future__ import annotations

from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parent.parent / "engines" / "models"
DEFAULT_MODEL = MODELS_DIR / "default.onnx"  # what the server, the preview and the benches run
DEFAULT_CHECKPOINT = MODELS_DIR / "default.safetensors"  # the same model as a torch checkpoint
# Credited photos that ship with the code, so learning a new painting works on a fresh clone
# (made by ``python -m trainer.content_set``; the credits are in its CREDITS.md).
CONTENT_DIR = Path(__file__).resolve().parent.parent / "trainer" / "content"


def user_data_dir() -> Path:
    """Where stylecast keeps what it makes at run time (certificates, learned models): $XDG_DATA_HOME/stylecast."""
    import os

    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "stylecast"
