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
from functools import partial
from pathlib import Path

from common.cpu import cpu_bf16_flag
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
from engines.runtime.precision import AUTO, PRECISIONS, Candidate, choose

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


def int8_sibling(onnx: Path) -> Path:
    """Where ``python -m engines quantize`` puts a model's INT8 version: ``<stem>.int8.onnx`` beside it."""
    return onnx.with_name(onnx.stem + ".int8.onnx")


def _chooser(
    precision: str | None,
    candidates: list[Candidate],
    what: str,
    hint: str = "",
    reference: Callable[[], FrameBackend] | None = None,
    unavailable: tuple[str, ...] = (),
) -> Callable[[], FrameBackend] | str:
    """The chooser over ``candidates`` (only the one asked for, if a precision was), or why there is none."""
    if precision in (None, AUTO):
        if not candidates:
            return f"{what}: nothing to run" + (f" ({hint})" if hint else "")
        return partial(choose, candidates, reference if len(candidates) > 1 else None, unavailable=unavailable)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be auto or one of {', '.join(PRECISIONS)}, got {precision!r}")
    chosen = [c for c in candidates if c.precision == precision]
    if not chosen:
        return f"{what} cannot run at {precision} here" + (f" ({hint})" if hint else "")
    return partial(choose, chosen[:1], explicit=True)


def _make(
    kind: str, model: Path, num_threads: int | None, engine_dir: Path | None, precision: str | None
) -> Callable[[], FrameBackend] | str:
    """A constructor for ``kind`` on ``model`` at ``precision`` ("auto": the chooser's), or why not."""
    onnx, ckpt = _sibling(model, ".onnx"), _sibling(model, ".safetensors")
    # A quantized file given as the model is the int8 candidate itself; else its int8 sibling, if made.
    quantized = onnx.is_file() and bool(read_model_info(onnx).quantized)
    int8 = onnx if quantized else int8_sibling(onnx)
    no_int8 = f"no {int8.name} beside the model (python -m engines quantize {onnx.name} --calib PHOTOS makes one)"
    if kind == "tensorrt":
        from engines.runtime import onnxruntime_backend, tensorrt_backend

        if reason := tensorrt_backend.unavailable_reason():
            return reason
        if reason := _need(onnx, ".onnx"):
            return reason
        folders = [engine_dir] if engine_dir else [default_engine_dir(onnx, "tensorrt", p) for p in PRECISIONS]
        trt = [
            Candidate(Manifest.read(f).precision, partial(tensorrt_backend.TensorRTBackend, f, onnx), f"plan in {f}")
            for f in folders
            if _built(f, "tensorrt")
        ]
        prec = precision if precision not in (None, AUTO) else "fp16"
        folder = engine_dir or default_engine_dir(onnx, "tensorrt", prec)
        build = f"no TensorRT plan in {folder} (build it once: python -m engines build {onnx} --backend tensorrt "
        build += f"--precision {prec} --out {folder})"
        if not trt:
            return build
        # Plans have no float32 run of their own to compare with: ONNX Runtime on the CPU is the reference.
        reference = partial(onnxruntime_backend.OnnxRuntimeBackend, onnx, num_threads=num_threads)
        return _chooser(precision, trt, "TensorRT", build, reference)
    if kind in ("torch-cuda", "torch-cpu"):
        from engines.runtime import torch_backend

        device = kind.split("-")[1]
        if device == "cuda" and (reason := torch_backend.cuda_unavailable_reason()):
            return reason
        if device == "cpu" and (reason := _not_installed("torch")):
            return reason
        if reason := _need(ckpt, ".safetensors"):
            return reason
        run = partial(torch_backend.TorchBackend, ckpt, device=device, num_threads=num_threads)
        cands = [Candidate(p, partial(run, precision=p)) for p in (("fp16", "fp32") if device == "cuda" else ("fp32",))]
        return _chooser(precision, cands, f"torch on {device}")
    if kind in ("onnxruntime-cuda", "onnxruntime-cpu"):
        from engines.runtime import onnxruntime_backend

        device = kind.split("-")[1]
        if device == "cuda" and (reason := onnxruntime_backend.cuda_unavailable_reason()):
            return reason
        if reason := _not_installed("onnxruntime"):
            return reason
        if reason := _need(onnx, ".onnx"):
            return reason
        ort = partial(onnxruntime_backend.OnnxRuntimeBackend, device=device, num_threads=num_threads)
        cands = []
        if int8.is_file():
            cands.append(Candidate("int8", partial(ort, int8), f"quantized model {int8.name}"))
        if not quantized:
            cands.append(Candidate("fp32", partial(ort, onnx)))
        return _chooser(precision, cands, "ONNX Runtime", no_int8, unavailable=() if int8.is_file() else (no_int8,))
    if kind == "openvino-cpu":
        if reason := _not_installed("openvino"):
            return reason
        if reason := _need(onnx, ".onnx"):
            return reason
        from engines.runtime import openvino_backend

        def ov(path: Path, prec: str) -> Callable[[], FrameBackend]:
            # A model cache built for this precision (python -m engines build) serves where there is one.
            folder = engine_dir or default_engine_dir(path, "openvino", prec)
            cache = folder if _built(folder, "openvino") and Manifest.read(folder).precision == prec else None
            return partial(
                openvino_backend.OpenVinoBackend, path, num_threads=num_threads, precision=prec, engine_dir=cache
            )

        cands = []
        unavailable: list[str] = []
        if int8.is_file():
            cands.append(Candidate("int8", ov(int8, "int8"), f"quantized model {int8.name}"))
        else:
            unavailable.append(f"int8: {no_int8}")
        if not quantized:
            flag = cpu_bf16_flag()
            if flag or precision == "bf16":  # without bf16 units it is emulated: slower, never picked by auto
                cands.append(Candidate("bf16", ov(onnx, "bf16"), f"the CPU has {flag}" if flag else "emulated"))
            else:
                unavailable.append("bf16: this CPU has neither amx_bf16 nor avx512_bf16")
            if precision == "fp16":  # measured no faster than fp32 on these CPUs: only when asked for
                cands.append(Candidate("fp16", ov(onnx, "fp16")))
            cands.append(Candidate("fp32", ov(onnx, "fp32")))
        return _chooser(precision, cands, "OpenVINO", no_int8, unavailable=tuple(unavailable))
    raise ValueError(f"unknown backend {kind!r}; choose from {', '.join(BACKEND_CHOICES)}")


def load_backend(
    model: str | Path,
    backend: str = "auto",
    *,
    num_threads: int | None = None,
    engine_dir: str | Path | None = None,
    precision: str = AUTO,
    triton_url: str | None = None,
    triton_model: str = "stylecast",
    triton_timeout_s: float = 2.0,
    triton_shared_memory: bool = False,
) -> FrameBackend:
    """Load ``model`` (``.onnx``, or a ``.safetensors`` checkpoint) on a backend.

    ``backend``: ``"auto"`` or one of :data:`BACKEND_CHOICES`. ONNX backends read
    the ``.onnx`` beside a given ``.safetensors`` (same stem) and the torch backend
    the ``.safetensors`` beside a given ``.onnx``; a missing sibling is reported.
    ``num_threads``: CPU threads (default all cores). ``engine_dir``: a folder
    written by ``python -m engines build`` (default: the build's default folder
    beside the model). ``precision``: ``"auto"`` (the fastest that passes its
    parity gate here, see :mod:`engines.runtime.precision`) or one of
    ``fp32``, ``bf16``, ``fp16``, ``int8``, used as asked.

    ``backend="triton"``: the model runs on the Triton server at ``triton_url`` (model
    ``triton_model``); ``model`` is not read (:mod:`engines.runtime.triton_backend`).

    Returns the backend with ``.reason`` set. Raises :class:`ModelFileError` if
    the model file is missing or corrupt, :class:`EngineError` if no (requested)
    backend can run it.
    """
    if backend == "triton":
        from engines.runtime.triton_backend import TritonBackend

        if not triton_url:
            raise EngineError("--backend triton needs the server's address: --triton-url grpc://HOST:8001")
        remote = TritonBackend(triton_url, triton_model, timeout_s=triton_timeout_s, shared_memory=triton_shared_memory)
        remote.reason = f"triton requested explicitly ({triton_url}, model {triton_model} v{remote.version})"
        return remote
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
        log.info("backend: %s; precision %s", chosen.reason, chosen.precision_reason)
        return chosen
    raise EngineError(f"no backend can run {model}: " + "; ".join(skipped))
