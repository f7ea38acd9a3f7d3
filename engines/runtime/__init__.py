"""Run exported generators: one Protocol, one class per backend, and a chooser.

    from engines.runtime import load_backend
    backend = load_backend("engines/models/default.onnx")    # backend="auto"
    print(backend.name, backend.precision, backend.reason)   # which one, and why
    out = backend.stylize(frame, weights)                    # HxWx3 uint8 -> HxWx3 uint8
    outs = backend.stylize_batch([f1, f2], weights_2xS)      # one network call

Backend kinds (``backend.name``; :mod:`engines.runtime.registry`, each declared by
its own module): ``tensorrt`` (a plan built by ``python -m engines build``),
``torch-cuda``, ``onnxruntime-cuda``, ``openvino-cpu``, ``onnxruntime-cpu``,
``torch-cpu``, and the remote ``triton``. ``backend.name`` is always a kind
``load_backend`` accepts, and ``backend.precision`` a precision it accepts, so a
running backend can be asked for again. ``backend="auto"`` tries the local kinds
in the preferred order (GPU before CPU, an order not measured; on the CPU OpenVINO,
ONNX Runtime, torch, as measured here) and sets ``backend.reason`` to which one it
picked and why each one before it was not available.

The runtime never builds an engine: TensorRT runs a plan that
``python -m engines build`` wrote (into ``engine_dir``, by default
``<model folder>/<stem>.engines/tensorrt-<precision>``), and refuses one whose
manifest does not match; OpenVINO uses a built model cache there when one exists.

Frames of any size (>= 8x8) are accepted. The network needs H and W that are
multiples of its stride (4 for v1 models, 8 for v2): other sizes are reflect-padded
on the host (``cv2.copyMakeBorder``) and cropped back.
Backends with a fixed shape range (TensorRT optimisation profiles) resize the
frame into the range (aspect kept, ``cv2.resize``) and the result back.

Bad input raises :class:`InputError` (wrong dtype, channel count, weight
vector length, negative or all-zero weights); a missing, corrupt or foreign
model file raises :class:`ModelFileError` (an :class:`EngineError`). Nothing
here imports torch unless the torch backend is chosen.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from pathlib import Path

from engines.runtime import registry
from engines.runtime.base import (
    Backend,
    EngineError,
    InputError,
    ModelFileError,
    ShapeRange,
    check_frame,
    check_weights,
)
from engines.runtime.frames import FrameBackend
from engines.runtime.model import ModelInfo, read_model_info
from engines.runtime.precision import AUTO, PRECISIONS, choose
from engines.runtime.registry import ALIASES, PREFERRED, ModelFiles, Plan, Request, backend_choices

__all__ = [
    "ALIASES",
    "PREFERRED",
    "Backend",
    "EngineError",
    "FrameBackend",
    "InputError",
    "ModelFileError",
    "ModelInfo",
    "ShapeRange",
    "auto_precisions",
    "check_frame",
    "backend_choices",
    "check_weights",
    "load_backend",
    "read_model_info",
]

log = logging.getLogger(__name__)


def int8_sibling(onnx: Path) -> Path:
    """Where ``python -m engines quantize`` puts a model's INT8 version: ``<stem>.int8.onnx`` beside it."""
    return registry.int8_sibling(onnx)


def _chooser(precision: str, plan: Plan) -> Callable[[], FrameBackend] | str:
    """The chooser over the plan's candidates (only the one asked for, if a precision was), or why there is none."""
    hint = f" ({plan.hint})" if plan.hint else ""
    if precision == AUTO:
        if not plan.candidates:
            return f"{plan.what}: nothing to run{hint}"
        reference = plan.reference if len(plan.candidates) > 1 else None
        return partial(choose, plan.candidates, reference, unavailable=plan.unavailable)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be auto or one of {', '.join(PRECISIONS)}, got {precision!r}")
    chosen = [c for c in plan.candidates if c.precision == precision]
    if not chosen:
        return f"{plan.what} cannot run at {precision} here{hint}"
    return partial(choose, chosen[:1], explicit=True)


def auto_precisions(model: str | Path, backend: str, *, engine_dir: str | Path | None = None) -> list[str]:
    """The precisions ``load_backend(model, backend)``'s auto chooses among on this machine (the
    backend kind's candidates for this model here, before the gate), or [] where it cannot run."""
    kind, _ = registry.resolve(backend, AUTO)
    entry = registry.kinds().get(kind)
    if entry is None or entry.device == "remote" or entry.unavailable_reason():
        return []
    folder = Path(engine_dir) if engine_dir is not None else None
    plan = entry.plan(Request(ModelFiles.of(Path(model)), None, folder, AUTO))
    return [c.precision for c in plan.candidates] if isinstance(plan, Plan) else []


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

    ``backend``: ``"auto"`` or one of :func:`backend_choices`. ONNX backends read
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
    kind, precision = registry.resolve(backend, precision)
    if kind == "triton":
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
    kinds = registry.kinds()
    folder = Path(engine_dir) if engine_dir is not None else None
    request = Request(ModelFiles.of(model), num_threads, folder, precision)
    order = PREFERRED if kind == "auto" else (kind,)
    skipped: list[str] = []
    for name in order:
        entry = kinds[name]
        if precision != AUTO and precision not in entry.precisions:
            skipped.append(f"{name}: runs {', '.join(entry.precisions)}, not {precision}")
            continue
        plan = entry.unavailable_reason() or entry.plan(request)
        made = _chooser(precision, plan) if isinstance(plan, Plan) else plan
        if isinstance(made, str):
            skipped.append(f"{name}: {made}")
            continue
        try:
            chosen = made()
        except ModelFileError:
            raise  # no other backend can read a broken model either
        except EngineError as e:
            if kind != "auto":
                raise
            skipped.append(f"{name}: failed to load ({e})")
            continue
        why = "; ".join(skipped)
        if kind == "auto":
            chosen.reason = (
                f"picked {chosen.name}, the first that runs here in the preferred order "
                f"({' > '.join(PREFERRED)})" + (f"; not available: {why}" if why else "")
            )
        else:
            chosen.reason = f"{chosen.name} requested explicitly"
        log.info("backend: %s; precision %s", chosen.reason, chosen.precision_reason)
        return chosen
    raise EngineError(f"no backend can run {model}: " + "; ".join(skipped))
