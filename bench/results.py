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


def write_run(module: str, argv: list[str] | None, body: dict[str, Any], started: float, path: Path) -> Path:
    """``body`` with the record every run carries (the command, date, CPU, run time and platform),
    written by :func:`write_json`. ``module``: ``"bench.x"``; ``argv``: its arguments (None:
    ``sys.argv``); ``started``: ``time.time()`` at the start."""
    import platform
    import sys
    import time

    from common.cpu import cpu_summary

    args = sys.argv[1:] if argv is None else argv
    head = {
        "command": f"python -m {module} " + " ".join(args),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpu": cpu_summary(),
    }
    return write_json({**head, **body, "runtime_s": time.time() - started, "platform": platform.platform()}, path)
