"""Post-training static INT8 quantization of an exported model, shipped only if it keeps the picture.

    python -m engines quantize engines/models/default.onnx --calib photos/ --out engines/models/default.int8.onnx

The photos are split: most calibrate (the activation ranges of every quantized
layer, each photo with one style or an even mix), a held-out part (every
``len/holdout``-th photo) judges. Photos of the project's held-out split
(``common.split``), and copies of them, are never used: the benches judge on them.
Two quantizers are tried where installed and the better one is kept:

* ONNX Runtime's ``quantize_static`` (QDQ format, per-channel int8 weights, int8
  activations, MinMax ranges);
* NNCF (``pip install nncf``), OpenVINO's own quantizer, on the ONNX graph.

Only the convolutions that mix channels are quantized: the uint8 input and output
conversions, the style-affine MatMul, the instance norms and the per-channel (grouped)
convolutions (v1's depthwise ones, v2's blur) stay in float, where rounding them would
shift colours (the norms' statistics), mix styles wrongly or add a rounding for no speed
(:func:`conv_names`). Where rounding
every convolution misses the PSNR floor, the convolutions whose rounding costs
the most are kept in float, fewest first (at most ``--max-float-convs``, and never
more than a quarter of them; :func:`float_search`): measured on the runtime's
precision probe and the eight calibration photos that rounding every convolution
hurts most, the convolution whose move to float (beside those already kept) lowers
the squared error most is kept next (:func:`greedy_float`), and the search stops at
the floor plus ``FLOAT_SEARCH_MARGIN_DB`` (another
CPU's int8 kernels round a little differently, and the runtime gate measures again
on the serving machine). Weights are quantized to signed int8 per channel, activations
per tensor, symmetrically (zero points 0): signed int8, except that an activation that can
never be negative (a ReLU's output, through pads and the blur) is uint8, one bit finer
(:func:`unsigned_where_nonnegative`). TensorRT takes only signed int8 Q/DQ; its build
makes those signed over the same range (``engines.tensorrt_rules.tensorrt_form``), so the
same file serves OpenVINO and ONNX Runtime on the CPU and TensorRT on a GPU (a convolution
kept in float runs there in float32, as the strongly typed graph says). A result whose
TensorRT form breaks one of TensorRT's graph rules (``engines.tensorrt_rules``) is not written.

The quality gate, on the held-out photos, every style and two mixes, and on the
runtime's own precision probe (``engines.runtime.precision``, so that a file written
here is one ``load_backend``'s auto accepts on this machine): PSNR against
the float32 output at least ``--psnr-floor`` dB on every image, and the quality bench's style
and content distance (``trainer.metrics``) at most ``--max-loss`` (5 %) worse than
float32's. A model that misses is not written, and the command says by how much.
The speed (OpenVINO, int8 vs the best float precision here, interleaved) is
reported beside it; ``load_backend`` uses an INT8 model only where it measures
faster.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnx
from PIL import Image, ImageOps

from common.cpu import cpu_bf16_flag
from common.sizes import format_size, parse_size
from common.split import held_out
from engines.runtime.base import EngineError
from engines.runtime.model import META_PREFIX, read_model_info
from engines.runtime.precision import INT8_MAX_FLOAT_CONVS, INT8_MAX_QUALITY_LOSS, PSNR_FLOOR, psnr, run_probe
from engines.tensorrt_rules import check_file, tensorrt_form
from trainer.data import find_painting, load_rgb, training_files

log = logging.getLogger(__name__)

METHODS = ("onnxruntime", "nncf")
MAX_QUALITY_LOSS = INT8_MAX_QUALITY_LOSS  # int8 style/content distance may be this much (relative) worse
MAX_FLOAT_CONVS = INT8_MAX_FLOAT_CONVS  # convolutions the search may keep in float where all-int8 misses
FLOAT_SEARCH_MARGIN_DB = 1.0  # the search aims this far above the floor: other CPUs round int8 differently
RANKING_PHOTOS = 8  # calibration photos (with the probe) the search ranks convolutions on


class QuantizeError(EngineError):
    """Quantization could not be done (no photos, no quantizer) or its result missed the gate."""


@dataclass
class Gate:
    """How one quantized model measured against float32 on the held-out photos."""

    method: str
    psnr_min_db: float
    psnr_mean_db: float
    style_fp32: float
    style_int8: float
    content_fp32: float
    content_int8: float
    ms_int8: float = float("nan")  # OpenVINO, one frame at the speed size
    ms_float: float = float("nan")  # OpenVINO at the best float precision here
    float_precision: str = "fp32"
    misses: list[str] = field(default_factory=list)
    tensorrt: list[str] = field(default_factory=list)  # TensorRT graph rules the result breaks
    float_convs: list[str] = field(default_factory=list)  # convolutions kept in float by the search

    @property
    def passed(self) -> bool:
        return not self.misses

    def judge(self, psnr_floor: float, max_loss: float) -> None:
        self.misses = [f"not a graph TensorRT can build: {p}" for p in self.tensorrt]
        if self.psnr_min_db < psnr_floor:
            self.misses.append(
                f"PSNR {self.psnr_min_db:.1f} dB on the worst held-out image, {psnr_floor - self.psnr_min_db:.1f} dB "
                f"below the floor {psnr_floor:g}"
            )
        for what, f32, i8 in (
            ("style", self.style_fp32, self.style_int8),
            ("content", self.content_fp32, self.content_int8),
        ):
            loss = i8 / f32 - 1.0 if f32 > 0 else 0.0
            if loss > max_loss:
                self.misses.append(
                    f"{what} distance {i8:.4f} vs {f32:.4f} in fp32: {loss:.1%} worse, allowed {max_loss:.0%}"
                )


# ----------------------------------------------------------------------------- data


def photo_frames(paths: list[Path], size: tuple[int, int]) -> list[np.ndarray]:
    """Photos as ``size`` (w, h) uint8 RGB frames: scaled to cover, centre-cropped."""
    return [np.array(ImageOps.fit(load_rgb(p), size, Image.Resampling.LANCZOS), dtype=np.uint8) for p in paths]


def split_photos(folder: Path, calib: int, holdout: int) -> tuple[list[Path], list[Path]]:
    """(calibration photos, held-out photos): every k-th photo held out, the rest calibrate.

    Only photos that training may use (``trainer.data.training_files``): the project's
    held-out split is for the benches, and calibrating on it would fit ranges to it."""
    photos = training_files(folder, held_out)
    if len(photos) < 2:
        raise QuantizeError(
            f"{folder} has {len(photos)} photos (jpg, png, webp) outside the held-out split; at least 2 are needed"
        )
    holdout = max(1, min(holdout, len(photos) // 2))
    step = len(photos) / holdout
    held = {int(i * step + step / 2) for i in range(holdout)}
    rest = [p for i, p in enumerate(photos) if i not in held]
    pick = np.linspace(0, len(rest) - 1, min(calib, len(rest))).round().astype(int)
    return [rest[i] for i in sorted(set(pick.tolist()))], [photos[i] for i in sorted(held)]


def calibration_feeds(
    frames: list[np.ndarray], num_styles: int, strokes: tuple[float, ...] = ()
) -> list[dict[str, np.ndarray]]:
    """One feed per frame: styles in turn, every fourth an even mix (every row's range is seen); a
    model with a stroke input (v2) also goes through its stroke anchors in turn."""
    feeds = []
    for i, f in enumerate(frames):
        w = (
            np.full((1, num_styles), 1.0 / num_styles, np.float32)
            if i % 4 == 3
            else np.eye(num_styles, dtype=np.float32)[[i % num_styles]]
        )
        feed = {"image": np.ascontiguousarray(f[None]), "style": w}
        if strokes:
            feed["stroke"] = np.array([strokes[(i // 4) % len(strokes)]], np.float32)
        feeds.append(feed)
    return feeds


# ----------------------------------------------------------------------------- quantizers


def _quantize_onnxruntime(src: Path, dst: Path, feeds: list[dict[str, np.ndarray]], keep_float: list[str]) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    quantize_static(
        str(src),
        str(dst),
        Reader(),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["Conv"],  # not the style MatMul, the norms or the uint8 ends
        nodes_to_exclude=_left_float(src, keep_float),
        per_channel=True,
        activation_type=QuantType.QInt8,  # signed, symmetric: the Q/DQ TensorRT takes
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
        # biases stay float: TensorRT takes no int32 Q/DQ
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False},
    )
    onnx.save_model(unsigned_where_nonnegative(onnx.load(str(dst))), str(dst), save_as_external_data=False)


def _quantize_nncf(src: Path, dst: Path, feeds: list[dict[str, np.ndarray]], keep_float: list[str]) -> None:
    import nncf

    logging.getLogger("nncf").setLevel(logging.WARNING)  # a line per layer otherwise

    model = onnx.load(str(src))
    # Only the convolutions: left to itself NNCF also quantizes the style input and the
    # style-affine table, which breaks every mix (measured: 11 dB PSNR on an even mix).
    others = sorted({n.op_type for n in model.graph.node} - {"Conv"})
    quantized = nncf.quantize(
        model,
        nncf.Dataset(feeds),
        subset_size=len(feeds),
        preset=nncf.QuantizationPreset.PERFORMANCE,  # symmetric: zero points 0
        ignored_scope=nncf.IgnoredScope(types=others, names=_left_float(src, keep_float), validate=False),
    )
    # NNCF makes a ReLU's output uint8 where it sees the ReLU, and signed int8 where a pad stands
    # between: one form for both (signed), then uint8 wherever the tensor is never negative.
    onnx.save_model(unsigned_where_nonnegative(tensorrt_form(quantized)), str(dst), save_as_external_data=False)


def unsigned_where_nonnegative(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every activation Q/DQ pair (int8, zero point 0) whose tensor can never be negative made uint8
    with zero point 0 over the same positive range: one bit finer, in the form the CPU's int8
    kernels take natively.

    Never negative: a ReLU's output, through reflect or edge pads and through convolutions with
    non-negative weights and no bias (v2's down-sampling blur). Without this, NNCF leaves such
    a tensor signed when a pad stands between it and the ReLU, and half of its 256 levels go
    unused. TensorRT takes only signed int8: its build makes these signed again, over the same
    range (:func:`engines.tensorrt_rules.tensorrt_form`).
    """
    from onnx import TensorProto, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    declared = {v.name: v for v in model.graph.value_info}

    def nonnegative(name: str) -> bool:
        n = producer.get(name)
        while n is not None:
            if n.op_type == "Relu":
                return True
            mode = next((a.s for a in n.attribute if a.name == "mode"), b"constant")
            if n.op_type == "Pad" and mode in (b"reflect", b"edge"):
                n = producer.get(n.input[0])
            elif n.op_type == "Conv" and len(n.input) == 2 and n.input[1] in inits:
                if (numpy_helper.to_array(inits[n.input[1]]) < 0).any():
                    return False
                n = producer.get(n.input[0])
            else:
                return False
        return False

    def signed_zero(name: str) -> bool:
        t = inits.get(name)
        return t is not None and t.data_type == TensorProto.INT8 and not numpy_helper.to_array(t).any()

    dequantize: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        if n.op_type == "DequantizeLinear":
            dequantize.setdefault(n.input[0], []).append(n)
    replaced: set[str] = set()
    for q in [n for n in model.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2]:
        pairs = dequantize.get(q.output[0], [])
        if not (pairs and signed_zero(q.input[2]) and q.input[1] in inits and nonnegative(q.input[0])):
            continue
        scale = numpy_helper.to_array(inits[q.input[1]])
        if scale.size != 1 or any(d.input[1:3] != q.input[1:3] for d in pairs):
            continue  # per-channel, or a pair that does not share its parameters: left as it is
        # int8 with scale s covers [0, 127 s] of a non-negative tensor; uint8 with 127 s / 255 the same.
        s_name, z_name = q.output[0] + "_uint8_scale", q.output[0] + "_uint8_zero_point"
        model.graph.initializer.extend([
            numpy_helper.from_array((scale * (127.0 / 255.0)).astype(scale.dtype), s_name),
            numpy_helper.from_array(np.zeros((), np.uint8), z_name),
        ])  # fmt: skip
        replaced.update(q.input[1:3])
        for n in (q, *pairs):
            n.input[1], n.input[2] = s_name, z_name
        if q.output[0] in declared:
            declared[q.output[0]].type.tensor_type.elem_type = TensorProto.UINT8
    # The int8 scales and zero points no pair reads any more (one may still be shared with another).
    used = {i for n in model.graph.node for i in n.input}
    unused = [t for t in model.graph.initializer if t.name in replaced and t.name not in used]
    for t in unused:
        model.graph.initializer.remove(t)
    return model


QUANTIZERS: dict[str, Callable[[Path, Path, list[dict[str, np.ndarray]], list[str]], None]] = {
    "onnxruntime": _quantize_onnxruntime,
    "nncf": _quantize_nncf,
}


def available_methods() -> list[str]:
    import importlib.util

    return [m for m in METHODS if importlib.util.find_spec(m if m == "nncf" else "onnxruntime.quantization")]


def _stamp(src: Path, dst: Path, extra: dict[str, Any]) -> None:
    """Give the quantized file the float model's stylecast metadata, marked int8."""
    model = onnx.load(str(dst))
    meta = {p.key: p.value for p in onnx.load(str(src), load_external_data=False).metadata_props}
    meta[META_PREFIX + "quantized"] = "int8"
    meta[META_PREFIX + "quantization"] = json.dumps(extra)
    del model.metadata_props[:]
    for k, v in meta.items():
        e = model.metadata_props.add()
        e.key, e.value = k, v
    onnx.save_model(model, str(dst), save_as_external_data=False)


# ----------------------------------------------------------------------------- gate


def _reference_grams(model: Path, sources: list[str], search: list[Path], vgg: Any) -> list[dict[str, Any]]:
    """Gram matrices of each style's painting: found by file name under ``search``, else the model's thumbnail."""
    grams = []
    for i, source in enumerate(sources):
        painting = find_painting(source, search) or (model.parent / "thumbnails" / f"{i}.jpg")
        if not painting.is_file():
            raise QuantizeError(
                f"painting {source!r} of style {i} not found (looked under {[str(s) for s in search]} and "
                f"{painting}); pass --paintings DIR"
            )
        img = np.asarray(ImageOps.fit(load_rgb(painting), (256, 256), Image.Resampling.LANCZOS), dtype=np.uint8)
        grams.append(vgg.stats(img).grams)
    return grams


def _time_interleaved(calls: dict[str, Callable[[], Any]], rounds: int = 15) -> dict[str, float]:
    samples: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(2):
        for c in calls.values():
            c()
    for _ in range(rounds):
        for k, c in calls.items():
            t0 = time.perf_counter()
            c()
            samples[k].append((time.perf_counter() - t0) * 1000.0)
    return {k: statistics.median(v) for k, v in samples.items()}


def _styled(backend: Any, frames: list[np.ndarray]) -> list[list[np.ndarray]]:
    """Each frame with every style on its own: ``[frame][style]``."""
    eye = np.eye(len(backend.styles), dtype=np.float32)
    return [[backend.stylize(frame, w) for w in eye] for frame in frames]


def _compared_outputs(
    backend: Any, frames: list[np.ndarray], styled: list[list[np.ndarray]] | None = None
) -> list[np.ndarray]:
    """Every output the gate compares int8 with float32 on: the runtime's precision probe, then
    each frame with every style (``styled``, where :func:`_styled` has made them already), an even
    mix of all and a mix of the first and last, and (v2) each stroke anchor at the network's own
    units (the frames are small)."""
    outs = run_probe(backend)
    n = len(backend.styles)
    eye = np.eye(n, dtype=np.float32)
    for frame, per_style in zip(frames, styled or _styled(backend, frames), strict=True):
        outs += per_style
        # Mixes go through the same quantized layers with in-between affines: they must hold too.
        outs += [backend.stylize(frame, mix) for mix in (np.ones(n, np.float32), eye[0] + eye[n - 1])]
        for anchor in backend.stroke_scale.anchors:
            outs.append(backend.run_network(frame[None], eye[:1], np.array([anchor], np.float32))[0])
    return outs


def _psnrs(got: list[np.ndarray], want: list[np.ndarray]) -> list[float]:
    return [psnr(g, w) for g, w in zip(got, want, strict=True)]


def _mse(got: list[np.ndarray], want: list[np.ndarray]) -> float:
    """Mean squared error over every output: the search's ranking statistic (the lowest PSNR, the
    gate's, hangs on one output and ranks convolutions by noise)."""
    return float(
        np.mean([np.mean((g.astype(np.float64) - w.astype(np.float64)) ** 2) for g, w in zip(got, want, strict=True)])
    )


def _grouped(node: onnx.NodeProto) -> bool:
    return any(a.name == "group" and a.i != 1 for a in node.attribute)


def conv_names(model: Path) -> list[str]:
    """The convolutions the quantizers round, in graph order: those that mix channels.

    A grouped convolution (v1's depthwise 3x3s, v2's down-sampling blur: one 3x3 per channel)
    stays in float: at 9 multiply-adds a pixel it is bound by memory, so INT8 saves next to
    nothing, and rounding it adds a rounding before the next convolution's (on v2, with every
    other convolution in INT8: a mean squared error of 68 against 48 with the blurs in float).
    """
    graph = onnx.load(str(model), load_external_data=False).graph
    return [n.name for n in graph.node if n.op_type == "Conv" and not _grouped(n)]


def _left_float(model: Path, keep_float: list[str]) -> list[str]:
    """``keep_float`` and every convolution :func:`conv_names` leaves out."""
    graph = onnx.load(str(model), load_external_data=False).graph
    return [*keep_float, *(n.name for n in graph.node if n.op_type == "Conv" and _grouped(n))]


def float_search(
    model: Path,
    method: str,
    feeds: list[dict[str, np.ndarray]],
    frames: list[np.ndarray],
    target_db: float,
    max_float: int,
    workdir: Path,
    threads: int | None = None,
) -> tuple[list[str], float]:
    """The fewest convolutions to keep in float for ``method``'s int8 model to reach ``target_db``.

    Measured against float32 (OpenVINO) on the precision probe and the ``RANKING_PHOTOS`` of
    ``frames`` (the calibration photos, not the gate's) that every convolution in int8 rounds
    worst: v2's brush marks in flat areas (a plain wall, fog) move with a small change, and a
    search on easy photos stops short. Where the lowest PSNR misses the target, convolutions are
    kept in float one at a time (:func:`greedy_float`) until the lowest PSNR reaches the target or
    ``max_float`` (at most a quarter of the convolutions) are. Returns (the names kept in float,
    the lowest dB reached).
    """
    from engines.runtime.openvino_backend import OpenVinoBackend

    dst = workdir / f"{method}-search.onnx"

    def int8(keep: list[str]) -> OpenVinoBackend:
        QUANTIZERS[method](model, dst, feeds, keep)
        return OpenVinoBackend(dst, num_threads=threads, precision="int8")

    ref = OpenVinoBackend(model, num_threads=threads, precision="fp32")
    q8 = int8([])
    n = len(ref.styles)
    looks = (np.eye(n, dtype=np.float32)[0], np.ones(n, np.float32))  # one style, every style

    def worst(frame: np.ndarray) -> float:
        return min(psnr(q8.stylize(frame, w), ref.stylize(frame, w)) for w in looks)

    hard = [frames[i] for i in sorted(np.argsort([worst(f) for f in frames])[:RANKING_PHOTOS].tolist())]
    q8.close()
    want = _compared_outputs(ref, hard)
    ref.close()

    def reached(keep: list[str]) -> tuple[float, float]:
        """(lowest PSNR, mean squared error) with ``keep`` in float."""
        q8 = int8(keep)
        try:
            got = _compared_outputs(q8, hard)
            return min(_psnrs(got, want)), _mse(got, want)
        finally:
            q8.close()

    db, mse = reached([])
    convs = conv_names(model)
    cap = min(max_float, len(convs) // 4)
    if db >= target_db or cap == 0:
        return [], db
    log.info("%s: %.1f dB with every convolution in int8 (mean squared error %.2f), under %.1f", method, db, mse,
             target_db)  # fmt: skip
    keep, db = greedy_float(convs, reached, target_db, cap)
    return keep, db


def greedy_float(
    convs: list[str], reached: Callable[[list[str]], tuple[float, float]], target_db: float, cap: int
) -> tuple[list[str], float]:
    """Forward selection: keep in float, one at a time, the convolution whose move to float (beside those
    already kept) lowers the mean squared error most, until the lowest PSNR reaches ``target_db`` or ``cap``
    are kept. ``reached(keep)`` is (lowest PSNR, mean squared error) with ``keep`` in float.

    Each choice is measured with the earlier ones in float: ranked once, each alone, the first convolution
    of v2 (3 to 16 channels) decided everything, and the rest sat within 0.1 dB of each other, so which of
    them came next was rounding noise: run again on one thread, the shipped v2's search picked another set
    than its build had, and its INT8 model missed the gate by 3 dB."""
    keep: list[str] = []
    db = -math.inf
    while len(keep) < cap and db < target_db:
        trials = {c: reached([*keep, c]) for c in convs if c not in keep}
        best = min(trials, key=lambda c: trials[c][1])
        keep.append(best)
        db = trials[best][0]
        log.info("kept in float: %s -> %.1f dB (mean squared error %.2f)", ", ".join(keep), db, trials[best][1])
    return keep, db


def gate(
    model: Path,
    quantized: Path,
    method: str,
    frames: list[np.ndarray],
    grams: list[dict[str, Any]],
    vgg: Any,
    speed_size: tuple[int, int],
    threads: int | None,
) -> Gate:
    """Measure ``quantized`` against ``model`` (float32) on ``frames`` with every style, on OpenVINO."""
    from engines.runtime.openvino_backend import OpenVinoBackend
    from trainer.metrics import content_distance, style_distance

    ref = OpenVinoBackend(model, num_threads=threads, precision="fp32")
    q8 = OpenVinoBackend(quantized, num_threads=threads, precision="int8")
    n = len(ref.styles)
    styled = {"fp32": _styled(ref, frames), "int8": _styled(q8, frames)}
    dbs = _psnrs(_compared_outputs(q8, frames, styled["int8"]), _compared_outputs(ref, frames, styled["fp32"]))
    style: dict[str, list[float]] = {"fp32": [], "int8": []}
    content: dict[str, list[float]] = {"fp32": [], "int8": []}
    for i, frame in enumerate(frames):
        content_in = vgg.stats(frame).content
        for s in range(n):
            for k in ("fp32", "int8"):
                st = vgg.stats(styled[k][i][s])
                style[k].append(style_distance(st.grams, grams[s]))
                content[k].append(content_distance(st.content, content_in))
    result = Gate(
        method=method,
        psnr_min_db=min(dbs),
        psnr_mean_db=float(np.mean([min(d, 99.0) for d in dbs])),
        style_fp32=float(np.mean(style["fp32"])),
        style_int8=float(np.mean(style["int8"])),
        content_fp32=float(np.mean(content["fp32"])),
        content_int8=float(np.mean(content["int8"])),
    )
    w, h = speed_size
    frame = cv2.resize(frames[0], (w, h), interpolation=cv2.INTER_LINEAR)
    weights = np.eye(n, dtype=np.float32)[0]
    result.float_precision = "bf16" if cpu_bf16_flag() else "fp32"
    fast = OpenVinoBackend(model, num_threads=threads, precision=result.float_precision)
    ms = _time_interleaved({"int8": lambda: q8.stylize(frame, weights), "float": lambda: fast.stylize(frame, weights)})
    result.ms_int8, result.ms_float = ms["int8"], ms["float"]
    for b in (ref, q8, fast):
        b.close()
    return result


# ----------------------------------------------------------------------------- the command


def quantize(
    model: str | Path,
    calib: str | Path,
    out: str | Path | None = None,
    *,
    method: str = "auto",
    calib_photos: int = 32,
    holdout_photos: int = 6,
    size: str = "320x240",
    speed_size: str = "640x480",
    psnr_floor: float = PSNR_FLOOR["int8"],
    max_loss: float = MAX_QUALITY_LOSS,
    paintings: tuple[Path, ...] = (),
    threads: int | None = None,
    max_float_convs: int = MAX_FLOAT_CONVS,
) -> tuple[Path | None, list[Gate]]:
    """Quantize ``model`` with each method, gate each, write the best passing one to ``out``.

    Where rounding every convolution falls under the floor (plus a margin) on calibration photos,
    up to ``max_float_convs`` of them are kept in float (:func:`float_search`; 0 turns it off).

    Returns (the path written or None, every method's gate). Raises
    :class:`QuantizeError` when no photos or no quantizer are available.
    """
    from trainer.metrics import VggMetrics

    model = Path(model)
    info = read_model_info(model)
    if info.quantized:
        raise QuantizeError(f"{model} is already quantized ({info.quantized})")
    out = Path(out) if out is not None else model.with_name(model.stem + ".int8.onnx")
    methods = available_methods() if method == "auto" else [method]
    if method != "auto" and method not in available_methods():
        raise QuantizeError(
            f"quantizer {method!r} is not installed" + (" (pip install nncf)" if method == "nncf" else "")
        )
    if not methods:
        raise QuantizeError("no quantizer installed (onnxruntime's, or pip install nncf)")
    wh = parse_size(size)
    calib_paths, held_paths = split_photos(Path(calib), calib_photos, holdout_photos)
    log.info("calibrating on %d photos, judging on %d held-out photos at %s", len(calib_paths), len(held_paths), size)
    calib_frames = photo_frames(calib_paths, wh)
    feeds = calibration_feeds(calib_frames, len(info.styles), info.strokes)
    held = photo_frames(held_paths, wh)
    vgg = VggMetrics()
    grams = _reference_grams(model, info.sources, [Path(p) for p in paintings], vgg)
    gates: list[Gate] = []
    with tempfile.TemporaryDirectory(prefix="stylecast-int8-") as tmp:
        candidates: dict[str, Path] = {}
        for m in methods:
            dst = Path(tmp) / f"{m}.onnx"
            t0 = time.perf_counter()
            keep: list[str] = []
            if max_float_convs > 0:
                keep, db = float_search(
                    model,
                    m,
                    feeds,
                    calib_frames,
                    psnr_floor + FLOAT_SEARCH_MARGIN_DB,
                    max_float_convs,
                    Path(tmp),
                    threads,
                )
                log.info("%s: %d convolutions kept in float, %.1f dB on the calibration photos", m, len(keep), db)
            QUANTIZERS[m](model, dst, feeds, keep)
            log.info("%s quantized %s in %.1f s (%d convolutions in float)", m, model.name, time.perf_counter() - t0,
                     len(keep))  # fmt: skip
            _stamp(model, dst, {"method": m, "calibration_photos": len(calib_paths), "size": format_size(wh)})
            g = gate(model, dst, m, held, grams, vgg, parse_size(speed_size), threads)
            g.float_convs = keep
            g.tensorrt = check_file(dst)
            g.judge(psnr_floor, max_loss)
            gates.append(g)
            candidates[m] = dst
        best = chosen(gates)
        if best is None:
            return None, gates
        _stamp(model, candidates[best.method], {
            "method": best.method, "calibration_photos": len(calib_paths), "size": format_size(wh),
            "gate": {k: v for k, v in asdict(best).items() if k != "misses"},
        })  # fmt: skip
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp_out = out.with_name(f".{out.name}.tmp")
        tmp_out.write_bytes(candidates[best.method].read_bytes())
        tmp_out.replace(out)
    return out, gates


def chosen(gates: list[Gate]) -> Gate | None:
    """The gate whose file :func:`quantize` writes: of those passed, the highest mean PSNR, then the
    fastest; None when none passed."""
    passing = sorted((g for g in gates if g.passed), key=lambda g: (-g.psnr_mean_db, g.ms_int8))
    return passing[0] if passing else None


def format_gates(gates: list[Gate]) -> str:
    """A table of every method's gate."""
    lines = [
        "| method | PSNR min / mean dB | style dist fp32 -> int8 | content dist fp32 -> int8 "
        "| ms int8 vs float | verdict |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for g in gates:
        verdict = "passed" if g.passed else "missed: " + "; ".join(g.misses)
        kept = f" ({len(g.float_convs)} convs in float: {', '.join(g.float_convs)})" if g.float_convs else ""
        lines.append(
            f"| {g.method}{kept} | {g.psnr_min_db:.1f} / {g.psnr_mean_db:.1f} "
            f"| {g.style_fp32:.4f} -> {g.style_int8:.4f} "
            f"| {g.content_fp32:.4f} -> {g.content_int8:.4f} "
            f"| {g.ms_int8:.1f} vs {g.ms_float:.1f} ({g.float_precision}) | {verdict} |"
        )
    return "\n".join(lines)
