"""Every backend kind in one table, each declared by its own module.

A :class:`Kind` is one way to run a model: its ``name`` is what ``load_backend(...,
backend=NAME)`` accepts and what the loaded backend's ``.name`` says, so a running
backend can always be asked for again by name (a learned style is loaded on the same
backend and precision). Each backend module declares its kinds (``KINDS``): the
precisions it can ever run, why it cannot run here (``unavailable_reason``), and the
candidates it offers for a model (:class:`Plan`: one constructor per precision it can
run now, and what it needs to run the others). ``load_backend("auto")`` walks
:data:`PREFERRED` in order; nothing here runs a network or imports a runtime library.

The preferred order puts GPU backends before CPU ones, and on the CPU OpenVINO, then
ONNX Runtime, then eager torch: that CPU order was measured (``python -m
bench.model_speed``, every net tried); the GPU order was not (no GPU was at hand).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from engines.runtime.base import EngineError
from engines.runtime.frames import FrameBackend
from engines.runtime.manifest import MANIFEST, Manifest
from engines.runtime.model import read_model_info
from engines.runtime.precision import Candidate


@dataclass(frozen=True)
class ModelFiles:
    """The files ``load_backend`` was pointed at: the ONNX, the checkpoint beside it, its INT8 sibling."""

    model: Path
    onnx: Path
    checkpoint: Path
    int8: Path
    quantized: bool  # the model given *is* an INT8 one (it is then the int8 candidate itself)

    @classmethod
    def of(cls, model: Path) -> ModelFiles:
        onnx = model if model.suffix == ".onnx" else model.with_suffix(".onnx")
        ckpt = model if model.suffix == ".safetensors" else model.with_suffix(".safetensors")
        quantized = onnx.is_file() and bool(read_model_info(onnx).quantized)
        return cls(model, onnx, ckpt, onnx if quantized else int8_sibling(onnx), quantized)

    def need_onnx(self) -> str | None:
        if self.onnx.is_file():
            return None
        return f"no ONNX file {self.onnx} (export it: python -m engines export {self.checkpoint} --out {self.onnx})"

    def need_checkpoint(self) -> str | None:
        if self.checkpoint.is_file():
            return None
        return f"no checkpoint {self.checkpoint} (the torch backend runs the .safetensors checkpoint)"

    @property
    def no_int8(self) -> str:
        return f"no {self.int8.name} beside the model (python -m engines quantize {self.onnx.name} --calib PHOTOS)"


@dataclass(frozen=True)
class Request:
    """What the caller asked for besides the kind."""

    files: ModelFiles
    num_threads: int | None = None
    engine_dir: Path | None = None
    precision: str = "auto"


@dataclass
class Plan:
    """What a kind offers for one model here: a constructor per precision, and why others are missing."""

    what: str  # e.g. "OpenVINO", for messages
    candidates: list[Candidate]
    hint: str = ""  # how to get what is missing (a build or quantize command)
    reference: Callable[[], FrameBackend] | None = None  # float32 to gate against, when no candidate is one
    unavailable: tuple[str, ...] = ()  # precisions that cannot run here, with the reason


@dataclass(frozen=True)
class Kind:
    """One backend kind (see the module docstring)."""

    name: str
    precisions: tuple[str, ...]  # every precision this kind can run somewhere
    device: str  # "cpu", "cuda" or "remote"
    unavailable_reason: Callable[[], str | None]
    plan: Callable[[Request], Plan | str] = field(repr=False)  # the candidates for a model, or why none


def int8_sibling(onnx: Path) -> Path:
    """Where ``python -m engines quantize`` puts a model's INT8 version: ``<stem>.int8.onnx`` beside it."""
    return onnx.with_name(onnx.stem + ".int8.onnx")


def built(folder: Path, backend: str) -> bool:
    """Whether ``folder`` holds a manifest of a ``backend`` engine (its match is checked on load)."""
    if not (folder / MANIFEST).is_file():
        return False
    try:
        return Manifest.read(folder).backend == backend
    except EngineError:
        return True  # let the backend say what is wrong with it


def not_installed(module: str) -> str | None:
    """None if ``module`` imports, else the reason a backend that needs it is unavailable."""
    import importlib

    try:
        importlib.import_module(module)
    except ImportError as e:
        return f"{module} is not installed ({e})"
    return None


@functools.cache
def kinds() -> dict[str, Kind]:
    """Every kind, by name, as the backend modules declare them (imported on first use: no cycle)."""
    from engines.runtime import (
        onnxruntime_backend,
        openvino_backend,
        tensorrt_backend,
        torch_backend,
        triton_backend,
    )

    modules = (tensorrt_backend, torch_backend, onnxruntime_backend, openvino_backend, triton_backend)
    table = {k.name: k for m in modules for k in m.KINDS}
    local = {k for k, v in table.items() if v.device != "remote"}
    if set(PREFERRED) != local:
        raise AssertionError(f"PREFERRED {PREFERRED} does not list exactly the local kinds {sorted(local)}")
    return table


# The order "auto" tries: GPU first (not measured: no GPU was at hand), then the CPU runtimes in the
# order measured fastest here. Remote kinds are never picked by auto.
PREFERRED = ("tensorrt", "torch-cuda", "onnxruntime-cuda", "openvino-cpu", "onnxruntime-cpu", "torch-cpu")
# Older and shorter names: the kind, and the precision they implied (None: "auto").
ALIASES: dict[str, tuple[str, str | None]] = {
    "openvino": ("openvino-cpu", None),
    "onnxruntime": ("onnxruntime-cpu", None),
    "torch": ("torch-cpu", None),
    "tensorrt-fp16": ("tensorrt", "fp16"),
    "tensorrt-fp32": ("tensorrt", "fp32"),
    "tensorrt-int8": ("tensorrt", "int8"),
    "torch-cuda-fp16": ("torch-cuda", "fp16"),
}


def backend_choices() -> tuple[str, ...]:
    """What a --backend option accepts: auto, every kind, the aliases."""
    return ("auto", *kinds(), *ALIASES)


def resolve(name: str, precision: str) -> tuple[str, str]:
    """A --backend value and precision -> (kind or "auto", precision); ``ValueError`` for an unknown name."""
    if name == "auto" or name in kinds():
        return name, precision
    if name in ALIASES:
        kind, implied = ALIASES[name]
        return kind, implied if implied is not None and precision == "auto" else precision
    raise ValueError(f"unknown backend {name!r}; choose from {', '.join(backend_choices())}")
