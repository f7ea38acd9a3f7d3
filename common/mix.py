"""Style mixes on the command line: one rule everywhere.

A mix is ``KEY:WEIGHT`` entries separated by commas (``"0:0.5,The Starry Night:0.5"``),
a bare ``KEY`` meaning weight 1. A key is a style's name or, failing that, its index.
Weights are finite and non-negative, at least one positive; styles not named get 0.
The weights come back as given (not normalised: the network normalises them).
Used by the preview, the trainer's ``sample --mix``, the server's control messages
(for the style keys) and the benches. Errors are ``ValueError`` saying what was expected.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def style_index(key: str, styles: Sequence[str]) -> int:
    """A style named by its name (first) or its index in ASCII digits -> the index.

    Only ASCII digits make an index: ``str.isdigit`` also accepts '\u0669' (Arabic-Indic nine)
    and '\u00b2', which ``int()`` reads as 9 or refuses with its own message.
    """
    if key in styles:
        return list(styles).index(key)
    if key.isascii() and key.isdigit():
        idx = int(key)
        if idx < len(styles):
            return idx
        raise ValueError(f"style index {idx} out of range: the model has {len(styles)} styles (0..{len(styles) - 1})")
    raise ValueError(f"unknown style {key!r}; the styles are {', '.join(styles)}")


def parse_mix(text: str, styles: Sequence[str]) -> list[float]:
    """``"0:0.5,moss:0.5"`` / ``"moss"`` -> one weight per style (styles not named: 0)."""
    weights = [0.0] * len(styles)
    named: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        key, sep, value = part.rpartition(":")
        if not sep:
            key, value = part, "1"
        idx = style_index(key.strip(), styles)
        if idx in named:
            raise ValueError(f"style {styles[idx]!r} is named twice in the mix {text!r}")
        named.add(idx)
        try:
            weight = float(value)
        except ValueError:
            raise ValueError(f"the weight of {key.strip()!r} must be a number, got {value.strip()!r}") from None
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"the weight of {key.strip()!r} must be a finite non-negative number, got {value!r}")
        weights[idx] = weight
    if not any(w > 0 for w in weights):
        raise ValueError(f"the mix {text!r} gives no style a positive weight (like 0:1 or 'STYLE NAME:0.5')")
    return weights
