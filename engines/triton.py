"""NVIDIA Triton Inference Server: model repositories from our exports and builds, and a real server anywhere.

    # a repository Triton serves (its onnxruntime, openvino or tensorrt backend)
    python -m engines triton repo engines/models/default.onnx --out repo --kind onnxruntime --max-batch 8
    python -m engines triton repo engines/models/default.onnx --out repo --kind tensorrt \\
        --plan engines/models/default.engines/tensorrt-fp16

    # a real Triton server (PyTriton bundles the binary) hosting the model on one of our backends
    python -m engines triton serve engines/models/default.onnx --backend openvino --grpc-port 8001

**Repositories** (:func:`write_repo`): ``REPO/NAME/1/model.onnx`` (or ``model.plan``) and
``config.pbtxt`` with the exported I/O (``image`` UINT8 [-1,-1,3], ``style`` FP32 [S],
``stylized`` UINT8 [-1,-1,3], all batched), ``max_batch_size``, ``dynamic_batching``
(preferred sizes, a queue delay in microseconds), ``instance_group``, ``model_warmup`` and,
in ``parameters``, the style names, painting files and stride, so a client learns the model
from the server alone. A TensorRT plan is refused when its build manifest was made for
another ONNX file; its optimisation profiles go into ``parameters`` and one instance profile
each. Every config written is parsed as Triton's ``ModelConfig`` protobuf (from
``tritonclient``) before it is written, so a typo fails here, not at deploy time.

**Serving** (:func:`serve`): PyTriton (``nvidia-pytriton``, the ``triton`` extra) starts a real
``tritonserver`` with the Python backend; the model runs on any ``engines.runtime`` backend
inside it, behind Triton's dynamic batcher. PyTriton's generated config has no free
parameters, so the model's facts are served by a second model, ``NAME-info`` (one string
output, JSON), which :class:`engines.runtime.triton_backend.TritonBackend` reads where the
config has none.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sysconfig
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from engines.runtime.base import EngineError
from engines.runtime.frames import FrameBackend
from engines.runtime.manifest import Manifest, ManifestMismatch
from engines.runtime.model import file_sha256, read_model_info

log = logging.getLogger(__name__)

KINDS = ("onnxruntime", "openvino", "tensorrt")
INFO_SUFFIX = "-info"  # the model that serves NAME's facts where its config cannot carry them
PARAM_PREFIX = "stylecast."


@dataclass(frozen=True)
class RepoSpec:
    """What a repository's config says beyond the model file."""

    name: str = "stylecast"
    kind: str = "onnxruntime"
    max_batch: int = 8
    instances: int = 1
    preferred_batch: tuple[int, ...] = (2, 4, 8)
    queue_delay_us: int = 500  # how long the batcher waits for more requests to join a batch
    warmup_hw: tuple[int, int] = (240, 320)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.max_batch < 1 or self.instances < 1:
            raise ValueError("max_batch and instances must be at least 1")
        if not self.name or any(c in self.name for c in "/\\ "):
            raise ValueError(f"a Triton model name cannot be empty or hold slashes or spaces, got {self.name!r}")


def _pbtxt_string(value: str) -> str:
    # A JSON string literal (UTF-8 kept, not \u-escaped) is a valid protobuf text string literal.
    return json.dumps(value, ensure_ascii=False)


def model_config_text(
    spec: RepoSpec, num_styles: int, parameters: dict[str, str], profiles: int = 0, stroke: bool = False
) -> str:
    """``config.pbtxt`` for ``spec`` (not yet validated: :func:`check_config` does that).

    ``stroke``: the model has a ``stroke`` input ([N] float32 in the graph; Triton's batched
    dims cannot be empty, so it is declared [1] per request and reshaped to a scalar).
    """
    preferred = [b for b in spec.preferred_batch if b <= spec.max_batch]
    lines = [f"name: {_pbtxt_string(spec.name)}"]
    if spec.kind == "tensorrt":
        lines.append('platform: "tensorrt_plan"')
    else:
        lines.append(f"backend: {_pbtxt_string(spec.kind)}")
    gpu = spec.kind == "tensorrt"
    h, w = spec.warmup_hw
    lines += [
        f"max_batch_size: {spec.max_batch}",
        'input [ { name: "image" data_type: TYPE_UINT8 dims: [ -1, -1, 3 ] },',
        f'        {{ name: "style" data_type: TYPE_FP32 dims: [ {num_styles} ] }}'
        + (
            ' ,\n        { name: "stroke" data_type: TYPE_FP32 dims: [ 1 ] reshape: { shape: [ ] } } ]'
            if stroke
            else " ]"
        ),
        'output [ { name: "stylized" data_type: TYPE_UINT8 dims: [ -1, -1, 3 ] } ]',
        "dynamic_batching {",
        f"  preferred_batch_size: [ {', '.join(map(str, preferred))} ]" if preferred else "",
        f"  max_queue_delay_microseconds: {spec.queue_delay_us}",
        "}",
        "instance_group [ {",
        f"  count: {spec.instances}",
        f"  kind: {'KIND_GPU' if gpu else 'KIND_CPU'}",
        f"  profile: [ {', '.join(_pbtxt_string(str(i)) for i in range(profiles))} ]" if profiles else "",
        "} ]",
        "model_warmup [ {",
        '  name: "first frame"',
        "  batch_size: 1",
        f'  inputs {{ key: "image" value: {{ data_type: TYPE_UINT8 dims: [ {h}, {w}, 3 ] zero_data: true }} }}',
        f'  inputs {{ key: "style" value: {{ data_type: TYPE_FP32 dims: [ {num_styles} ] random_data: true }} }}',
        '  inputs { key: "stroke" value: { data_type: TYPE_FP32 dims: [ 1 ] random_data: true } }' if stroke else "",
        "} ]",
    ]
    for key, value in parameters.items():
        lines.append(f"parameters {{ key: {_pbtxt_string(key)} value: {{ string_value: {_pbtxt_string(value)} }} }}")
    return "\n".join(line for line in lines if line) + "\n"


def check_config(text: str) -> Any:
    """Parse ``text`` as Triton's ``ModelConfig``; ``ValueError`` naming the problem if it is not one."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as e:
        raise ValueError(f"config.pbtxt does not parse as Triton's ModelConfig: {e}") from e


def model_parameters(onnx_path: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """The facts a client needs, as string parameters: styles, painting files, stride, format."""
    info = read_model_info(onnx_path)
    params = {
        PARAM_PREFIX + "styles": json.dumps(info.styles),
        PARAM_PREFIX + "sources": json.dumps(info.sources),
        PARAM_PREFIX + "stride": str(info.stride),
        **{PARAM_PREFIX + k: json.dumps(v) for k, v in info.stroke_scale.facts().items()},
        PARAM_PREFIX + "format_version": str(info.format_version),
        PARAM_PREFIX + "checkpoint_sha256": info.checkpoint_sha256,
    }
    return {**params, **(extra or {})}


def write_repo(onnx_path: str | Path, out: str | Path, spec: RepoSpec, plan: str | Path | None = None) -> Path:
    """Write ``out/NAME/1/model.{onnx,plan}`` and ``out/NAME/config.pbtxt``; returns the model folder."""
    onnx_path, out = Path(onnx_path), Path(out)
    info = read_model_info(onnx_path)  # a clear error for a missing or foreign file
    extra: dict[str, str] = {}
    profiles = 0
    if spec.kind == "tensorrt":
        if plan is None:
            raise ValueError("--kind tensorrt needs --plan BUILD_DIR (python -m engines build ... --backend tensorrt)")
        plan_dir = Path(plan)
        manifest = Manifest.read(plan_dir)
        if manifest.backend != "tensorrt":
            raise ManifestMismatch("backend", manifest.backend, "tensorrt", plan_dir)
        if manifest.onnx_sha256 != file_sha256(onnx_path):
            raise ManifestMismatch("onnx_sha256", manifest.onnx_sha256, file_sha256(onnx_path), plan_dir)
        if manifest.max_batch < spec.max_batch:
            raise ValueError(f"the plan was built for batches up to {manifest.max_batch}; pass --max-batch <= that")
        profiles = len(manifest.shapes)
        extra = {
            PARAM_PREFIX + "precision": manifest.precision,
            PARAM_PREFIX + "profiles": json.dumps(manifest.shapes),
            PARAM_PREFIX + "device": f"{manifest.device} (compute {manifest.compute_capability})",
        }
        source, filename = plan_dir / manifest.artifact, "model.plan"
    else:
        source, filename = onnx_path, "model.onnx"
    text = model_config_text(
        spec, len(info.styles), model_parameters(onnx_path, extra), profiles, stroke=bool(info.strokes)
    )
    check_config(text)  # before anything is written
    folder = out / spec.name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, folder / "1" / filename)
    (folder / "config.pbtxt").write_text(text)
    log.info("wrote Triton model %s (%s) in %s", spec.name, spec.kind, folder)
    return folder


# ----------------------------------------------------------------------------- serving through PyTriton


def pytriton_unavailable_reason() -> str | None:
    """None where PyTriton (and so a real tritonserver) can run here, else why not."""
    import importlib.util

    if importlib.util.find_spec("pytriton") is None:
        return "nvidia-pytriton is not installed (pip install -e '.[triton]')"
    return None


def _fix_library_path() -> None:
    """Triton's Python backend stub must load this interpreter's libpython, not the system's.

    With pyenv's Python the stub otherwise loads Debian's libpython3.11 against another
    standard library and the model fails to load (``'_thread.RLock' object has no attribute
    '_recursion_count'``). The server process inherits this environment.
    """
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir:
        current = os.environ.get("LD_LIBRARY_PATH", "")
        if not current.startswith(libdir):
            os.environ["LD_LIBRARY_PATH"] = libdir + (os.pathsep + current if current else "")


def serve(
    model: str | Path,
    backend: str = "auto",
    *,
    name: str = "stylecast",
    precision: str = "auto",
    grpc_port: int = 8001,
    http_port: int = 8000,
    metrics_port: int = 8002,
    max_batch: int = 8,
    queue_delay_us: int = 500,
    preferred_batch: Sequence[int] = (2, 4, 8),
    num_threads: int | None = None,
) -> None:
    """Run a real Triton server hosting ``model`` on ``backend`` until interrupted (SIGINT/SIGTERM)."""
    if reason := pytriton_unavailable_reason():
        raise EngineError(reason)
    _fix_library_path()
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

    from engines.runtime import load_backend

    runtime = load_backend(model, backend, num_threads=num_threads, precision=precision)
    if not isinstance(runtime, FrameBackend):
        raise EngineError(f"{runtime.name} cannot host a model for Triton clients")
    styles = list(runtime.styles)
    facts = {
        "styles": styles,
        **runtime.stroke_scale.facts(),
        "stride": runtime.shapes.multiple,
        "backend": runtime.name,
        "precision": runtime.precision,
        "precision_reason": runtime.precision_reason,
        "checkpoint_sha256": getattr(getattr(runtime, "info", None), "checkpoint_sha256", ""),
    }
    log.info("serving %s on %s (%s) as Triton model %r", model, runtime.name, runtime.precision, name)

    @batch
    def infer(image: np.ndarray, style: np.ndarray, stroke: np.ndarray | None = None) -> dict[str, np.ndarray]:
        # Triton's batcher joins requests of the same frame size: one network call. The client
        # has fitted the frames and turned the stroke into network units (FrameBackend).
        return {"stylized": runtime.run_network(image, style, None if stroke is None else stroke.reshape(-1))}

    def info(requests: list[Any]) -> list[dict[str, np.ndarray]]:
        return [{"info": np.array([json.dumps(facts).encode()], dtype=np.bytes_)} for _ in requests]

    config = TritonConfig(grpc_port=grpc_port, http_port=http_port, metrics_port=metrics_port, exit_timeout_secs=5)
    # Open the shared-memory and statistics endpoints (PyTriton guards them with a token by default):
    # the streamer registers system shared memory; the benches read the batch statistics.
    security = TritonSecurityConfig(restricted_endpoints=[])
    try:
        with Triton(config=config, security_config=security) as triton:
            triton.bind(
                model_name=name,
                infer_func=infer,
                inputs=[
                    Tensor(name="image", dtype=np.uint8, shape=(-1, -1, 3)),
                    Tensor(name="style", dtype=np.float32, shape=(len(styles),)),
                    *([Tensor(name="stroke", dtype=np.float32, shape=(1,))] if runtime.stroke_scale.anchors else []),
                ],  # fmt: skip
                outputs=[Tensor(name="stylized", dtype=np.uint8, shape=(-1, -1, 3))],
                config=ModelConfig(
                    max_batch_size=max_batch,
                    batcher=DynamicBatcher(
                        max_queue_delay_microseconds=queue_delay_us,
                        preferred_batch_size=[b for b in preferred_batch if b <= max_batch],
                    ),
                ),
                strict=True,
            )
            triton.bind(
                model_name=name + INFO_SUFFIX,
                infer_func=info,
                inputs=[Tensor(name="query", dtype=np.int32, shape=(1,))],
                outputs=[Tensor(name="info", dtype=np.bytes_, shape=(1,))],
                config=ModelConfig(batching=False),
            )
            log.info("Triton is serving: gRPC :%d, HTTP :%d, metrics :%d", grpc_port, http_port, metrics_port)
            triton.serve()
    finally:
        runtime.close()
