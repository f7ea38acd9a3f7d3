"""The bench's report: Markdown tables, the JSON per model, and the targets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from bench.quality.scoring import Painting, Result
from trainer.losses import STYLE_LAYERS

TARGET_WARP_GAIN = 0.30  # spec: warping error at least 30% lower than the peer's


@dataclass
class Row:
    """One line of the table."""

    label: str
    style: float
    content: float
    edge: float
    warp: float
    warp_vs_peer: float | None
    contrast: float
    note: str = ""


def fmt(v: float | None, spec: str) -> str:
    if v is None or not np.isfinite(v):
        return "-"
    return format(v, spec)


def markdown_table(rows: list[Row]) -> str:
    head = (
        "| model | style dist ↓ | content dist ↓ | edge F1 ↑ | warp error ↓ (0-255) | warp vs peer ↑ "
        "| video contrast (grey std) | notes |\n"
        "|---|---:|---:|---:|---:|---:|---:|---|"
    )
    lines = [head]
    for r in rows:
        vs = "-" if r.warp_vs_peer is None else f"{r.warp_vs_peer:+.0%}"
        lines.append(
            f"| {r.label} | {fmt(r.style, '.3f')} | {fmt(r.content, '.3f')} | {fmt(r.edge, '.3f')} "
            f"| {fmt(r.warp, '.2f')} | {vs} | {fmt(r.contrast, '.1f')} | {r.note} |"
        )
    return "\n".join(lines)


def per_style_table(model_json: dict[str, dict[str, Any]], paintings: list[Painting]) -> str:
    """Markdown: one row per painting, style distance and warping error of every model."""
    labels = list(model_json)
    head = "| style | " + " | ".join(f"{m} style / warp" for m in labels) + " |"
    lines = [head, "|---|" + "---:|" * len(labels)]
    for j, p in enumerate(paintings):
        cells = []
        for m in labels:
            ps = model_json[m]["per_style"][j]
            peer_note = f" (#{ps['peer_style']})" if ps["peer_style"] is not None else ""
            cells.append(f"{ps['style_distance']:.3f} / {ps['warp_error']:.2f}{peer_note}")
        lines.append(f"| {p.name} | " + " | ".join(cells) + " |")
    mix = [model_json[m]["summary"]["warp_error_mix"] for m in labels]
    if all(v is not None for v in mix):
        lines.append("| mix (video only) | " + " | ".join(f"- / {v:.2f}" for v in mix) + " |")
    return "\n".join(lines)


def layer_dict(values: np.ndarray) -> dict[str, float]:
    return dict(zip(STYLE_LAYERS, (float(v) for v in values), strict=True))


def result_json(res: Result, paintings: list[Painting], peer: Result | None) -> dict[str, Any]:
    """Summary and per-style details of one model."""
    style = res.style_distance()
    per_style = []
    for j, p in enumerate(paintings):
        per_style.append(
            {
                "style": p.name,
                "painting": p.source,
                "weights": res.weights[j].tolist() if res.model.is_peer else None,
                "peer_style": int(np.argmax(res.weights[j])) if res.model.is_peer else None,
                "style_distance": float(style[:, j].mean()),
                "style_distance_layers": layer_dict(res.photo.style_layers[:, j, j].mean(0)),
                "content_distance": float(res.photo.content[:, j].mean()),
                "edge_f1": float(res.photo.edge[:, j].mean()),
                "warp_error": res.warp[j],
                "video_contrast": res.contrast[j],
                "warp_vs_peer": (1.0 - res.warp[j] / peer.warp[j]) if peer and not res.model.is_peer else None,
            }
        )
    warp = float(np.mean(res.warp))
    peer_warp = float(np.mean(peer.warp)) if peer else None
    return {
        "path": str(res.model.path),
        "runtime": res.model.runtime,
        "step": res.model.step,
        "summary": {
            "style_distance": float(style.mean()),
            "content_distance": float(res.photo.content.mean()),
            "edge_f1": float(res.photo.edge.mean()),
            "warp_error": warp,
            "video_contrast": float(np.mean(res.contrast)),
            "warp_vs_peer": (1.0 - warp / peer_warp) if peer_warp and not res.model.is_peer else None,
            "warp_error_mix": res.warp_mix,
            "warp_vs_peer_mix": (1.0 - res.warp_mix / peer.warp_mix)
            if peer and peer.warp_mix and res.warp_mix is not None and not res.model.is_peer
            else None,
        },
        "per_style": per_style,
    }


def check_targets(summaries: dict[str, dict[str, Any]], nogan: str) -> list[dict[str, Any]]:
    """The spec's targets for every model but the no-GAN one."""
    targets: list[dict[str, Any]] = []
    base = summaries.get(nogan)
    for label, s in summaries.items():
        if label in (nogan, "peer"):
            continue
        if s["warp_vs_peer"] is not None:
            targets.append(
                {
                    "model": label,
                    "target": f"warping error >= {TARGET_WARP_GAIN:.0%} lower than the peer's",
                    "value": s["warp_vs_peer"],
                    "met": bool(s["warp_vs_peer"] >= TARGET_WARP_GAIN),
                }
            )
        if base is not None:
            for key, what in (("style_distance", "style distance"), ("content_distance", "content distance")):
                targets.append(
                    {
                        "model": label,
                        "target": f"{what} not worse than {nogan} ({base[key]:.3f})",
                        "value": s[key],
                        "met": bool(s[key] <= base[key]),
                    }
                )
    return targets


DEFINITIONS = {
    "style_distance": "mean over relu1_1..relu4_1 of ||G(out)-G(painting)||_F^2 / ||G(painting)||_F^2 (VGG19 Grams)",
    "content_distance": "||relu4_1(out)-relu4_1(in)||^2 / ||relu4_1(in)||^2",
    "edge_f1": "F1 of Canny edges (blur sigma 2, thresholds 40/100) with 1 px tolerance, output vs input",
    "warp_error": "mean |S_t - warp(S_t-1)| over non-occluded pixels, 0-255, DIS flow of the input frames",
    "warp_vs_peer": "1 - ours/peer, mean warping error over the same paintings",
    "video_contrast": "mean over frames of the grey-level standard deviation of the output, 0-255 (flat output "
    "flickers less: read the warping error with it)",
    "peer": "for each painting, the peer style with the lowest mean style distance on the first peer_screen "
    "photos (its best case), then run on every photo",
}
