"""Scoring: every model's outputs on the photos (style, content, edges) and on the video (warping error)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from bench.metrics import FlowPair, edge_f1, warp_error
from bench.peer import PEER_STYLES
from bench.quality.models import Model, Stylize
from trainer.losses import STYLE_LAYERS
from trainer.metrics import VggMetrics, VggStats, content_distance, style_distance_layers


@dataclass
class Painting:
    """One reference style: the name, the painting's file name, its path and VGG Grams."""

    name: str
    source: str
    path: Path
    grams: dict[str, Any]


@dataclass
class PhotoScores:
    """Scores of one model's outputs on P photos for W style-weight vectors."""

    style: np.ndarray  # [P,W,K] style distance of output w to each of the K paintings
    style_layers: np.ndarray  # [P,W,K,4] the same per VGG layer
    content: np.ndarray  # [P,W]
    edge: np.ndarray  # [P,W]

    def take(self, cols: list[int]) -> PhotoScores:
        """Only the weight vectors ``cols`` (in that order)."""
        return PhotoScores(self.style[:, cols], self.style_layers[:, cols], self.content[:, cols], self.edge[:, cols])

    def stack(self, other: PhotoScores) -> PhotoScores:
        """More photos, same weight vectors."""
        return PhotoScores(*(np.concatenate([a, b]) for a, b in zip(self.astuple(), other.astuple(), strict=True)))

    def astuple(self) -> tuple[np.ndarray, ...]:
        return self.style, self.style_layers, self.content, self.edge


@dataclass(frozen=True)
class FootageScore:
    """A model's scores on the footage for one style-weight vector, all 0-255."""

    warp: float  # mean warping error over consecutive pairs (flow of the input frames)
    warp_low: float  # the same on the frames blurred (``low_pass``): regional change, not texture
    contrast: float  # mean per-frame grey-level std of the output
    strength: float  # mean |output - input|


@dataclass(frozen=True)
class VideoScore(FootageScore):
    """:class:`FootageScore` and the warping error under a known pan (no flow)."""

    pan: float


def low_pass(image: np.ndarray) -> np.ndarray:
    """``image`` blurred with a Gaussian of sigma = its short side / 80 (6 px at 480), float32: what is
    left is regions of colour and light, not brush marks or texture."""
    return cv2.GaussianBlur(image.astype(np.float32), (0, 0), min(image.shape[:2]) / 80)


@dataclass
class Result:
    """One model's scores, column j being the style it uses for painting j."""

    model: Model
    weights: list[np.ndarray]  # [K] style-weight vectors, one per painting
    photo: PhotoScores  # W == K, in painting order
    mix: np.ndarray | None = None  # weights of the mix (video only)
    video: list[VideoScore] = field(default_factory=list)  # [K] one per painting (empty: photos only)
    warp_mix: float | None = None

    def video_mean(self, name: str) -> float | None:
        """The mean over the paintings of one :class:`VideoScore` field; None without video."""
        return float(np.mean([getattr(v, name) for v in self.video])) if self.video else None

    def style_distance(self) -> np.ndarray:
        """[P,K]: output for painting j vs painting j."""
        k = len(self.weights)
        return np.stack([self.photo.style[:, j, j] for j in range(k)], axis=1)


def score_photos(
    model: Model,
    photos: list[np.ndarray],
    weights: list[np.ndarray],
    paintings: list[Painting],
    input_stats: list[VggStats],
    vgg: VggMetrics,
    bar: tqdm,
) -> PhotoScores:
    """Stylize every photo with every weight vector; score against every painting and the input."""
    p, w, k = len(photos), len(weights), len(paintings)
    scores = PhotoScores(
        np.zeros((p, w, k)), np.zeros((p, w, k, len(STYLE_LAYERS))), np.zeros((p, w)), np.zeros((p, w))
    )
    for pi, img in enumerate(photos):
        for wi, weight in enumerate(weights):
            out = model.stylize(img, weight)
            st = vgg.stats(out)
            for ki, painting in enumerate(paintings):
                per_layer = style_distance_layers(st.grams, painting.grams)
                scores.style_layers[pi, wi, ki] = [per_layer[name] for name in STYLE_LAYERS]
                scores.style[pi, wi, ki] = float(np.mean(scores.style_layers[pi, wi, ki]))
            scores.content[pi, wi] = content_distance(st.content, input_stats[pi].content)
            scores.edge[pi, wi] = edge_f1(out, img)
            bar.update(1)
    return scores


def score_peer(
    peer: Model,
    photos: list[np.ndarray],
    n_screen: int,
    paintings: list[Painting],
    input_stats: list[VggStats],
    vgg: VggMetrics,
    bar: tqdm,
) -> tuple[Result, PhotoScores]:
    """The peer's best case for each painting, and the screening scores of all its styles.

    All 26 peer styles are tried on the first ``n_screen`` photos; for painting j
    the style with the lowest mean style distance there is its match, which is
    then also run on the remaining photos.
    """
    all_styles = [peer.one_hot(i) for i in range(PEER_STYLES)]
    screen = score_photos(peer, photos[:n_screen], all_styles, paintings, input_stats[:n_screen], vgg, bar)
    mean_style = screen.style.mean(0)  # [26,K]
    match = [int(np.argmin(mean_style[:, j])) for j in range(len(paintings))]
    distinct = sorted(set(match))
    bar.total -= (len(photos) - n_screen) * (len(paintings) - len(distinct))  # shared matches run once
    rest = score_photos(
        peer, photos[n_screen:], [all_styles[i] for i in distinct], paintings, input_stats[n_screen:], vgg, bar
    )
    photo = screen.take(match).stack(rest.take([distinct.index(i) for i in match]))
    return Result(peer, [all_styles[i] for i in match], photo), screen


def video_scores(
    stylize: Stylize | None, weights: np.ndarray | None, frames: list[np.ndarray], pairs: list[FlowPair], bar: tqdm
) -> FootageScore:
    """The warping error over consecutive pairs, as the frames are and low-passed (:func:`low_pass`),
    the mean grey-level std and the strength, all 0-255.

    ``stylize=None`` scores the input frames themselves. The contrast and the strength (mean
    |output - input|) are there to read the warping error by: a model that does little, or
    a flat, washed-out output, has little to flicker. The low-passed error splits the flicker:
    what is left of it is whole regions changing (colour or light shifting from frame to frame),
    the rest is marks and texture that do not follow the scene.
    """
    errors: list[float] = []
    low: list[float] = []
    contrast: list[float] = []
    strength: list[float] = []
    prev: tuple[np.ndarray, np.ndarray] | None = None  # the last frame as it is and low-passed
    for t, frame in enumerate(frames):
        cur = frame if stylize is None or weights is None else stylize(frame, weights)
        cur_low = low_pass(cur)
        contrast.append(float(cv2.cvtColor(cur, cv2.COLOR_RGB2GRAY).std()))
        strength.append(float(np.abs(cur.astype(np.float32) - frame.astype(np.float32)).mean()))
        if prev is not None:
            errors.append(warp_error(prev[0], cur, pairs[t - 1]))
            low.append(warp_error(prev[1], cur_low, pairs[t - 1]))
        prev = cur, cur_low
        bar.update(1)
    return FootageScore(*(float(np.mean(v)) for v in (errors, low, contrast, strength)))


def pan_score(
    stylize: Stylize | None, weights: np.ndarray | None, clips: list[list[np.ndarray]], step: int, bar: tqdm
) -> float:
    """Warping error under a known camera motion: clips of a photo panning ``step`` px a frame.

    Frame t at column x shows what frame t-1 showed at x + ``step`` (``inputs.pan_frames``), so
    the error is mean |S_t[:, :-step] - S_t-1[:, step:]| over every pixel: no flow estimate, no
    occlusion. ``stylize=None`` scores the input clips (exactly 0).
    """
    errors: list[float] = []
    for clip in clips:
        prev: np.ndarray | None = None
        for frame in clip:
            cur = (frame if stylize is None or weights is None else stylize(frame, weights)).astype(np.float32)
            if prev is not None:
                errors.append(float(np.abs(cur[:, :-step] - prev[:, step:]).mean()))
            prev = cur
            bar.update(1)
    return float(np.mean(errors))
