"""Run exported generators: one Protocol, one class per backend, and a chooser.

    from engines.runtime import load_backend
    backend = load_backend("engines/models/default.onnx")    # backend="auto"
    print(backend.name, backend.precision, backend.reason)   # which one, and why
    out = backend.stylize(frame, weights)                    # HxWx3 uint8 -> HxWx3 uint8
    outs = backend.stylize_batch([f1, f2], weights_2xS)      # one network call

Backends (``name``): ``tensorrt-fp16``/``tensorrt-fp32`` (a plan built by
``python -m engines build``), ``torch-cuda``, ``onnxruntime-cuda``,
``openvino-cpu``, ``onnxruntime-cpu``, ``torch-cpu``. ``backend="auto"`` tries
them in that order (GPU before CPU; on the CPU OpenVINO measured fastest here)
and sets ``backend.reason`` to which one it picked and why each faster one was
not available. ``load_backend`` returns the backend; the reason is the attribute.

The runtime never builds an engine: TensorRT runs a plan that
``python -m engines build`` wrote (into ``engine_dir``, by default
``<model folder>/<stem>.engines/tensorrt-<precision>``), and refuses one whose
manifest does not match; OpenVINO uses a built model cache there when one exists.

Frames of any size (>= 8x8) are accepted. The network needs H and W that are
multiples of 4: other sizes are reflect-padded on the host
(``cv2.copyMakeBorder``, at most 3 pixels bottom/right) and cropped back.
Backends with a fixed shape range (TensorRT optimisation profiles) resize the
frame into the range (aspect kept, ``cv2.resize``) and the result back.

Bad input raises :class:`InputError` (wrong dtype, channel count, weight
vector length, negative or all-zero weights); a missing, corrupt or foreign
model file raises :class:`ModelFileError` (an :class:`EngineError`). Nothing
here imports torch unless the torch backend is chosen.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from pathlib import Path

from engines.runtime.base import (
    ALIASES,
    AUTO_ORDER,
    BACKEND_CHOICES,
    Backend,
    EngineError,
    InputError,
    ModelFileError,
    ShapeRange,
    check_frame,
    check_weights,
)
from engines.runtime.frames import FrameBackend
from engines.runtime.manifest import MANIFEST, Manifest, default_engine_dir
from engines.runtime.model import ModelInfo, read_model_info

__all__ = [
    "ALIASES",
    "AUTO_ORDER",
    "BACKEND_CHOICES",
    "Backend",
    "EngineError",
    "FrameBackend",
    "InputError",
    "ModelFileError",
    "ModelInfo",
    "ShapeRange",
    "check_frame",
    "check_weights",
    "load_backend",
    "read_model_info",
]

log = logging.getLogger(__name__)


def _sibling(model: Path, suffix: str) -> Path:
    return model if model.suffix == suffix else model.with_suffix(suffix)


def _need(path: Path, what: str) -> str | None:
    if path.is_file():
        return None
    if what == ".onnx":
        return (
            f"no ONNX file {path} (export it: python -m engines export {path.with_suffix('.safetensors')} --out {path})"
        )
    return f"no checkpoint {path} (the torch backend runs the .safetensors checkpoint)"


def _not_installed(module: str) -> str | None:
    """None if ``module`` imports, else the reason a backend that needs it is unavailable."""
    try:
        importlib.import_module(module)
    except ImportError as e:
        return f"{module} is not installed ({e})"
    return None


def _built(folder: Path, backend: str) -> bool:
    """Whether ``folder`` holds a manifest of a ``backend`` engine (its match is checked on load)."""
    if not (folder / MANIFEST).is_file():
        return False
    try:
        return Manifest.read(folder).backend == backend
    except EngineError:
        return True  # let the backend say what is wrong with it


def _make(
    kind: str, model: Path, num_threads: int | None, engine_dir: Path | None, precision: str | None
) -> Callable[[], FrameBackend] | str:
    """A constructor for ``kind`` on ``model``, or the reason it is unavailable."""
    onnx, ckpt = _sibling(model, ".onnx"), _sibling(model, ".safetensors")
    if kind == "tensorrt":
        from engines.runtime import tensorrt_backend

        if reason := tensorrt_backend.unavailable_reason():
            return reason
        if reason := _need(onnx, ".onnx"):
            return reason
        prec = precision or "fp16"
        folder = engine_dir or default_engine_dir(onnx, "tensorrt", prec)
        if not _built(folder, "tensorrt"):
            return (
                f"no TensorRT plan in {folder} (build it once: python -m engines build {onnx} "
                f"--backend tensorrt --precision {prec} --out {folder})"
            )
        return lambda: tensorrt_backend.TensorRTBackend(folder, onnx)
    if kind in ("torch-cuda", "torch-cpu"):
        from engines.runtime import torch_backend

        device = kind.split("-")[1]
        if device == "cuda" and (reason := torch_backend.cuda_unavailable_reason()):
            return reason
        if device == "cpu" and (reason := _not_installed("torch")):
            return reason
        if reason := _need(ckpt, ".safetensors"):
            return reason
        prec = precision if device == "cuda" and precision in ("fp32", "fp16") else "fp32"
        return lambda: torch_backend.TorchBackend(ckpt, device=device, precision=prec, num_threads=num_threads)
    if kind in ("onnxruntime-cuda", "onnxruntime-cpu"):
        from engines.runtime import onnxruntime_backend

        device = kind.split("-")[1]
        if device == "cuda" and (reason := onnxruntime_backend.cuda_unavailable_reason()):
            return reason
        if reason := _not_installed("onnxruntime"):
            return reason
        if reason := _need(onnx, ".onnx"):
            return reason
        return lambda: onnxruntime_backend.OnnxRuntimeBackend(onnx, device=device, num_threads=num_threads)
    if kind == "openvino-cpu":
        if reason := _not_installed("openvino"):
            return reason
        if reason := _need(onnx, ".onnx"):
            return reason
        from engines.runtime import openvino_backend

        folder = engine_dir or default_engine_dir(onnx, "openvino", "fp32")
        cache = folder if _built(folder, "openvino") else None
        return lambda: openvino_backend.OpenVinoBackend(onnx, num_threads=num_threads, engine_dir=cache)
    raise ValueError(f"unknown backend {kind!r}; choose from {', '.join(BACKEND_CHOICES)}")


def load_backend(
    model: str | Path,
    backend: str = "auto",
    *,
    num_threads: int | None = None,
    engine_dir: str | Path | None = None,
    precision: str | None = None,
) -> FrameBackend:
    """Load ``model`` (``.onnx``, or a ``.safetensors`` checkpoint) on a backend.

    ``backend``: ``"auto"`` or one of :data:`BACKEND_CHOICES`. ONNX backends read
    the ``.onnx`` beside a given ``.safetensors`` (same stem) and the torch backend
    the ``.safetensors`` beside a given ``.onnx``; a missing sibling is reported.
    ``num_threads``: CPU threads (default all cores). ``engine_dir``: a folder
    written by ``python -m engines build`` (default: the build's default folder
    beside the model). ``precision``: TensorRT/torch-cuda precision (``fp16``
    default for TensorRT, ``fp32`` for torch).

    Returns the backend with ``.reason`` set. Raises :class:`ModelFileError` if
    the model file is missing or corrupt, :class:`EngineError` if no (requested)
    backend can run it.
    """
    model = Path(model)
    if model.suffix not in (".onnx", ".safetensors"):
        raise ModelFileError(f"model must be a .onnx or .safetensors file, got {model}")
    if not model.is_file():
        raise ModelFileError(f"model file not found: {model}")
    if model.suffix == ".onnx":
        read_model_info(model)  # a corrupt or foreign file fails here, with the reason
    edir = Path(engine_dir) if engine_dir is not None else None
    kind = ALIASES.get(backend, backend)
    candidates = AUTO_ORDER if kind == "auto" else (kind,)
    skipped: list[str] = []
    for cand in candidates:
        made = _make(cand, model, num_threads, edir, precision)
        if isinstance(made, str):
            skipped.append(f"{cand}: {made}")
            continue
        try:
            chosen = made()
        except ModelFileError:
            raise  # no other backend can read a broken model either
        except EngineError as e:
            if kind != "auto":
                raise
            skipped.append(f"{cand}: failed to load ({e})")
            continue
        why = "; ".join(skipped)
        if kind == "auto":
            chosen.reason = f"picked {chosen.name} (fastest available)" + (f"; not available: {why}" if why else "")
        else:
            chosen.reason = f"{chosen.name} requested explicitly"
        log.info("backend: %s", chosen.reason)
        return chosen
    raise EngineError(f"no backend can run {model}: " + "; ".join(skipped))
