"""Build an exported ONNX model into a runtime engine, with a manifest beside it.

Two builders, one manifest scheme (``manifest.json`` in the output folder, see
:mod:`engines.runtime.manifest`, which the runtime reads to refuse stale engines):

* TensorRT (>= 10): ONNX parser -> builder config (FP16/INT8 flags, workspace
  limit) -> one optimisation profile per shape range -> serialized plan
  (``model.plan``). A timing cache file is loaded before and saved after every
  build, so later builds (other precisions, other shape ranges) reuse kernel
  timings.
* OpenVINO (CPU): the serving backend compiles one static-shape model per frame
  size; the build compiles the min, opt and max size of every shape range with
  the serving properties into an OpenVINO model cache (folder ``cache``), which
  the backend loading this folder uses, so those sizes start without a compile
  (measured here: about 110 ms per size without the cache, 40 ms with it).

Before a cached engine is used, its manifest is compared with what a fresh build
would record; a mismatch names the field, and the engine is rebuilt
(``ensure_engine(..., rebuild=True)``) or refused (``ManifestMismatch``), never
used silently. This module imports neither torch nor (until a TensorRT build is
asked for) TensorRT.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

from engines.runtime.base import EngineError
from engines.runtime.manifest import (
    MANIFEST,
    EngineSpec,
    Manifest,
    ManifestMismatch,
    atomic_write,
    check_manifest,
    openvino_config,
    wanted_manifest,
)
from engines.runtime.model import read_model_info

log = logging.getLogger(__name__)


def build_engine(onnx_path: str | Path, spec: EngineSpec, out_dir: str | Path) -> Manifest:
    """Build ``onnx_path`` for ``spec`` into ``out_dir`` (artifact + manifest.json); returns the manifest."""
    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    info = read_model_info(onnx_path)  # clear error for a missing/corrupt/foreign file
    manifest = wanted_manifest(onnx_path, spec)
    start = time.perf_counter()
    if spec.backend == "tensorrt":
        atomic_write(out_dir / manifest.artifact, _build_tensorrt(onnx_path, spec, len(info.styles)))
    else:
        manifest.extra["properties"] = _build_openvino(onnx_path, spec, len(info.styles), out_dir / manifest.artifact)
    manifest.build_seconds = round(time.perf_counter() - start, 3)
    manifest.built_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    manifest.extra["styles"] = info.styles
    manifest.write(out_dir)
    log.info("built %s %s in %.1f s -> %s", spec.backend, spec.precision, manifest.build_seconds, out_dir)
    return manifest


def ensure_engine(onnx_path: str | Path, spec: EngineSpec, out_dir: str | Path, rebuild: bool = True) -> Manifest:
    """Return the manifest of a valid cached engine in ``out_dir``, building it if needed.

    A missing engine is built. A cached one whose manifest differs in any key
    field is rebuilt when ``rebuild`` (the reason is logged at WARNING), else
    :class:`ManifestMismatch` is raised.
    """
    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    wanted = wanted_manifest(onnx_path, spec)
    if not (out_dir / MANIFEST).is_file() or not (out_dir / wanted.artifact).exists():
        log.info("no cached %s engine in %s: building", spec.backend, out_dir)
        return build_engine(onnx_path, spec, out_dir)
    cached = Manifest.read(out_dir)
    try:
        check_manifest(cached, wanted, out_dir)
    except ManifestMismatch as e:
        if not rebuild:
            raise
        log.warning("%s: rebuilding", e)
        return build_engine(onnx_path, spec, out_dir)
    return cached


def _build_tensorrt(onnx_path: Path, spec: EngineSpec, num_styles: int) -> bytes:
    """TensorRT >= 10: parse the ONNX, configure, profile, build; returns the serialized plan."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"TensorRT's ONNX parser rejected {onnx_path}: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, spec.workspace_mib << 20)
    if spec.precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)  # int8 falls back to fp16 where a layer has no int8 kernel
    if spec.precision == "int8":
        if spec.calibration_dir is None:
            raise EngineError("an int8 build needs calibration images (--calibration-dir)")
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = _make_calibrator(trt, spec, num_styles)

    # One profile per shape range. image is [N,H,W,3]; style is [N,S].
    for shape in spec.shapes:
        profile = builder.create_optimization_profile()
        profile.set_shape(
            "image",
            (1, *shape.min_hw, 3),
            (1, *shape.opt_hw, 3),
            (spec.max_batch, *shape.max_hw, 3),
        )
        profile.set_shape("style", (1, num_styles), (1, num_styles), (spec.max_batch, num_styles))
        config.add_optimization_profile(profile)

    cache_bytes = b""
    if spec.timing_cache is not None and spec.timing_cache.is_file():
        cache_bytes = spec.timing_cache.read_bytes()
        log.info("reusing TensorRT timing cache %s (%d bytes)", spec.timing_cache, len(cache_bytes))
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EngineError("TensorRT failed to build the engine (see the TensorRT log above)")
    if spec.timing_cache is not None:
        atomic_write(spec.timing_cache, bytes(config.get_timing_cache().serialize()))
    return bytes(plan)


def _make_calibrator(trt: Any, spec: EngineSpec, num_styles: int) -> Any:
    """An entropy calibrator fed with images from ``spec.calibration_dir`` at the opt shape."""
    import cv2
    import numpy as np

    from engines.runtime.cuda import DeviceBuffer

    assert spec.calibration_dir is not None
    h, w = spec.shapes[0].opt_hw
    files = sorted(p for p in spec.calibration_dir.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not files:
        raise EngineError(f"no .png/.jpg calibration images in {spec.calibration_dir}")

    class Calibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.files = list(files)
            self.image = DeviceBuffer(h * w * 3)
            self.style = DeviceBuffer(num_styles * 4)
            # Calibrate on an even mix: every style row contributes to the activation ranges.
            self.style.upload(np.full((1, num_styles), 1.0 / num_styles, np.float32))

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names: list[str]) -> list[int] | None:
            if not self.files:
                return None
            path = self.files.pop()
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if bgr is None:
                raise EngineError(f"cannot read calibration image {path}")
            rgb = cv2.cvtColor(cv2.resize(bgr, (w, h), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
            self.image.upload(np.ascontiguousarray(rgb[None]))
            return [self.image.ptr if n == "image" else self.style.ptr for n in names]

        def read_calibration_cache(self) -> bytes | None:
            return None

        def write_calibration_cache(self, cache: bytes) -> None:
            return None

    return Calibrator()


def _build_openvino(onnx_path: Path, spec: EngineSpec, num_styles: int, cache: Path) -> dict[str, Any]:
    """Compile every shape of ``spec`` (batch 1) into a fresh OpenVINO model cache; returns the properties."""
    import openvino as ov

    props = openvino_config(spec.num_threads, spec.precision)
    if cache.exists():
        shutil.rmtree(cache)  # entries of another build would be mixed into this one
    cache.mkdir(parents=True)
    core = ov.Core()
    core.set_property({"CACHE_DIR": str(cache)})
    model = core.read_model(str(onnx_path))
    for profile in spec.shapes:
        for h, w in profile.sizes_hw:
            shaped = model.clone()
            shaped.reshape({"image": [1, h, w, 3], "style": [1, num_styles]})
            try:
                core.compile_model(shaped, "CPU", props)
            except RuntimeError as e:
                raise EngineError(f"OpenVINO cannot compile {onnx_path} at {w}x{h}: {e}") from e
    if not any(cache.iterdir()):
        raise EngineError(f"OpenVINO wrote no cache entries into {cache}")
    return props
