"""Build an exported ONNX model into a runtime engine, with a manifest beside it.

Two builders, one manifest scheme (``manifest.json`` in the output folder):

* TensorRT (>= 10): ONNX parser -> builder config (FP16/INT8 flags, workspace
  limit) -> one optimisation profile per shape range -> serialized plan
  (``model.plan``). A timing cache file is loaded before and saved after every
  build, so later builds (other precisions, other shape ranges) reuse kernel
  timings.
* OpenVINO (CPU): compile with the serving properties and export the compiled
  blob (``model.blob``), imported at load time instead of compiling again.

A manifest records the ONNX sha256, precision, shape profiles, runtime
version, device name and compute capability and the build time. Before a cached
engine is used, :func:`check_manifest` compares the key fields one by one; a
mismatch names the field with the cached and the wanted value, and the engine
is rebuilt (``ensure_engine(..., rebuild=True)``) or refused
(:class:`ManifestMismatch`), never used silently.

Shapes are written ``WIDTHxHEIGHT`` in pixels (like ``640x480``); a range is
``MIN:OPT:MAX``. This module imports neither torch nor (until a TensorRT build
is asked for) TensorRT.
"""

from __future__ import annotations

import io
import json
import logging
import os
import platform
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from engines.runtime.base import EngineError
from engines.runtime.model import file_sha256, read_model_info

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
BACKENDS = ("tensorrt", "openvino")
PRECISIONS = ("fp32", "fp16", "int8")
# Fields that must match between a cached manifest and the wanted build, in the
# order they are compared (the first mismatch is reported).
KEY_FIELDS = (
    "manifest_version",
    "backend",
    "onnx_sha256",
    "precision",
    "shapes",
    "max_batch",
    "runtime_version",
    "device",
    "compute_capability",
)
DEFAULT_TIMING_CACHE = Path.home() / ".cache" / "stylecast" / "tensorrt-timing.cache"


class ManifestMismatch(EngineError):
    """A cached engine was built for something else; ``field``, ``cached``, ``wanted`` say what."""

    def __init__(self, field: str, cached: object, wanted: object, path: Path) -> None:
        super().__init__(
            f"cached engine {path} does not match: {field} is {cached!r} in its manifest, "
            f"wanted {wanted!r}; rebuild it (python -m engines build ...)"
        )
        self.field, self.cached, self.wanted = field, cached, wanted


@dataclass(frozen=True)
class ShapeProfile:
    """One frame-size range (height, width in pixels), min <= opt <= max, multiples of 4."""

    min_hw: tuple[int, int]
    opt_hw: tuple[int, int]
    max_hw: tuple[int, int]

    def __post_init__(self) -> None:
        for name in ("min_hw", "opt_hw", "max_hw"):
            h, w = getattr(self, name)
            if h % 4 or w % 4 or h < 8 or w < 8:
                raise ValueError(f"{name} {w}x{h}: width and height must be multiples of 4, at least 8")
        if not all(a <= b <= c for a, b, c in zip(self.min_hw, self.opt_hw, self.max_hw, strict=True)):
            raise ValueError(f"shape range must satisfy min <= opt <= max per side, got {self}")

    @classmethod
    def parse(cls, text: str) -> ShapeProfile:
        """``"320x240:640x480:1280x720"`` (WxH, MIN:OPT:MAX) -> ShapeProfile."""
        parts = text.split(":")
        if len(parts) != 3:
            raise ValueError(f"shape range must be MIN:OPT:MAX like 320x240:640x480:1280x720, got {text!r}")
        hw = [parse_size(p) for p in parts]
        return cls(hw[0], hw[1], hw[2])

    def __str__(self) -> str:
        return ":".join(f"{w}x{h}" for h, w in (self.min_hw, self.opt_hw, self.max_hw))


def parse_size(text: str) -> tuple[int, int]:
    """``"640x480"`` (width x height) -> (480, 640) as (height, width)."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError as e:
        raise ValueError(f"size must be WIDTHxHEIGHT like 640x480, got {text!r}") from e
    return h, w


@dataclass(frozen=True)
class EngineSpec:
    """What to build: backend, precision, shape profiles, batch limit."""

    backend: str = "tensorrt"
    precision: str = "fp16"
    shapes: tuple[ShapeProfile, ...] = (ShapeProfile((240, 320), (480, 640), (720, 1280)),)
    max_batch: int = 4  # frames per call (the streamer batches several sessions)
    workspace_mib: int = 1024  # TensorRT builder scratch memory limit
    num_threads: int | None = None  # OpenVINO CPU threads (default: all cores)
    timing_cache: Path | None = DEFAULT_TIMING_CACHE
    calibration_dir: Path | None = None  # INT8 only: folder of RGB images for calibration

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.backend == "openvino" and self.precision == "int8":
            raise ValueError("OpenVINO builds here are fp32/fp16 only (int8 needs NNCF quantization)")
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")
        if not self.shapes:
            raise ValueError("at least one shape range is needed")

    def shapes_json(self) -> list[dict[str, list[int]]]:
        return [{"min_hw": list(s.min_hw), "opt_hw": list(s.opt_hw), "max_hw": list(s.max_hw)} for s in self.shapes]


@dataclass
class Manifest:
    """The JSON file beside every built engine."""

    backend: str
    onnx: str
    onnx_sha256: str
    precision: str
    shapes: list[dict[str, list[int]]]
    max_batch: int
    runtime_version: str
    device: str
    compute_capability: str
    artifact: str
    build_seconds: float = 0.0
    built_at: str = ""
    host: str = field(default_factory=platform.node)
    extra: dict[str, Any] = field(default_factory=dict)
    manifest_version: int = MANIFEST_VERSION

    def write(self, folder: Path) -> Path:
        path = folder / MANIFEST
        _atomic_write(path, json.dumps(asdict(self), indent=2).encode())
        return path

    @classmethod
    def read(cls, folder: Path) -> Manifest:
        path = folder / MANIFEST
        try:
            data = json.loads(path.read_text())
            return cls(**data)
        except FileNotFoundError as e:
            raise EngineError(f"no manifest {path}: build the engine first (python -m engines build ...)") from e
        except (json.JSONDecodeError, TypeError) as e:
            raise EngineError(f"{path} is not a valid engine manifest: {e}") from e


def check_manifest(cached: Manifest, wanted: Manifest, folder: Path) -> None:
    """Raise :class:`ManifestMismatch` naming the first key field that differs."""
    for name in KEY_FIELDS:
        a, b = getattr(cached, name), getattr(wanted, name)
        if a != b:
            raise ManifestMismatch(name, a, b, folder)


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------- device facts


def tensorrt_target() -> tuple[str, str, str]:
    """(TensorRT version, GPU name, compute capability "major.minor") of this machine."""
    import tensorrt as trt

    from engines.runtime.tensorrt_backend import cudart_module

    cudart = cudart_module()
    err, device = cudart.cudaGetDevice()
    _cuda_check(err, "cudaGetDevice")
    err, prop = cudart.cudaGetDeviceProperties(device)
    _cuda_check(err, "cudaGetDeviceProperties")
    name = prop.name.decode() if isinstance(prop.name, bytes) else str(prop.name)
    return trt.__version__, name.strip("\x00 "), f"{prop.major}.{prop.minor}"


def openvino_target() -> tuple[str, str, str]:
    """(OpenVINO version, CPU name, CPU capabilities) of this machine."""
    import openvino as ov

    core = ov.Core()
    caps = ",".join(sorted(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")))
    return ov.get_version(), str(core.get_property("CPU", "FULL_DEVICE_NAME")), caps


def _cuda_check(err: Any, what: str) -> None:
    if int(err) != 0:
        raise EngineError(f"{what} failed: {err}")


def wanted_manifest(onnx_path: Path, spec: EngineSpec) -> Manifest:
    """The manifest a fresh build of ``onnx_path`` with ``spec`` would have on this machine."""
    if spec.backend == "tensorrt":
        version, device, cc = tensorrt_target()
        artifact = "model.plan"
    else:
        version, device, cc = openvino_target()
        artifact = "model.blob"
    return Manifest(
        backend=spec.backend,
        onnx=onnx_path.name,
        onnx_sha256=file_sha256(onnx_path),
        precision=spec.precision,
        shapes=spec.shapes_json() if spec.backend == "tensorrt" else [],
        max_batch=spec.max_batch if spec.backend == "tensorrt" else 0,
        runtime_version=version,
        device=device,
        compute_capability=cc,
        artifact=artifact,
    )


# --------------------------------------------------------------------------- builders


def build_engine(onnx_path: str | Path, spec: EngineSpec, out_dir: str | Path) -> Manifest:
    """Build ``onnx_path`` for ``spec`` into ``out_dir`` (artifact + manifest.json); returns the manifest."""
    onnx_path, out_dir = Path(onnx_path), Path(out_dir)
    info = read_model_info(onnx_path)  # clear error for a missing/corrupt/foreign file
    manifest = wanted_manifest(onnx_path, spec)
    start = time.perf_counter()
    if spec.backend == "tensorrt":
        data = _build_tensorrt(onnx_path, spec, len(info.styles))
    else:
        data, props = _build_openvino(onnx_path, spec)
        manifest.extra["properties"] = props
    manifest.build_seconds = round(time.perf_counter() - start, 3)
    manifest.built_at = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    manifest.extra["styles"] = info.styles
    _atomic_write(out_dir / manifest.artifact, data)
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
    if not (out_dir / MANIFEST).is_file() or not (out_dir / wanted.artifact).is_file():
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
        _atomic_write(spec.timing_cache, bytes(config.get_timing_cache().serialize()))
    return bytes(plan)


def _make_calibrator(trt: Any, spec: EngineSpec, num_styles: int) -> Any:
    """An entropy calibrator fed with images from ``spec.calibration_dir`` at the opt shape."""
    import cv2
    import numpy as np

    from engines.runtime.tensorrt_backend import DeviceBuffer

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


def _build_openvino(onnx_path: Path, spec: EngineSpec) -> tuple[bytes, dict[str, Any]]:
    """Compile for the CPU with the serving properties; returns (exported blob, properties)."""
    import openvino as ov

    from engines.runtime.openvino_backend import openvino_config

    props = openvino_config(spec.num_threads, spec.precision)
    core = ov.Core()
    compiled = core.compile_model(core.read_model(str(onnx_path)), "CPU", props)
    stream = io.BytesIO()
    compiled.export_model(stream)
    return stream.getvalue(), props
