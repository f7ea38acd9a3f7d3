"""torch backend (CPU or CUDA): the reference every other backend is compared with.

Runs the same :class:`engines.wrap.UInt8Generator` that the ONNX export
traces, so uint8 in, uint8 out, conversions on the device. Imports torch only
when constructed; serving never needs this module.

On CUDA, ``precision="fp16"`` runs the network under ``torch.autocast`` (float16)
with channels_last weights. Autocast keeps no float32 for instance norms: their
statistics are float16 too, and the fp16 PSNR gate (``engines.runtime.precision``)
is what checks the picture. Calls are serialised with a lock (one CUDA stream per
backend).

On CUDA the network runs as a CUDA graph, captured the second time an input shape
(batch, height, width, stroke input or not) is seen and replayed after that: the
frame is copied into the graph's static input and the output out of its static
output, under the lock. Eagerly, a small frame costs the time to launch a few
hundred kernels one by one (about 3 ms on an H200 at 640x480, where the graph
replays in 1 ms: ``bench/gpu_check.py``). A shape seen once runs eagerly: dragging
the stroke slider past the boldest stroke resizes the frame to a new shape on every
step, and a capture (a few forward passes) per step would cost more than it saves.
At most ``MAX_GRAPHS`` shapes are kept (the least recently used is dropped; they
share one memory pool), and ``cuda_graphs=False`` runs eagerly.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from engines.runtime.base import EngineError, ModelFileError, ShapeRange
from engines.runtime.frames import FrameBackend
from engines.runtime.precision import Candidate
from engines.runtime.registry import Kind, Plan, Request, not_installed

log = logging.getLogger(__name__)

MAX_GRAPHS = 16  # captured input shapes kept per backend (the batcher's batch sizes x auto-resolution steps)
SEEN_SHAPES = 64  # input shapes remembered (least recently used dropped) to capture on the second sight
GRAPH_WARMUP = 3  # eager runs on a side stream before a capture (cuDNN picks its kernels there)


def _no_nvidia_device() -> bool:
    """True when a Linux machine clearly has no NVIDIA GPU (no /dev/nvidia<N> node).

    Lets ``backend="auto"`` skip importing torch (seconds on a small CPU) just to
    learn that CUDA is absent. Other systems always go on to ask torch.
    """
    return sys.platform.startswith("linux") and not any(Path("/dev").glob("nvidia[0-9]*"))


def cuda_unavailable_reason() -> str | None:
    """None if torch can use a CUDA GPU here, else why not."""
    if _no_nvidia_device():
        return "no NVIDIA GPU on this machine (no /dev/nvidia* device)"
    try:
        import torch
    except ImportError as e:
        return f"torch is not installed ({e})"
    if not torch.cuda.is_available():
        return f"torch {torch.__version__} sees no CUDA GPU"
    return None


@dataclass
class _Graph:
    """One captured CUDA graph: its static inputs (images, weights, strokes or None) and output."""

    graph: Any
    inputs: tuple[Any, Any, Any]
    output: Any


class TorchBackend(FrameBackend):
    """Runs a stylecast ``.safetensors`` checkpoint with torch.

    ``device``: ``"cpu"`` or ``"cuda"``; ``precision``: ``"fp32"`` or (CUDA only)
    ``"fp16"``; ``num_threads`` sets torch's process-wide CPU thread count;
    ``cuda_graphs``: on CUDA, replay a captured graph per input shape (default) or run eagerly.
    """

    def __init__(
        self,
        checkpoint_path: str | Path,
        device: str = "cpu",
        precision: str = "fp32",
        num_threads: int | None = None,
        cuda_graphs: bool = True,
    ) -> None:
        try:
            import torch

            from engines.wrap import UInt8Generator
            from trainer.checkpoint import CheckpointError, load_generator
        except ImportError as e:
            raise EngineError(f"the torch backend needs torch and safetensors: {e}") from e
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        if precision not in ("fp32", "fp16") or (precision == "fp16" and device != "cuda"):
            raise ValueError(f"precision must be 'fp32' (or 'fp16' on CUDA), got {precision!r} on {device}")
        if device == "cuda" and (reason := cuda_unavailable_reason()):
            raise EngineError(reason)
        if num_threads:
            torch.set_num_threads(num_threads)
        try:
            generator, ckpt = load_generator(checkpoint_path, device=device)
        except (FileNotFoundError, CheckpointError) as e:
            raise ModelFileError(str(e)) from e
        self._torch: Any = torch
        self._module = UInt8Generator(generator).eval()
        if device == "cuda":
            self._module = self._module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self._device = torch.device(device)
        self.precision = precision
        self._lock = threading.Lock()
        self._graphs: OrderedDict[tuple[Any, ...], _Graph] = OrderedDict()
        self._seen: OrderedDict[tuple[Any, ...], None] = OrderedDict()  # shapes run once, eagerly
        self._graph_pool = torch.cuda.graph_pool_handle() if device == "cuda" and cuda_graphs else None
        self.styles = ckpt.style_names
        self.stroke_scale = generator.config.stroke_scale
        self.shapes = ShapeRange(min_hw=(8, 8), max_hw=(4096, 4096), multiple=generator.config.stride)
        self.name = f"torch-{device}"  # the kind; the precision is .precision
        log.info("%s loaded %s", self.name, checkpoint_path)

    def _forward(self, img: Any, sty: Any, stk: Any) -> Any:
        torch = self._torch
        if self.precision == "fp16":
            # cache_enabled=False: autocast's cache of float16 weights must not outlive a graph capture
            with torch.autocast("cuda", dtype=torch.float16, cache_enabled=False):
                return self._module(img, sty, stk)
        return self._module(img, sty, stk)

    def _run(self, images: np.ndarray, weights: np.ndarray, strokes: np.ndarray | None) -> np.ndarray:
        torch = self._torch
        arrays = (images, weights, strokes)
        with self._lock, torch.inference_mode():
            key = tuple(None if a is None else (a.shape, a.dtype.str) for a in arrays)
            g = self._graphs.get(key)
            if g is None and not self._seen_before(key):
                return self._forward(*self._on_device(arrays)).cpu().numpy()  # .cpu() synchronises
            if g is None:
                g = self._graphs[key] = self._capture(arrays)
                while len(self._graphs) > MAX_GRAPHS:
                    self._graphs.popitem(last=False)
            else:
                self._graphs.move_to_end(key)
                for static, a in zip(g.inputs, arrays, strict=True):
                    if a is not None:
                        static.copy_(torch.from_numpy(a))
            g.graph.replay()
            return g.output.cpu().numpy()  # a copy: the next replay overwrites the static output

    def _on_device(self, arrays: tuple[np.ndarray, np.ndarray, np.ndarray | None]) -> tuple[Any, Any, Any]:
        """(images, weights, strokes or None) as tensors on the model's device."""
        torch = self._torch
        img, sty, stk = (None if a is None else torch.from_numpy(a).to(self._device) for a in arrays)
        return img, sty, stk

    def _seen_before(self, key: tuple[Any, ...]) -> bool:
        """Whether ``key`` was run before and should now be captured (never, without CUDA graphs)."""
        if self._graph_pool is None:
            return False
        if key in self._seen:
            del self._seen[key]
            return True
        self._seen[key] = None
        while len(self._seen) > SEEN_SHAPES:
            self._seen.popitem(last=False)
        return False

    def _capture(self, arrays: tuple[np.ndarray, np.ndarray, np.ndarray | None]) -> _Graph:
        """Capture the network on static copies of ``arrays`` (which it then holds), after a warm-up."""
        torch = self._torch
        img, sty, stk = self._on_device(arrays)
        side = torch.cuda.Stream(self._device)
        side.wait_stream(torch.cuda.current_stream(self._device))
        with torch.cuda.stream(side):
            for _ in range(GRAPH_WARMUP):
                self._forward(img, sty, stk)
        torch.cuda.current_stream(self._device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._graph_pool, capture_error_mode="thread_local"):
            out = self._forward(img, sty, stk)
        log.info("%s: captured a CUDA graph for images %s", self.name, tuple(arrays[0].shape))
        return _Graph(graph, (img, sty, stk), out)

    @property
    def graph_shapes(self) -> list[tuple[int, ...]]:
        """The image shapes with a captured CUDA graph, least recently used first."""
        return [tuple(k[0][0]) for k in self._graphs]

    def close(self) -> None:
        with self._lock:
            self._graphs.clear()
            self.__dict__.pop("_module", None)


def _plan_on(device: str) -> Callable[[Request], Plan | str]:
    def plan(req: Request) -> Plan | str:
        if reason := req.files.need_checkpoint():
            return reason
        run = partial(TorchBackend, req.files.checkpoint, device=device, num_threads=req.num_threads)
        precisions = ("fp16", "fp32") if device == "cuda" else ("fp32",)
        return Plan(f"torch on {device}", [Candidate(p, partial(run, precision=p)) for p in precisions])

    return plan


KINDS = (
    Kind("torch-cuda", ("fp16", "fp32"), "cuda", cuda_unavailable_reason, _plan_on("cuda")),
    Kind("torch-cpu", ("fp32",), "cpu", partial(not_installed, "torch"), _plan_on("cpu")),
)
