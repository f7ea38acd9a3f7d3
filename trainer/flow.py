"""Optical flow between real video frames: for the temporal loss in training and the warping error in the benches.

DIS optical flow (OpenCV, medium preset) on grey frames, backward (t -> t-1)
and forward (t-1 -> t). A pixel is occluded when the two disagree (Ruder et
al. 2016): ``|f_b + f_f(x + f_b)|^2 > 0.01 (|f_b|^2 + |f_f(x + f_b)|^2) + 0.5``,
or when ``x + f_b`` falls outside the frame. Frames are HxWx3 uint8 RGB.

:class:`VideoPairs` serves training: random crops of two consecutive frames of
a real video (only the frames ``common.split`` lets training use), with the
warp between them as a ``grid_sample`` grid and the mask where it holds.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from common.split import video_train_frames

# OpenCV's type stubs lack DIS and reject remap's optional second map (None): typed loosely here only.
_cv: Any = cv2

log = logging.getLogger(__name__)

# Forward-backward consistency constants from Ruder et al. (2016), flow in px.
OCCLUSION_REL = 0.01
OCCLUSION_ABS = 0.5


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
    fw_at = _cv.remap(flow_fw.astype(np.float32), remap, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    mismatch = ((flow_bw + fw_at) ** 2).sum(-1)
    bound = OCCLUSION_REL * ((flow_bw**2).sum(-1) + (fw_at**2).sum(-1)) + OCCLUSION_ABS
    inside = (remap[..., 0] >= 0) & (remap[..., 0] <= w - 1) & (remap[..., 1] >= 0) & (remap[..., 1] <= h - 1)
    return FlowPair(remap=remap, valid=(mismatch <= bound) & inside)


class FlowEstimator:
    """DIS optical flow (OpenCV, medium preset) between grey input frames."""

    def __init__(self) -> None:
        self.dis = _cv.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)

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
    return _cv.remap(image.astype(np.float32), pair.remap, None, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


# ----------------------------------------------------------------------------- training


@dataclass
class FramePairs:
    """A batch of consecutive-frame crops and the warp from the first onto the second."""

    prev: torch.Tensor  # [B,3,H,W] in [0,1]
    cur: torch.Tensor  # [B,3,H,W] in [0,1]
    grid: torch.Tensor  # [B,H,W,2] grid_sample coordinates in prev for every pixel of cur (align_corners=True)
    valid: torch.Tensor  # [B,1,H,W] 1 where the warp holds (not occluded, inside prev)


def remap_to_grid(remap: np.ndarray) -> torch.Tensor:
    """Absolute (x, y) pixel positions [H,W,2] -> grid_sample's [-1, 1] coordinates (align_corners=True)."""
    h, w = remap.shape[:2]
    grid = remap.astype(np.float32).copy()
    grid[..., 0] = grid[..., 0] * (2.0 / max(w - 1, 1)) - 1.0
    grid[..., 1] = grid[..., 1] * (2.0 / max(h - 1, 1)) - 1.0
    return torch.from_numpy(grid)


def warp_torch(image: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """[B,C,H,W] frame t-1 warped onto frame t with a :func:`remap_to_grid` grid (bilinear, border)."""
    return F.grid_sample(image, grid.to(image.dtype), mode="bilinear", padding_mode="border", align_corners=True)


class VideoPairs:
    """Consecutive frames of a real video, decoded once at a working size, for the flow-based temporal loss.

    Only the frames :func:`common.split.video_train_frames` allows are read; the rest of the
    video is the benches' held-out footage. ``short`` is the working short side (480: the frames
    are what a 640x480 camera gives).
    """

    def __init__(self, path: str | Path, short: int = 480, max_frames: int | None = None) -> None:
        cap = cv2.VideoCapture(str(path))
        if not cap.isOpened():
            raise ValueError(f"cannot open video {path}")
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        allowed = video_train_frames(total)
        keep = len(allowed) if max_frames is None else min(len(allowed), max_frames)
        frames: list[np.ndarray] = []
        while len(frames) < keep:
            ok, bgr = cap.read()
            if not ok:
                break
            h, w = bgr.shape[:2]
            s = short / min(h, w)
            bgr = cv2.resize(bgr, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA)
            frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        cap.release()
        if len(frames) < 2:
            raise ValueError(f"{path}: need at least 2 frames for the temporal loss, got {len(frames)}")
        self.frames = frames
        self.path = Path(path)
        self.total = total
        self.flow = FlowEstimator()
        log.info("video %s: %d of %d frames for training (the rest is held out)", path, len(frames), total)

    def __len__(self) -> int:
        return len(self.frames)

    def batch(self, n: int, size: int, rng: random.Random) -> FramePairs:
        """``n`` random ``size`` x ``size`` crops of frame pairs (t, t+1), same window in both, random flips."""
        prev, cur, grids, valid = [], [], [], []
        for _ in range(n):
            t = rng.randrange(len(self.frames) - 1)
            a, b = self.frames[t], self.frames[t + 1]
            h, w = a.shape[:2]
            side = min(size, h, w)
            y, x = rng.randint(0, h - side), rng.randint(0, w - side)
            a, b = a[y : y + side, x : x + side], b[y : y + side, x : x + side]
            if rng.random() < 0.5:
                a, b = a[:, ::-1], b[:, ::-1]
            if rng.random() < 0.5:  # time reversed: the motion the other way is just as real
                a, b = b, a
            a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
            pair = self.flow.pair(a, b)
            prev.append(torch.from_numpy(a).permute(2, 0, 1))
            cur.append(torch.from_numpy(b).permute(2, 0, 1))
            grids.append(remap_to_grid(pair.remap))
            valid.append(torch.from_numpy(pair.valid.astype(np.float32))[None])
        return FramePairs(
            prev=torch.stack(prev).float() / 255.0,
            cur=torch.stack(cur).float() / 255.0,
            grid=torch.stack(grids),
            valid=torch.stack(valid),
        )
