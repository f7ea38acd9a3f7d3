"""Build an exported ONNX model into a runtime engine, with a manifest beside it.

Two builders, one manifest scheme (``manifest.json`` in the output folder, see
:mod:`engines.runtime.manifest`, which the runtime reads to refuse stale engines):

* TensorRT (10 and 11): the precision's own ONNX file (``<stem>.onnx`` fp32,
  ``<stem>.fp16.onnx``, ``<stem>.int8.onnx`` with Q/DQ), checked against TensorRT's graph
  rules -> a strongly typed network (no precision flags: 11 removed them) -> workspace
  limit -> one optimisation profile per shape range -> serialized plan (``model.plan``).
  A timing cache file is loaded before and saved after every build, so later builds
  (other precisions, other shape ranges) reuse kernel timings.
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
    precision_source,
    wanted_manifest,
)
from engines.runtime.model import read_model_info

log = logging.getLogger(__name__)


def build_engine(onnx_path: str | Path, spec: EngineSpec, out_dir: str | Path) -> Manifest:
    """Build ``onnx_path`` for ``spec`` into ``out_dir`` (artifact + manifest.json); returns the manifest."""
    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    info = read_model_info(onnx_path)  # clear error for a missing/corrupt/foreign file
    source = precision_source(onnx_path, spec.precision) if spec.backend == "tensorrt" else onnx_path
    manifest = wanted_manifest(source, spec)
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
    wanted = wanted_manifest(
        precision_source(onnx_path, spec.precision) if spec.backend == "tensorrt" else onnx_path, spec
    )
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
    """TensorRT 10 or 11: a strongly typed network from the precision's own ONNX; returns the serialized plan.

    No precision flags and no calibrator (TensorRT 11 removed both; 10 deprecated the calibrator):
    the graph carries its precision, float16 inside ``<stem>.fp16.onnx``, Q/DQ nodes in
    ``<stem>.int8.onnx``. The graph is checked against TensorRT's rules first
    (:mod:`engines.tensorrt_rules`), so a file it would refuse fails here with the reason.
    """
    import onnx
    import tensorrt as trt

    from engines.runtime.tensorrt_backend import version_unsupported
    from engines.tensorrt_rules import tensorrt_form, tensorrt_problems

    if reason := version_unsupported(trt.__version__):
        raise EngineError(reason)
    source = precision_source(onnx_path, spec.precision)
    if not source.is_file():
        make = {
            "fp16": f"python -m engines export {onnx_path.with_suffix('.safetensors')} --precision fp16",
            "int8": f"python -m engines quantize {onnx_path} --calib PHOTOS",
        }.get(spec.precision, "")
        raise EngineError(f"a {spec.precision} plan is built from {source}, which is missing (make it: {make})")
    graph = tensorrt_form(onnx.load(str(source)))  # an INT8 file's uint8 Q/DQ made signed int8
    if problems := tensorrt_problems(graph):
        raise EngineError(f"TensorRT would refuse {source}: " + "; ".join(problems))
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # Strongly typed: required for a Q/DQ or float16 graph to build as written on 10.x; on 11 every
    # network is, and the flag is accepted (and ignored) where it still exists.
    typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = builder.create_network(1 << int(typed) if typed is not None else 0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(graph.SerializeToString(), str(source)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(f"TensorRT's ONNX parser rejected {source}: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, spec.workspace_mib << 20)
    names = {network.get_input(i).name for i in range(network.num_inputs)}
    # One profile per shape range. image is [N,H,W,3]; style is [N,S]; stroke (v2) is [N].
    for shape in spec.shapes:
        profile = builder.create_optimization_profile()
        profile.set_shape("image", (1, *shape.min_hw, 3), (1, *shape.opt_hw, 3), (spec.max_batch, *shape.max_hw, 3))
        profile.set_shape("style", (1, num_styles), (1, num_styles), (spec.max_batch, num_styles))
        if "stroke" in names:
            profile.set_shape("stroke", (1,), (1,), (spec.max_batch,))
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
            shapes = {"image": [1, h, w, 3], "style": [1, num_styles]}
            if any(i.get_any_name() == "stroke" for i in model.inputs):
                shapes["stroke"] = [1]
            shaped.reshape(shapes)
            try:
                core.compile_model(shaped, "CPU", props)
            except RuntimeError as e:
                raise EngineError(f"OpenVINO cannot compile {onnx_path} at {w}x{h}: {e}") from e
    if not any(cache.iterdir()):
        raise EngineError(f"OpenVINO wrote no cache entries into {cache}")
    return props
