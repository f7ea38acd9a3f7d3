"""Where every bench writes its JSON (``bench/results/`` by default), atomically: a killed run keeps the old file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def write_json(result: dict[str, Any], path: Path) -> Path:
    """``result`` as indented JSON at ``path`` (through a temp file and a rename); returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    tmp.replace(path)
    return path
