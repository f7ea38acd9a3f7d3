"""Export a trained generator checkpoint to one self-contained ONNX file.

The exported graph is the whole per-frame computation, so a serving host does
no per-pixel work and needs no torch::

    image    uint8   [N,H,W,3]  RGB, NHWC, H and W multiples of the stride (dynamic N, H, W)
    style    float32 [N,S]      non-negative weights, any scale (rows normalised to sum 1 in-graph)
    stroke   float32 [N]        v2 only: brush size in network pixels (common.stroke), clamped in-graph
    stylized uint8   [N,H,W,3]  RGB, NHWC

Inside the graph: cast to float, NHWC -> NCHW, /255, the generator, *255,
round (half to even), clamp to [0,255], NCHW -> NHWC, cast to uint8 (the
casts sit at the edges: TensorRT lets a uint8 tensor touch nothing else).

Model facts travel in the ONNX ``metadata_props`` (all values are strings)::

    stylecast.styles             JSON list of style names (index i <-> style[:, i])
    stylecast.sources            JSON list of painting file names, same order
    stylecast.generator          GeneratorConfig as JSON
    stylecast.format_version     ONNX contract version: 1 (image, style), 2 (image, style, stroke)
    stylecast.stride             "4" (v1) or "8" (v2): H and W must be multiples of it
    stylecast.checkpoint_sha256  sha256 of the checkpoint file it came from
    stylecast.quantized          "int8" in a model made by ``python -m engines quantize`` (absent otherwise)
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from engines.runtime.model import ModelInfo, file_sha256
from engines.wrap import UInt8Generator
from trainer.checkpoint import load_generator
from trainer.models import StyleGenerator

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # the newest contract this code writes; a model without strokes is written as 1
INPUT_IMAGE = "image"
INPUT_STYLE = "style"
INPUT_STROKE = "stroke"
OUTPUT = "stylized"
META_PREFIX = "stylecast."
# Range of the dynamic dims the exporter is told about (in units of the stride for H, W).
MAX_BATCH = 64
MAX_SIDE = 4096


def export_onnx(
    checkpoint_path: str | Path,
    out_path: str | Path,
    *,
    opset: int = 18,
    example_hw: tuple[int, int] = (64, 64),
    check: bool = True,
    precision: str = "fp32",
) -> Path:
    """Export ``checkpoint_path`` (a stylecast .safetensors) to ``out_path`` (.onnx).

    ``precision="fp16"`` writes the float16 graph a TensorRT fp16 plan is built from (TensorRT 11
    has no FP16 flag: its networks are strongly typed): weights and activations in float16, the
    uint8 ends, the style normalisation and the final rounding in float32 (``UInt8Generator``).
    It is checked against the float32 model, on ONNX Runtime, at the fp16 PSNR floor.

    The file is written atomically (temp file + rename) and is self-contained
    (no ``.onnx.data`` side file). ``example_hw`` is the trace size (height,
    width; multiples of 4); the exported H, W, N are dynamic regardless.
    With ``check`` the result goes through ``onnx.checker`` and is compared
    with torch on ONNX Runtime (see :func:`verify_onnx`).
    Returns ``out_path``.
    """
    checkpoint_path = Path(checkpoint_path)
    out_path = Path(out_path)
    if precision not in ("fp32", "fp16"):
        raise ValueError(
            f"precision must be fp32 or fp16 (int8 comes from python -m engines quantize), got {precision!r}"
        )
    generator, ckpt = load_generator(checkpoint_path)
    stride = generator.config.stride
    if example_hw[0] % stride or example_hw[1] % stride:
        raise ValueError(f"example_hw must be multiples of {stride}, got {example_hw}")
    wrapper = UInt8Generator(generator, torch.float16 if precision == "fp16" else torch.float32).eval()
    num_styles = generator.config.num_styles
    strokes = generator.config.strokes
    image = torch.randint(0, 256, (2, *example_hw, 3), dtype=torch.uint8)
    style = torch.rand(2, num_styles) + 0.1
    args: tuple[torch.Tensor, ...] = (image, style)
    names = [INPUT_IMAGE, INPUT_STYLE]

    # H = s*hs, W = s*ws (s the stride) tells the exporter that the (un)shuffles divide evenly.
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    hs = torch.export.Dim("hs", min=2, max=MAX_SIDE // stride)
    ws = torch.export.Dim("ws", min=2, max=MAX_SIDE // stride)
    dynamic_shapes: dict[str, Any] = {"image": {0: batch, 1: stride * hs, 2: stride * ws}, "style": {0: batch}}
    if strokes:
        args += (torch.tensor([1.0, 1.5]),)
        names.append(INPUT_STROKE)
        dynamic_shapes["stroke"] = {0: batch}

    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".tmp.onnx", dir=out_path.parent)
    os.close(fd)
    try:
        with torch.no_grad():
            program = torch.onnx.export(
                wrapper,
                args,
                input_names=names,
                output_names=[OUTPUT],
                dynamic_shapes=dynamic_shapes,
                opset_version=opset,
                dynamo=True,
                verbose=False,  # no progress lines on stdout
                external_data=False,
            )
        assert program is not None
        model = fold_constants(program.model_proto)
        meta = {
            "styles": json.dumps(ckpt.style_names),
            "sources": json.dumps([s.source for s in ckpt.styles]),
            "generator": json.dumps(generator.config.to_dict()),
            "format_version": str(2 if strokes else 1),
            "precision": precision,
            "stride": str(stride),
            "checkpoint_sha256": file_sha256(checkpoint_path),
        }
        del model.metadata_props[:]
        for key, value in meta.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = META_PREFIX + key, value
        model.producer_name = "stylecast"
        _name_dims(model)
        onnx.save_model(model, tmp, save_as_external_data=False)
        if check:
            onnx.checker.check_model(tmp, full_check=True)
            if precision == "fp16":
                verify_fp16(tmp, load_generator(checkpoint_path)[0])
            else:
                verify_onnx(tmp, generator)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the file is meant to be shared
        os.replace(tmp, out_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    log.info("exported %s -> %s (%d styles, opset %d)", checkpoint_path, out_path, num_styles, opset)
    return out_path


def fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """Compute every part of the graph that depends on weights only (v2's blurred down-sampling
    kernels, the stacked style tables) once, so the file holds plain constants: nothing of it
    runs per frame, and quantizers and TensorRT see ordinary Conv weights."""
    import onnxscript.optimizer

    folded = onnxscript.optimizer.optimize(model, input_size_limit=1 << 30, output_size_limit=1 << 30)
    return folded if isinstance(folded, onnx.ModelProto) else model


def _name_dims(model: onnx.ModelProto) -> None:
    """Give the symbolic dims readable names: batch, height, width (was "4*hs", "8*ws", ...)."""
    names = {f"{s}*{d}": name for s in (4, 8) for d, name in (("hs", "height"), ("ws", "width"))}
    for value in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in names:
                dim.dim_param = names[dim.dim_param]


def read_onnx_info(path: str | Path) -> ModelInfo:
    """Read the stylecast metadata with the ``onnx`` package.

    Serving reads the same fields with ``engines.runtime.model.read_model_info``,
    a small protobuf reader that does not need ``onnx``; the tests check that
    both agree.
    """
    model = onnx.load_model(str(path), load_external_data=False)
    meta = {p.key[len(META_PREFIX) :]: p.value for p in model.metadata_props if p.key.startswith(META_PREFIX)}
    return ModelInfo(
        path=Path(path),
        styles=json.loads(meta["styles"]),
        sources=json.loads(meta["sources"]),
        generator=json.loads(meta["generator"]),
        format_version=int(meta["format_version"]),
        stride=int(meta["stride"]),
        checkpoint_sha256=meta["checkpoint_sha256"],
        quantized=meta.get("quantized", ""),
        precision=meta.get("precision", "fp32"),
    )


# ONNX Runtime vs torch, both float32 on CPU, differ by float rounding only; after
# *255 and rounding to uint8 that moves a value by at most 1 level, and only for the
# few pixels that sit on a .5 boundary.
PARITY_MAX_ABS = 1  # uint8 levels, any pixel
PARITY_MAX_FRACTION_OFF = 0.01  # share of values allowed to differ at all


def verify_onnx(
    onnx_path: str | Path,
    generator: StyleGenerator,
    sizes: tuple[tuple[int, int], ...] = ((64, 96), (120, 160)),
    seed: int = 0,
) -> None:
    """Run the ONNX file on ONNX Runtime and compare with torch; raise on mismatch.

    Checks random images at each (H, W) in ``sizes`` with several style mixes
    (one-hot, uniform, random, unnormalised) and a batch of 2 with different
    mixes per row; a v2 model also with different strokes per row, between
    anchors and outside their range. Tolerance: ``PARITY_MAX_ABS`` uint8 levels,
    and at most ``PARITY_MAX_FRACTION_OFF`` of values off at all.
    """
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    wrapper = UInt8Generator(generator).eval()
    rng = np.random.default_rng(seed)
    s = generator.config.num_styles
    mixes = [np.eye(s, dtype=np.float32)[0], np.ones(s, np.float32), rng.random(s).astype(np.float32) * 5]
    stroke_pairs = [(1.0, 0.71), (0.5, 2.0), (0.3, 3.0)] if generator.config.strokes else [None]
    for h, w in sizes:
        for mix in mixes:
            for pair in stroke_pairs:
                image = rng.integers(0, 256, (2, h, w, 3), dtype=np.uint8)
                style = np.stack([mix, np.eye(s, dtype=np.float32)[-1] + 0.25]).astype(np.float32)
                feeds = {INPUT_IMAGE: image, INPUT_STYLE: style}
                args = [torch.from_numpy(image), torch.from_numpy(style)]
                if pair is not None:
                    feeds[INPUT_STROKE] = np.asarray(pair, np.float32)
                    args.append(torch.from_numpy(feeds[INPUT_STROKE]))
                (got,) = sess.run([OUTPUT], feeds)
                with torch.no_grad():
                    want = wrapper(*args).numpy()
                compare_uint8(got, want, f"ONNX Runtime vs torch at {w}x{h}, mix {mix.tolist()}, strokes {pair}")


def verify_fp16(onnx_path: str | Path, generator: StyleGenerator, seed: int = 0) -> None:
    """A float16 export against the float32 model (torch), with the precision gate's tools: the
    PSNR floor of fp16 (:data:`engines.runtime.precision.PSNR_FLOOR`) on the gate's probe frames
    and on random ones, with a single style, a mix and (v2) every stroke anchor."""
    import onnxruntime as ort

    from engines.runtime.precision import PSNR_FLOOR, probe_inputs, psnr

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    reference = UInt8Generator(generator).eval()
    s = generator.config.num_styles
    frames, weights = probe_inputs(s)
    images = np.stack(frames)
    rng = np.random.default_rng(seed)
    cases = [(images, weights), (rng.integers(0, 256, (2, 64, 96, 3), dtype=np.uint8), weights)]
    for strokes in (
        [None] if not generator.config.strokes else [np.full(2, a, np.float32) for a in generator.config.strokes]
    ):
        for image, w in cases:
            feeds = {INPUT_IMAGE: image, INPUT_STYLE: w}
            args = [torch.from_numpy(image), torch.from_numpy(w)]
            if strokes is not None:
                feeds[INPUT_STROKE] = strokes
                args.append(torch.from_numpy(strokes))
            (got,) = sess.run([OUTPUT], feeds)
            with torch.no_grad():
                want = reference(*args).numpy()
            for g, x in zip(got, want, strict=True):
                db = psnr(g, x)
                if db < PSNR_FLOOR["fp16"]:
                    raise AssertionError(
                        f"the float16 export is {db:.1f} dB from float32 at {image.shape[2]}x{image.shape[1]}, "
                        f"below the fp16 floor {PSNR_FLOOR['fp16']:g} dB"
                    )


def compare_uint8(
    got: np.ndarray,
    want: np.ndarray,
    what: str,
    max_abs: int = PARITY_MAX_ABS,
    max_fraction_off: float = PARITY_MAX_FRACTION_OFF,
) -> None:
    """Raise ``AssertionError`` if two uint8 images differ beyond the tolerance."""
    if got.shape != want.shape or got.dtype != want.dtype:
        raise AssertionError(f"{what}: got {got.dtype}{got.shape}, want {want.dtype}{want.shape}")
    diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
    worst, off = int(diff.max()), float((diff > 0).mean())
    if worst > max_abs or off > max_fraction_off:
        raise AssertionError(
            f"{what}: max |diff| {worst} levels (allowed {max_abs}), "
            f"{off:.2%} of values differ (allowed {max_fraction_off:.2%})"
        )
