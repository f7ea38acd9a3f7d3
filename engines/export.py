"""Export a trained generator checkpoint to one self-contained ONNX file.

The exported graph is the whole per-frame computation, so a serving host does
no per-pixel work and needs no torch::

    image    uint8   [N,H,W,3]  RGB, NHWC, H and W multiples of 4 (dynamic N, H, W)
    style    float32 [N,S]      non-negative weights, any scale (rows normalised to sum 1 in-graph)
    stylized uint8   [N,H,W,3]  RGB, NHWC

Inside the graph: NHWC -> NCHW, /255, the generator, *255, round (half to
even), clamp to [0,255], cast to uint8, NCHW -> NHWC.

Model facts travel in the ONNX ``metadata_props`` (all values are strings)::

    stylecast.styles             JSON list of style names (index i <-> style[:, i])
    stylecast.sources            JSON list of painting file names, same order
    stylecast.generator          GeneratorConfig as JSON
    stylecast.format_version     ONNX contract version (this module's FORMAT_VERSION)
    stylecast.stride             "4": H and W must be multiples of it
    stylecast.checkpoint_sha256  sha256 of the checkpoint file it came from
    stylecast.quantized          "int8" in a model made by ``python -m engines quantize`` (absent otherwise)
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch

from engines.runtime.model import ModelInfo, file_sha256
from engines.wrap import UInt8Generator
from trainer.checkpoint import load_generator
from trainer.models import Generator

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
INPUT_IMAGE = "image"
INPUT_STYLE = "style"
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
) -> Path:
    """Export ``checkpoint_path`` (a stylecast .safetensors) to ``out_path`` (.onnx).

    The file is written atomically (temp file + rename) and is self-contained
    (no ``.onnx.data`` side file). ``example_hw`` is the trace size (height,
    width; multiples of 4); the exported H, W, N are dynamic regardless.
    With ``check`` the result goes through ``onnx.checker`` and is compared
    with torch on ONNX Runtime (see :func:`verify_onnx`).
    Returns ``out_path``.
    """
    checkpoint_path = Path(checkpoint_path)
    out_path = Path(out_path)
    generator, ckpt = load_generator(checkpoint_path)
    stride = generator.config.stride
    if example_hw[0] % stride or example_hw[1] % stride:
        raise ValueError(f"example_hw must be multiples of {stride}, got {example_hw}")
    wrapper = UInt8Generator(generator).eval()
    num_styles = generator.config.num_styles
    image = torch.randint(0, 256, (2, *example_hw, 3), dtype=torch.uint8)
    style = torch.rand(2, num_styles) + 0.1

    # H = 4*h4, W = 4*w4 tells the exporter that the pixel (un)shuffles divide evenly.
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    h4 = torch.export.Dim("h4", min=2, max=MAX_SIDE // stride)
    w4 = torch.export.Dim("w4", min=2, max=MAX_SIDE // stride)
    dynamic_shapes = {"image": {0: batch, 1: stride * h4, 2: stride * w4}, "style": {0: batch}}

    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out_path.name}.", suffix=".tmp.onnx", dir=out_path.parent)
    os.close(fd)
    try:
        with torch.no_grad():
            program = torch.onnx.export(
                wrapper,
                (image, style),
                input_names=[INPUT_IMAGE, INPUT_STYLE],
                output_names=[OUTPUT],
                dynamic_shapes=dynamic_shapes,
                opset_version=opset,
                dynamo=True,
                verbose=False,  # no progress lines on stdout
                external_data=False,
            )
        assert program is not None
        model = program.model_proto
        meta = {
            "styles": json.dumps(ckpt.style_names),
            "sources": json.dumps([s.source for s in ckpt.styles]),
            "generator": json.dumps(generator.config.to_dict()),
            "format_version": str(FORMAT_VERSION),
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
            verify_onnx(tmp, generator)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; the file is meant to be shared
        os.replace(tmp, out_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    log.info("exported %s -> %s (%d styles, opset %d)", checkpoint_path, out_path, num_styles, opset)
    return out_path


def _name_dims(model: onnx.ModelProto) -> None:
    """Give the symbolic dims readable names: batch, height, width (was "4*h4", "4*w4")."""
    names = {"4*h4": "height", "4*w4": "width"}
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
    )


# ONNX Runtime vs torch, both float32 on CPU, differ by float rounding only; after
# *255 and rounding to uint8 that moves a value by at most 1 level, and only for the
# few pixels that sit on a .5 boundary.
PARITY_MAX_ABS = 1  # uint8 levels, any pixel
PARITY_MAX_FRACTION_OFF = 0.01  # share of values allowed to differ at all


def verify_onnx(
    onnx_path: str | Path,
    generator: Generator,
    sizes: tuple[tuple[int, int], ...] = ((64, 96), (120, 160)),
    seed: int = 0,
) -> None:
    """Run the ONNX file on ONNX Runtime and compare with torch; raise on mismatch.

    Checks random images at each (H, W) in ``sizes`` with several style mixes
    (one-hot, uniform, random, unnormalised) and a batch of 2 with different
    mixes per row. Tolerance: ``PARITY_MAX_ABS`` uint8 levels, and at most
    ``PARITY_MAX_FRACTION_OFF`` of values off at all.
    """
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    wrapper = UInt8Generator(generator).eval()
    rng = np.random.default_rng(seed)
    s = generator.config.num_styles
    mixes = [np.eye(s, dtype=np.float32)[0], np.ones(s, np.float32), rng.random(s).astype(np.float32) * 5]
    for h, w in sizes:
        for mix in mixes:
            image = rng.integers(0, 256, (2, h, w, 3), dtype=np.uint8)
            style = np.stack([mix, np.eye(s, dtype=np.float32)[-1] + 0.25]).astype(np.float32)
            (got,) = sess.run([OUTPUT], {INPUT_IMAGE: image, INPUT_STYLE: style})
            with torch.no_grad():
                want = wrapper(torch.from_numpy(image), torch.from_numpy(style)).numpy()
            compare_uint8(got, want, f"ONNX Runtime vs torch at {w}x{h}, mix {mix.tolist()}")


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
