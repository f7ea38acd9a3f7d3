"""What an engine is built for, and the manifest that says so: one home for build and runtime.

``engines.build`` writes an engine and its ``manifest.json``; the backends in
``engines.runtime`` read the manifest and refuse an engine built for something
else. Both import this module, neither imports the other.

A manifest records the ONNX sha256, precision, shape profiles, runtime version,
device name and compute capability (GPU) or CPU capabilities, and the build
time. :func:`check_manifest` compares the key fields one by one; a mismatch
names the field with the cached and the wanted value (:class:`ManifestMismatch`).

Shapes are written ``WIDTHxHEIGHT`` in pixels (like ``640x480``); a range is
``MIN:OPT:MAX``. Nothing here imports TensorRT or OpenVINO until a device's
facts are asked for.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from common.cli import opt
from common.cpu import cpu_bf16_flag
from common.sizes import parse_size
from engines.runtime.base import EngineError
from engines.runtime.model import file_sha256

MANIFEST = "manifest.json"
MANIFEST_VERSION = 2  # 2: OpenVINO engines are a warmed model cache (folder "cache"), with shapes
BACKENDS = ("tensorrt", "openvino")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
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
# TensorRT major versions the build and the runtime are written for (pyproject: tensorrt>=10,<12).
TENSORRT_MAJORS = (10, 11)
# TensorRT networks are strongly typed (always, in 11): a precision is a graph of that precision.
SOURCE_SUFFIX = {"fp32": ".onnx", "fp16": ".fp16.onnx", "int8": ".int8.onnx"}
OPENVINO_PRECISIONS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
ARTIFACTS = {"tensorrt": "model.plan", "openvino": "cache"}


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
        hw = [parse_size(p)[::-1] for p in parts]
        return cls(hw[0], hw[1], hw[2])

    @property
    def sizes_hw(self) -> list[tuple[int, int]]:
        """min, opt and max, without repeats (the sizes an OpenVINO build compiles ahead)."""
        return list(dict.fromkeys((self.min_hw, self.opt_hw, self.max_hw)))

    def __str__(self) -> str:
        return ":".join(f"{w}x{h}" for h, w in (self.min_hw, self.opt_hw, self.max_hw))


@dataclass(frozen=True)
class EngineSpec:
    """What to build: backend, precision, shape profiles, batch limit (``python -m engines build`` options)."""

    backend: str = opt("tensorrt", "engine to build", choices=BACKENDS)
    precision: str = opt(
        "fp16",
        "TensorRT: fp32, fp16 (built from MODEL.fp16.onnx: python -m engines export --precision fp16) or int8 "
        "(from MODEL.int8.onnx: python -m engines quantize); OpenVINO: fp32, bf16 or fp16 inference",
        choices=PRECISIONS,
    )
    shapes: tuple[ShapeProfile, ...] = opt(
        (ShapeProfile((240, 320), (480, 640), (720, 1280)),),
        "frame-size range MIN:OPT:MAX, WIDTHxHEIGHT pixels each; repeat for several ranges (TensorRT: one "
        "optimisation profile each; OpenVINO: min, opt and max are compiled ahead)",
        flag="--shapes",
        parse=ShapeProfile.parse,
        action="append",
        metavar="MIN:OPT:MAX",
    )
    max_batch: int = opt(4, "TensorRT: most frames per call (the streamer batches several sessions)")
    workspace_mib: int = opt(1024, "TensorRT builder scratch memory limit in MiB", flag="--workspace")
    num_threads: int | None = opt(None, "OpenVINO: CPU inference threads (default: all cores)", flag="--threads")
    timing_cache: Path | None = opt(
        DEFAULT_TIMING_CACHE, "TensorRT timing cache file, read before and written after each build"
    )

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.backend == "openvino" and self.precision == "int8":
            raise ValueError(
                "OpenVINO builds are fp32, bf16 or fp16; an int8 model comes from python -m engines quantize"
            )
        if self.backend == "tensorrt" and self.precision == "bf16":
            raise ValueError("TensorRT builds here are fp16, fp32 or int8")
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {self.max_batch}")
        if not self.shapes:
            raise ValueError("at least one shape range is needed")

    def shapes_json(self) -> list[dict[str, list[int]]]:
        return [{"min_hw": list(s.min_hw), "opt_hw": list(s.opt_hw), "max_hw": list(s.max_hw)} for s in self.shapes]

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> EngineSpec:
        """The spec a manifest's engine was built from (for checking it against this machine)."""
        return cls(
            backend=manifest.backend,
            precision=manifest.precision,
            shapes=tuple(ShapeProfile(_hw(s["min_hw"]), _hw(s["opt_hw"]), _hw(s["max_hw"])) for s in manifest.shapes),
            max_batch=max(1, manifest.max_batch),
        )


def _hw(value: list[int]) -> tuple[int, int]:
    return int(value[0]), int(value[1])


def precision_source(onnx_path: Path, precision: str) -> Path:
    """The ONNX file a TensorRT plan of ``precision`` is built from: ``<stem>.onnx`` for fp32,
    ``<stem>.fp16.onnx`` (float16 inside, uint8 ends) and ``<stem>.int8.onnx`` (Q/DQ) beside it."""
    stem = onnx_path.name.removesuffix(".onnx").removesuffix(".fp16").removesuffix(".int8")
    return onnx_path.with_name(stem + SOURCE_SUFFIX.get(precision, ".onnx"))


def default_engine_dir(onnx_path: str | Path, backend: str, precision: str) -> Path:
    """Where ``python -m engines build`` puts an engine and ``load_backend`` looks for one:
    ``<onnx folder>/<stem>.engines/<backend>-<precision>``."""
    onnx_path = Path(onnx_path)
    return onnx_path.parent / f"{onnx_path.stem}.engines" / f"{backend}-{precision}"


def openvino_config(num_threads: int | None = None, precision: str = "fp32") -> dict[str, Any]:
    """The CPU compile properties used for serving (also written into build manifests).

    ``int8`` is a quantized model: its int8 layers run as quantized, the rest (instance
    norms, the uint8 conversions) in bf16 where the CPU has bf16 units, else in f32.
    """
    if precision == "int8":
        hint = "bf16" if cpu_bf16_flag() else "f32"
    elif precision in OPENVINO_PRECISIONS:
        hint = OPENVINO_PRECISIONS[precision]
    else:
        raise ValueError(f"precision must be one of {sorted(OPENVINO_PRECISIONS)} or int8, got {precision!r}")
    return {
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": int(num_threads or os.cpu_count() or 1),
        "INFERENCE_PRECISION_HINT": hint,
    }


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
        atomic_write(path, json.dumps(asdict(self), indent=2).encode())
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


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file and a rename (0644, fsynced)."""
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

    from engines.runtime.cuda import device_facts

    name, cc = device_facts()
    return trt.__version__, name, cc


def openvino_target() -> tuple[str, str, str]:
    """(OpenVINO version, CPU name, CPU capabilities) of this machine."""
    import openvino as ov

    core = ov.Core()
    caps = ",".join(sorted(core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")))
    return ov.get_version(), str(core.get_property("CPU", "FULL_DEVICE_NAME")), caps


def wanted_manifest(onnx_path: Path, spec: EngineSpec) -> Manifest:
    """The manifest a fresh build of ``onnx_path`` with ``spec`` would have on this machine."""
    version, device, cc = tensorrt_target() if spec.backend == "tensorrt" else openvino_target()
    return Manifest(
        backend=spec.backend,
        onnx=onnx_path.name,
        onnx_sha256=file_sha256(onnx_path),
        precision=spec.precision,
        shapes=spec.shapes_json(),
        max_batch=spec.max_batch if spec.backend == "tensorrt" else 0,
        runtime_version=version,
        device=device,
        compute_capability=cc,
        artifact=ARTIFACTS[spec.backend],
    )


def verified_manifest(onnx_path: str | Path, folder: str | Path) -> Manifest:
    """The manifest in ``folder`` if its engine was built for ``onnx_path`` on this machine, else raise.

    :class:`EngineError` when there is no manifest or no engine beside it;
    :class:`ManifestMismatch` naming the field when it was built for something else.
    """
    folder = Path(folder)
    cached = Manifest.read(folder)
    if not (folder / cached.artifact).exists():
        raise EngineError(f"{folder / cached.artifact} is missing: rebuild it (python -m engines build ...)")
    check_manifest(cached, wanted_manifest(Path(onnx_path), EngineSpec.from_manifest(cached)), folder)
    return cached
