"""The shared inference thread with the real ONNX runtime: pass-through of timing, resize, blend, batching."""

from __future__ import annotations

import asyncio
import fractions
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from bench.loopback import pattern
from engines.runtime import FrameBackend, load_backend
from streamer.worker import InferenceWorker


@pytest.fixture(scope="module")
def backend(tiny_onnx: Path) -> FrameBackend:
    return load_backend(tiny_onnx, backend="onnxruntime")


@pytest.fixture
def worker(backend: FrameBackend) -> InferenceWorker:
    w = InferenceWorker(backend, max_batch=4)
    w.start()
    yield w  # type: ignore[misc]
    w.stop()


def frame_of(img: np.ndarray, pts: int) -> av.VideoFrame:
    f = av.VideoFrame.from_ndarray(img, format="rgb24")
    f.pts, f.time_base = pts, fractions.Fraction(1, 90_000)
    return f


def test_one_frame_matches_the_backend_and_keeps_its_timing(worker: InferenceWorker, backend: FrameBackend) -> None:
    img = pattern(320, 240)
    weights = np.array([0, 1, 0], np.float32)
    res = worker.submit(frame_of(img, 123_456), (160, 120), weights, 1.0).result(timeout=30)
    assert (res.frame.pts, res.frame.time_base) == (123_456, fractions.Fraction(1, 90_000))
    assert (res.frame.width, res.frame.height) == (160, 120)
    # Same as resizing and stylizing directly (up to one rgb24 -> yuv -> rgb24 round trip in PyAV: none here).
    small = cv2.resize(img, (160, 120), interpolation=cv2.INTER_AREA)
    want = backend.stylize(small, weights)
    got = res.frame.to_ndarray(format="rgb24")
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
    assert res.batch == 1 and res.stages.infer is not None and res.stages.infer > 0
    assert {"to_rgb", "resize", "infer", "blend", "to_frame"} == set(res.stages.as_dict())
    assert res.stages.total_ms() >= res.stages.infer


def test_strength_blends_with_the_original(worker: InferenceWorker, backend: FrameBackend) -> None:
    img = pattern(96, 64)
    weights = np.array([1, 0, 0], np.float32)
    got = worker.submit(frame_of(img, 0), (640, 480), weights, 0.25).result(timeout=30).frame.to_ndarray(format="rgb24")
    want = 0.25 * backend.stylize(img, weights).astype(np.float32) + 0.75 * img.astype(np.float32)
    assert np.abs(got.astype(np.float32) - want).max() <= 1.0
    calls = worker.frames
    plain = worker.submit(frame_of(img, 0), (640, 480), weights, 0.0).result(timeout=30).frame
    np.testing.assert_array_equal(plain.to_ndarray(format="rgb24"), img)
    assert worker.frames == calls  # strength 0 skips the network


async def test_frames_from_several_sessions_share_a_network_call(
    worker: InferenceWorker, backend: FrameBackend
) -> None:
    imgs = [pattern(64, 48, seed=i) for i in range(4)]
    mixes = [np.eye(3, dtype=np.float32)[i % 3] for i in range(4)]
    # Hold the thread busy with one frame so the next four queue up and are taken together.
    first = worker.submit(frame_of(pattern(320, 240), 0), (640, 480), mixes[0], 1.0)
    futs = [
        worker.submit(frame_of(img, i), (640, 480), w, 1.0) for i, (img, w) in enumerate(zip(imgs, mixes, strict=True))
    ]
    results = await asyncio.gather(*(asyncio.wrap_future(f) for f in [first, *futs]))
    assert any(r.batch > 1 for r in results[1:]), [r.batch for r in results]
    for img, w, r in zip(imgs, mixes, results[1:], strict=True):
        want = backend.stylize(img, w)  # each frame with its own session's weights
        assert np.abs(r.frame.to_ndarray(format="rgb24").astype(int) - want.astype(int)).max() <= 2


def test_a_failing_frame_in_a_batch_fails_alone(backend: FrameBackend) -> None:
    class Picky(FrameBackend):
        """The real backend's network, refusing any call with a frame whose top-left pixel is pure black."""

        name, styles, shapes = backend.name, backend.styles, backend.shapes

        def _run(self, images: np.ndarray, weights: np.ndarray, strokes: np.ndarray | None) -> np.ndarray:
            if any(not img[0, 0].any() for img in images):
                raise ValueError("black corner")
            return backend._run(images, weights, strokes)

    w = InferenceWorker(Picky(), max_batch=4)
    good, bad = pattern(64, 48), pattern(64, 48)
    bad[0, 0] = 0
    weights = np.array([1, 1, 1], np.float32) / 3
    # Queue before starting the thread, so all three are taken as one batch.
    futs = [w.submit(frame_of(img, i), (640, 480), weights, 1.0) for i, img in enumerate([good, bad, good])]
    w.start()
    try:
        assert futs[0].result(timeout=30).frame.width == 64 and futs[2].result(timeout=30).frame.width == 64
        with pytest.raises(ValueError, match="black corner"):
            futs[1].result(timeout=30)
    finally:
        w.stop()
    with pytest.raises(RuntimeError, match="stopped"):
        w.submit(frame_of(good, 0), (640, 480), weights, 1.0)


def test_a_swap_between_frames_runs_frames_queued_with_the_old_weights(
    worker: InferenceWorker, backend: FrameBackend, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    import torch

    from engines.export import export_onnx
    from trainer.checkpoint import Checkpoint, Style, load_checkpoint, load_generator, save_checkpoint
    from trainer.train import extend_generator

    g, ckpt = load_generator(tiny_checkpoint)
    bigger = extend_generator(g)
    with torch.no_grad():
        for p in bigger.style_parameters():
            p[-1].add_(1.0)
    path = tmp_path / "four.safetensors"
    styles = [*load_checkpoint(tiny_checkpoint).styles, Style("mine", "mine.png")]
    save_checkpoint(path, Checkpoint(bigger.config, styles, generator_state=bigger.state_dict()))
    four = load_backend(export_onnx(path, path.with_suffix(".onnx")), backend="onnxruntime")
    img = pattern(96, 64)
    old = np.array([0, 0, 1], np.float32)
    before = worker.submit(frame_of(img, 0), (640, 480), old, 1.0).result(timeout=30)
    assert worker.swap(four, [0, 1, 2, -1]) is backend
    # a session's mixer that has not heard of the swap yet still sends 3 weights: they run as [0, 0, 1, 0]
    after = worker.submit(frame_of(img, 1), (640, 480), old, 1.0).result(timeout=30)
    np.testing.assert_array_equal(after.frame.to_ndarray(format="rgb24"), before.frame.to_ndarray(format="rgb24"))
    new = worker.submit(frame_of(img, 2), (640, 480), np.eye(4, dtype=np.float32)[3], 1.0).result(timeout=30)
    assert not np.array_equal(new.frame.to_ndarray(format="rgb24"), before.frame.to_ndarray(format="rgb24"))
    with pytest.raises(ValueError, match="keep lists 2"):
        worker.swap(backend, [0, 1])
    assert worker.swap(backend, [0, 1, 2]) is four  # back, for the other tests of this module
    four.close()


def test_frames_with_different_strokes_run_apart_and_the_stroke_reaches_the_network(
    tiny_v2_onnx: Path,
) -> None:
    backend = load_backend(tiny_v2_onnx, backend="onnxruntime")
    calls: list[tuple[int, list[float]]] = []
    inner = backend._run

    def run(images: np.ndarray, weights: np.ndarray, strokes: np.ndarray | None) -> np.ndarray:
        assert strokes is not None
        calls.append((images.shape[0], strokes.tolist()))
        return inner(images, weights, strokes)

    backend._run = run  # type: ignore[method-assign]
    w = InferenceWorker(backend, max_batch=4)
    weights = np.array([1, 0, 0], np.float32)
    img = pattern(640, 480)
    # Queued before the thread starts: one batch of three, two strokes among them.
    futs = [w.submit(frame_of(img, i), (640, 480), weights, 1.0, s) for i, s in enumerate([1.0, 2.0, 1.0])]
    w.start()
    try:
        outs = [f.result(timeout=60).frame.to_ndarray(format="rgb24") for f in futs]
    finally:
        w.stop()
    assert sorted(calls) == [(1, [2.0]), (2, [1.0, 1.0])]
    assert np.array_equal(outs[0], outs[2]) and not np.array_equal(outs[0], outs[1])
