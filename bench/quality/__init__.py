"""Quality bench: style distance, content preservation and video stability, ours vs the peer.

``python -m bench.quality --help`` (``cli.py``) has the commands; the phases live apart:
``models`` (what runs), ``inputs`` (photos, paintings, video), ``scoring`` (the numbers),
``report`` (tables, JSON, targets). Definitions of the metrics: ``bench/metrics.py``.
"""

from __future__ import annotations

from bench.quality.cli import main, run
from bench.quality.models import Model, load_model

__all__ = ["Model", "load_model", "main", "run"]
