"""Frame sizes: ``WIDTHxHEIGHT`` text, one rule everywhere, and fitting a frame into a box.

A size is ``WIDTHxHEIGHT`` in pixels (``640x480``), returned as ``(width, height)``,
each side within ``MIN_SIDE..MAX_SIDE``. Used by the server's options and control
messages, the preview, the engine builder and the benches. Errors are
``ValueError`` with a message that says what was expected.
"""

from __future__ import annotations

MIN_SIDE = 16
MAX_SIDE = 4096


def parse_size(text: str) -> tuple[int, int]:
    """``"640x480"`` -> ``(640, 480)``: (width, height) in pixels."""
    try:
        w_text, h_text = text.strip().lower().split("x")
        w, h = int(w_text), int(h_text)
    except (ValueError, AttributeError):
        raise ValueError(f"a size must look like 640x480 (WIDTHxHEIGHT, pixels), got {text!r}") from None
    if not (MIN_SIDE <= w <= MAX_SIDE and MIN_SIDE <= h <= MAX_SIDE):
        raise ValueError(f"a size must be between {MIN_SIDE}x{MIN_SIDE} and {MAX_SIDE}x{MAX_SIDE}, got {text!r}")
    return w, h


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """``"320x240,640x480"`` -> ``[(320, 240), (640, 480)]``; at least one size."""
    sizes = [parse_size(part) for part in text.split(",") if part.strip()]
    if not sizes:
        raise ValueError(f"give at least one size like 640x480, got {text!r}")
    return sizes


def format_size(size: tuple[int, int]) -> str:
    """``(640, 480)`` -> ``"640x480"``."""
    return f"{size[0]}x{size[1]}"


def fit_size(width: int, height: int, box: tuple[int, int], multiple: int = 4) -> tuple[int, int]:
    """The size of a ``width`` x ``height`` frame scaled down (aspect kept) to fit inside ``box`` (w, h).

    The scaled size is rounded down to multiples of ``multiple`` (the network's stride,
    so the backend needs no padding). Never scaled up: a frame that already fits keeps its size.
    """
    bw, bh = box
    if width <= bw and height <= bh:
        return width, height
    scale = min(bw / width, bh / height)
    w = max(multiple, int(width * scale) // multiple * multiple)
    h = max(multiple, int(height * scale) // multiple * multiple)
    return w, h
