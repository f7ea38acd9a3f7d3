"""Image and video quality metrics for stylized output (used by ``bench.quality``).

Every image here is an HxWx3 uint8 RGB array (what a viewer actually gets),
and every function is deterministic. Definitions, in one place (the VGG19 style
and content distances, which the INT8 quality gate uses too, are defined in
``trainer/metrics.py``):

edge agreement (higher is better, 0..1)
    F1 score of Canny edges (grey, Gaussian blur sigma 2, thresholds 40/100
    on 0-255) of output vs input, with a 1-pixel tolerance: an output edge pixel
    counts as correct if an input edge lies within the 3x3 neighbourhood, and
    vice versa for recall. The blur keeps painted brush texture from counting
    as structure; the tolerance forgives one-pixel displacement.

warping error (lower is better)
    For consecutive frames t-1, t: DIS optical flow (medium preset) on the
    grey *input* frames, backward ``f_b`` (t -> t-1) and forward ``f_f``
    (t-1 -> t). The stylized frame t-1 is warped to t with ``f_b``
    (``cv2.remap``, bilinear). A pixel is occluded when the flows disagree
    (Ruder et al. 2016): ``|f_b + f_f(x + f_b)|^2 > 0.01 (|f_b|^2 +
    |f_f(x + f_b)|^2) + 0.5``, or when ``x + f_b`` falls outside the frame.
    Error = mean absolute difference between stylized frame t and the warped
    t-1 over the non-occluded pixels and the three channels, in 0-255 units.
    The flow, the occlusion test and the warp live in ``trainer/flow.py``, which
    the training's temporal loss uses too.

stroke frequency (cycles per frame width; lower means bolder marks)
    How fine the picture's texture is *relative to the frame*, so that two
    renderings of one scene at different sizes can be compared. The image is
    reduced (area) to ``STROKE_ANALYSIS`` (320x240), turned grey, its mean taken
    away and a Hann window applied; over the 2-D power spectrum, with the
    vertical frequency rescaled so a cycle counts the same both ways, the mean
    radial frequency in cycles per frame width, weighted by power, over the
    frequencies of at least ``STROKE_MIN_CYCLES`` (4; lower ones are the scene's
    layout, not its marks). The scene's own detail is in it too, so doubling
    every brush mark does not halve the number: on the shipped v1 model (3
    photos, 3 styles) stroke 2 lowered it by 36-46 % against stroke 1 at
    640x480, and the network run at 320x240 rather than 640x480 (its marks
    twice as large relative to the frame) by 19-38 %.
"""

from __future__ import annotations

import cv2
import numpy as np

from trainer.flow import FlowEstimator, FlowPair, flow_pair_from_flows, warp

EDGE_SIGMA = 2.0  # Gaussian blur before Canny, px
EDGE_THRESHOLDS = (40, 100)  # Canny hysteresis thresholds on the 0-255 grey image
EDGE_TOLERANCE = 1  # px: edges within this distance match
STROKE_ANALYSIS = (320, 240)  # (W, H) every image is reduced to before its spectrum is taken
STROKE_MIN_CYCLES = 4.0  # cycles per frame width: below this it is layout, not marks


# -------------------------------------------------------------------------- edges


def edge_map(image: np.ndarray) -> np.ndarray:
    """Canny edges (bool HxW) of an HxWx3 uint8 RGB image after a Gaussian blur."""
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    grey = cv2.GaussianBlur(grey, (0, 0), EDGE_SIGMA)
    return cv2.Canny(grey, *EDGE_THRESHOLDS) > 0


def edge_f1(out: np.ndarray, ref: np.ndarray, tolerance: int = EDGE_TOLERANCE) -> float:
    """F1 of the edges of ``out`` against those of ``ref`` (1 = same edges), both uint8 RGB."""
    e_out, e_ref = edge_map(out), edge_map(ref)
    n_out, n_ref = int(e_out.sum()), int(e_ref.sum())
    if n_out == 0 and n_ref == 0:
        return 1.0  # two flat images agree perfectly
    if n_out == 0 or n_ref == 0:
        return 0.0
    kernel = np.ones((2 * tolerance + 1, 2 * tolerance + 1), np.uint8)
    near_ref = cv2.dilate(e_ref.astype(np.uint8), kernel) > 0
    near_out = cv2.dilate(e_out.astype(np.uint8), kernel) > 0
    precision = float((e_out & near_ref).sum()) / n_out
    recall = float((e_ref & near_out).sum()) / n_ref
    if precision + recall == 0.0:
        return 0.0
    return 2.0 * precision * recall / (precision + recall)


# -------------------------------------------------------------------------- strokes


def _analysis_grey(image: np.ndarray) -> np.ndarray:
    """A uint8 RGB image as float grey levels at ``STROKE_ANALYSIS``, whatever its size."""
    grey = cv2.cvtColor(cv2.resize(image, STROKE_ANALYSIS, interpolation=cv2.INTER_AREA), cv2.COLOR_RGB2GRAY)
    return grey.astype(np.float64)


def stroke_frequency(image: np.ndarray) -> float:
    """Power-weighted mean spatial frequency of a uint8 RGB image, in cycles per frame width."""
    w, h = STROKE_ANALYSIS
    g = _analysis_grey(image)
    g -= g.mean()
    power = np.abs(np.fft.rfft2(g * np.outer(np.hanning(h), np.hanning(w)))) ** 2
    fy = np.fft.fftfreq(h)[:, None] * w  # cycles per frame *width*, so a cycle is the same length both ways
    fx = np.fft.rfftfreq(w)[None, :] * w
    r = np.broadcast_to(np.hypot(fx, fy), power.shape)
    keep = r >= STROKE_MIN_CYCLES
    total = power[keep].sum()
    if total <= 0.0:
        return float("nan")  # a flat picture has no marks
    return float((power[keep] * r[keep]).sum() / total)


def grey_contrast(image: np.ndarray) -> float:
    """RMS contrast of a uint8 RGB image: the standard deviation of its grey levels at the size
    :func:`stroke_frequency` reads (so pictures of different sizes compare). The frequency alone
    does not see a picture go hazy: finer marks at lower contrast read as the same step."""
    return float(_analysis_grey(image).std())


# -------------------------------------------------------------------------- video

__all__ = [
    "FlowEstimator",
    "FlowPair",
    "edge_f1",
    "edge_map",
    "flow_pair_from_flows",
    "grey_contrast",
    "stroke_frequency",
    "warp",
    "warp_error",
]


def warp_error(prev: np.ndarray, cur: np.ndarray, pair: FlowPair) -> float:
    """Mean |cur - warp(prev)| over valid pixels and channels, 0-255 units (uint8 RGB inputs)."""
    if prev.shape != cur.shape or prev.shape[:2] != pair.valid.shape:
        raise ValueError(f"frames {prev.shape}, {cur.shape} do not match the flow {pair.valid.shape}")
    if not pair.valid.any():
        return float("nan")
    diff = np.abs(cur.astype(np.float32) - warp(prev, pair)).mean(-1)  # [H,W]
    return float(diff[pair.valid].mean())
