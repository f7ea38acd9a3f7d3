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
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

EDGE_SIGMA = 2.0  # Gaussian blur before Canny, px
EDGE_THRESHOLDS = (40, 100)  # Canny hysteresis thresholds on the 0-255 grey image
EDGE_TOLERANCE = 1  # px: edges within this distance match

# Forward-backward consistency constants from Ruder et al. (2016), flow in px.
OCCLUSION_REL = 0.01
OCCLUSION_ABS = 0.5


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


# -------------------------------------------------------------------------- video


@dataclass
class FlowPair:
    """How to warp frame t-1 onto frame t, and where that warp is trustworthy."""

    remap: np.ndarray  # [H,W,2] float32: absolute (x, y) in frame t-1 for every pixel of frame t
    valid: np.ndarray  # [H,W] bool: not occluded and inside frame t-1

    @property
    def valid_fraction(self) -> float:
        return float(self.valid.mean())


def _grid(h: int, w: int) -> np.ndarray:
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return np.stack([xs, ys], axis=-1)  # [H,W,2] (x, y)


def flow_pair_from_flows(flow_bw: np.ndarray, flow_fw: np.ndarray) -> FlowPair:
    """Warp map and validity mask from backward (t -> t-1) and forward (t-1 -> t) flow.

    ``flow_bw[y, x] = (dx, dy)``: pixel (x, y) of frame t is at (x+dx, y+dy) in
    frame t-1. ``flow_fw`` likewise from frame t-1 to frame t.
    """
    h, w = flow_bw.shape[:2]
    remap = _grid(h, w) + flow_bw.astype(np.float32)
    # The forward flow read at the matched point of t-1: a consistent pair sums to 0.
    fw_at = cv2.remap(flow_fw.astype(np.float32), remap, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    mismatch = ((flow_bw + fw_at) ** 2).sum(-1)
    bound = OCCLUSION_REL * ((flow_bw**2).sum(-1) + (fw_at**2).sum(-1)) + OCCLUSION_ABS
    inside = (remap[..., 0] >= 0) & (remap[..., 0] <= w - 1) & (remap[..., 1] >= 0) & (remap[..., 1] <= h - 1)
    return FlowPair(remap=remap, valid=(mismatch <= bound) & inside)


class FlowEstimator:
    """DIS optical flow (OpenCV, medium preset) between grey input frames."""

    def __init__(self) -> None:
        self.dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)

    def pair(self, prev_rgb: np.ndarray, cur_rgb: np.ndarray) -> FlowPair:
        """Backward and forward flow of two uint8 RGB frames -> :class:`FlowPair`."""
        prev = cv2.cvtColor(prev_rgb, cv2.COLOR_RGB2GRAY)
        cur = cv2.cvtColor(cur_rgb, cv2.COLOR_RGB2GRAY)
        # calc(I0, I1) gives f with I0(x) ~ I1(x + f(x)).
        flow_bw = self.dis.calc(cur, prev, None)
        flow_fw = self.dis.calc(prev, cur, None)
        return flow_pair_from_flows(flow_bw, flow_fw)


def warp(image: np.ndarray, pair: FlowPair) -> np.ndarray:
    """Frame t-1 (uint8 HxWx3) warped onto frame t, as float32 0-255."""
    return cv2.remap(image.astype(np.float32), pair.remap, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def warp_error(prev: np.ndarray, cur: np.ndarray, pair: FlowPair) -> float:
    """Mean |cur - warp(prev)| over valid pixels and channels, 0-255 units (uint8 RGB inputs)."""
    if prev.shape != cur.shape or prev.shape[:2] != pair.valid.shape:
        raise ValueError(f"frames {prev.shape}, {cur.shape} do not match the flow {pair.valid.shape}")
    if not pair.valid.any():
        return float("nan")
    diff = np.abs(cur.astype(np.float32) - warp(prev, pair)).mean(-1)  # [H,W]
    return float(diff[pair.valid].mean())
