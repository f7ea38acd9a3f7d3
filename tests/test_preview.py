"""The OpenCV preview (a real window under Xvfb) and file mode (a real MP4), run as the CLI.

The window test starts Xvfb on a free display, runs ``python -m streamer.preview`` on
a small generated video, reads the screen with Xlib's XGetImage and looks for the
stylized picture in it, then presses real keys through XTest (``s``
saves a snapshot, ``q`` quits).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from common.mix import parse_mix
from engines.runtime import load_backend
from streamer.video import FrameStylizer

REPO = Path(__file__).resolve().parent.parent
SIZE = (160, 120)  # processing size in the tests (width, height)


def make_video(path: Path, frames: int, size: tuple[int, int] = (192, 144), fps: float = 15.0) -> Path:
    """A small MP4 of one still picture (colour fields and a disc), so every frame stylizes the same."""
    w, h = size
    img = np.zeros((h, w, 3), np.uint8)
    img[:, : w // 2] = (40, 170, 230)  # BGR: orange
    img[:, w // 2 :] = (200, 90, 30)  # blue
    img[h // 2 :, :] //= 2
    cv2.circle(img, (w // 2, h // 2), h // 4, (255, 255, 255), -1)
    cv2.rectangle(img, (8, h - 40), (60, h - 8), (30, 220, 60), -1)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    assert writer.isOpened(), "OpenCV cannot write mp4v here"
    for _ in range(frames):
        writer.write(img)
    writer.release()
    return path


def first_frame(path: Path) -> np.ndarray:
    cap = cv2.VideoCapture(str(path))
    ok, frame = cap.read()
    cap.release()
    assert ok
    return frame


def expected_pictures(video: Path, model: Path, mix: str) -> tuple[np.ndarray, np.ndarray]:
    """(input resized, stylized) for the first frame, computed in-process with the same backend."""
    backend = load_backend(model)
    try:
        stylizer = FrameStylizer(backend, np.array(parse_mix(mix, backend.styles), np.float32), 1.0, SIZE)
        frame = first_frame(video)
        return cv2.resize(frame, SIZE, interpolation=cv2.INTER_AREA), stylizer(frame)
    finally:
        backend.close()


def mad(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference after a light blur (H.264 smooths the tiny net's pixel noise)."""
    fa = cv2.GaussianBlur(a.astype(np.float32), (5, 5), 0)
    fb = cv2.GaussianBlur(b.astype(np.float32), (5, 5), 0)
    return float(np.abs(fa - fb).mean())


def run_cli(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamer.preview", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def headless_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env["PYTHONPATH"] = str(REPO)
    return env


# ----------------------------------------------------------------------------- file mode


def test_file_mode_writes_playable_video(tmp_path: Path, tiny_onnx: Path) -> None:
    src = make_video(tmp_path / "in.mp4", frames=12)
    out = tmp_path / "out" / "styled.mp4"
    mix = "glacier:1"
    proc = run_cli(
        ["--video", str(src), "--output", str(out), "--model", str(tiny_onnx), "--mix", mix, "--size", "160x120"],
        headless_env(),
    )
    assert proc.returncode == 0, proc.stderr
    assert "12 frames" in proc.stdout
    assert "frame" in proc.stderr  # the tqdm progress bar

    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        frames = [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]
    assert len(frames) == 12
    assert frames[0].shape == (SIZE[1], SIZE[0], 3)
    # OpenCV (another demuxer) reads the same file.
    cap = cv2.VideoCapture(str(out))
    assert cap.isOpened()
    assert int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)) == SIZE[0]
    cap.release()

    original, stylized = expected_pictures(src, tiny_onnx, mix)
    to_stylized = mad(frames[5], stylized)
    to_original = mad(frames[5], original)
    assert to_stylized < 8, f"file frames are not the stylized picture (mean abs diff {to_stylized:.1f})"
    assert to_original > 2 * to_stylized + 10, (to_original, to_stylized)


def test_no_display_is_a_clear_error_not_a_crash(tmp_path: Path) -> None:
    src = make_video(tmp_path / "in.mp4", frames=2)
    proc = run_cli(["--video", str(src), "--model", str(tmp_path / "unused.onnx")], headless_env())
    assert proc.returncode == 2, (proc.returncode, proc.stderr)  # not 134 (SIGABRT from cv2.imshow)
    assert "no display" in proc.stderr
    assert "--output" in proc.stderr


def test_missing_inputs_are_clear_errors(tmp_path: Path, tiny_onnx: Path) -> None:
    env = headless_env()
    proc = run_cli(["--output", str(tmp_path / "o.mp4"), "--model", str(tmp_path / "nope.onnx")], env)
    assert proc.returncode == 2
    assert "model file not found" in proc.stderr
    missing_video = run_cli(
        ["--video", str(tmp_path / "nope.mp4"), "--output", str(tmp_path / "o.mp4"), "--model", str(tiny_onnx)],
        env,
    )
    assert missing_video.returncode == 2
    assert "video file not found" in missing_video.stderr
    bad_mix = run_cli(
        [
            "--video",
            str(tmp_path / "x.mp4"),
            "--output",
            str(tmp_path / "o.mp4"),
            "--model",
            str(tiny_onnx),
            "--mix",
            "nope",
        ],
        env,
    )
    assert bad_mix.returncode == 2
    assert "unknown style 'nope'" in bad_mix.stderr


# ----------------------------------------------------------------------------- the window


SCREEN = (800, 600)


class _XImage(ctypes.Structure):
    """The leading fields of Xlib's XImage (enough to read a ZPixmap)."""

    _fields_ = [
        ("width", ctypes.c_int),
        ("height", ctypes.c_int),
        ("xoffset", ctypes.c_int),
        ("format", ctypes.c_int),
        ("data", ctypes.POINTER(ctypes.c_ubyte)),
        ("byte_order", ctypes.c_int),
        ("bitmap_unit", ctypes.c_int),
        ("bitmap_bit_order", ctypes.c_int),
        ("bitmap_pad", ctypes.c_int),
        ("depth", ctypes.c_int),
        ("bytes_per_line", ctypes.c_int),
        ("bits_per_pixel", ctypes.c_int),
    ]


def _xlib() -> ctypes.CDLL:
    x11 = ctypes.cdll.LoadLibrary(ctypes.util.find_library("X11") or "libX11.so.6")
    x11.XOpenDisplay.restype = ctypes.c_void_p
    x11.XOpenDisplay.argtypes = [ctypes.c_char_p]
    x11.XDefaultRootWindow.restype = ctypes.c_ulong
    x11.XDefaultRootWindow.argtypes = [ctypes.c_void_p]
    x11.XGetImage.restype = ctypes.POINTER(_XImage)
    x11.XGetImage.argtypes = [ctypes.c_void_p, ctypes.c_ulong, ctypes.c_int, ctypes.c_int, ctypes.c_uint,
                              ctypes.c_uint, ctypes.c_ulong, ctypes.c_int]  # fmt: skip
    x11.XDestroyImage.argtypes = [ctypes.POINTER(_XImage)]
    x11.XStringToKeysym.restype = ctypes.c_ulong
    x11.XStringToKeysym.argtypes = [ctypes.c_char_p]
    x11.XKeysymToKeycode.restype = ctypes.c_ubyte
    x11.XKeysymToKeycode.argtypes = [ctypes.c_void_p, ctypes.c_ulong]
    x11.XFlush.argtypes = [ctypes.c_void_p]
    x11.XCloseDisplay.argtypes = [ctypes.c_void_p]
    return x11


class XDisplay:
    """A started Xvfb plus what the test needs of X: screenshots (XGetImage) and key presses (XTest)."""

    def __init__(self, xvfb: str) -> None:
        read_fd, write_fd = os.pipe()
        # -displayfd: Xvfb picks a free display number and writes it to the pipe when ready.
        self.proc = subprocess.Popen(
            [xvfb, "-displayfd", str(write_fd), "-screen", "0", f"{SCREEN[0]}x{SCREEN[1]}x24", "-nolisten", "tcp"],
            pass_fds=(write_fd,),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(write_fd)
        with os.fdopen(read_fd) as f:
            number = f.readline().strip()
        if not number:
            self.proc.kill()
            raise RuntimeError("Xvfb did not start")
        self.name = f":{number}"

    def screenshot(self) -> np.ndarray:
        """The root window as BGR, read with plain Xlib XGetImage (no shared memory, no grabs)."""
        x11 = _xlib()
        d = x11.XOpenDisplay(self.name.encode())
        assert d, f"cannot open X display {self.name}"
        try:
            img = x11.XGetImage(d, x11.XDefaultRootWindow(d), 0, 0, SCREEN[0], SCREEN[1], 0xFFFFFFFF, 2)  # ZPixmap
            assert img, "XGetImage failed"
            try:
                im = img.contents
                assert im.bits_per_pixel == 32, im.bits_per_pixel  # Xvfb depth 24 stores 4 bytes a pixel
                raw = np.ctypeslib.as_array(im.data, shape=(im.height * im.bytes_per_line,))
                rows = raw.reshape(im.height, im.bytes_per_line)[:, : im.width * 4].reshape(im.height, im.width, 4)
                return np.ascontiguousarray(rows[:, :, :3])  # BGRX little-endian -> BGR
            finally:
                x11.XDestroyImage(img)
        finally:
            x11.XCloseDisplay(d)

    def press(self, key: str, at: tuple[int, int]) -> None:
        """Move the pointer over the window (no window manager: focus follows it) and press a key."""
        x11 = _xlib()
        lib = ctypes.util.find_library("Xtst")
        if lib is None:
            pytest.fail("libXtst is missing (apt-get install libxtst6): cannot press keys in the window")
        xtst = ctypes.cdll.LoadLibrary(lib)
        xtst.XTestFakeKeyEvent.argtypes = [ctypes.c_void_p, ctypes.c_uint, ctypes.c_int, ctypes.c_ulong]
        xtst.XTestFakeMotionEvent.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_ulong]
        d = x11.XOpenDisplay(self.name.encode())
        assert d, f"cannot open X display {self.name}"
        try:
            xtst.XTestFakeMotionEvent(d, -1, at[0], at[1], 0)
            code = x11.XKeysymToKeycode(d, x11.XStringToKeysym(key.encode()))
            xtst.XTestFakeKeyEvent(d, code, 1, 0)
            xtst.XTestFakeKeyEvent(d, code, 0, 0)
            x11.XFlush(d)
        finally:
            x11.XCloseDisplay(d)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture
def xdisplay(xvfb_path: str) -> Iterator[XDisplay]:
    display = XDisplay(xvfb_path)
    yield display
    display.close()


def find_picture(screen: np.ndarray, picture: np.ndarray) -> tuple[float, tuple[int, int]]:
    """Best match of the picture's lower part (below the text overlay) on the screen."""
    h = picture.shape[0]
    template = picture[h // 2 :]
    res = cv2.matchTemplate(screen, template, cv2.TM_CCOEFF_NORMED)
    _, score, _, (x, y) = cv2.minMaxLoc(res)
    return float(score), (x, y - h // 2)


@pytest.mark.display
def test_window_shows_stylized_frames_and_keys_work(tmp_path: Path, tiny_onnx: Path, xdisplay: XDisplay) -> None:
    src = make_video(tmp_path / "in.mp4", frames=10)
    snaps = tmp_path / "snaps"
    mix = "ember:1"
    original, stylized = expected_pictures(src, tiny_onnx, mix)
    _, next_preset = expected_pictures(src, tiny_onnx, "glacier:1")  # "n" after ember alone
    assert mad(stylized, next_preset) > 5, "the tiny model's styles should look different"
    # PYTHONFAULTHANDLER: if the window never shows, SIGABRT makes the preview print every
    # thread's stack into its log, so a failure says where it stood.
    env = dict(headless_env(), DISPLAY=xdisplay.name, PYTHONFAULTHANDLER="1")
    log_path = tmp_path / "preview.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streamer.preview",
                "--video",
                str(src),
                "--loop",
                "--model",
                str(tiny_onnx),
                "--mix",
                mix,
                "--size",
                "160x120",
                "--snapshot-dir",
                str(snaps),
            ],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        # First let the window come up undisturbed: the preview logs its first frame.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None and "first frame shown" not in log_path.read_text():
            time.sleep(0.2)
        score, where, screen = 0.0, (0, 0), None
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
            screen = xdisplay.screenshot()
            score, where = find_picture(screen, stylized)
            if score > 0.9:
                break
        assert proc.poll() is None, f"the preview exited early:\n{log_path.read_text()}"
        assert screen is not None
        shot = tmp_path / "preview.png"
        cv2.imwrite(str(shot), screen)
        print(f"preview screenshot: {shot}")
        if score <= 0.9 and proc.poll() is None:
            proc.send_signal(signal.SIGABRT)  # stacks of every thread into the log (faulthandler)
            proc.wait(timeout=20)
        assert score > 0.9, (
            f"no stylized picture on the screen (best match {score:.2f}), see {shot}; preview log:\n"
            + log_path.read_text()
        )

        # The window shows the stylized picture, not the camera/file picture.
        x, y = where
        h, w = stylized.shape[:2]
        shown = screen[y + h // 2 : y + h, x : x + w]
        to_stylized = mad(shown, stylized[h // 2 :])
        to_original = mad(shown, original[h // 2 :])
        assert to_stylized < 8, to_stylized
        assert to_original > 2 * to_stylized + 10, (to_original, to_stylized)

        centre = (x + w // 2, y + h // 2)
        xdisplay.press("s", centre)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not list(snaps.glob("*.png")):
            time.sleep(0.2)
        pngs = list(snaps.glob("*.png"))
        assert pngs, f"s saved no snapshot:\n{log_path.read_text()}"
        time.sleep(0.3)  # let the writer finish the file
        snap = cv2.imread(str(pngs[0]))
        assert snap is not None and snap.shape == stylized.shape
        assert float(np.abs(snap.astype(np.float32) - stylized).mean()) < 3

        # n: the next preset (glacier alone) replaces the picture.
        xdisplay.press("n", centre)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            time.sleep(0.3)
            screen = xdisplay.screenshot()
            now = screen[y + h // 2 : y + h, x : x + w]
            if mad(now, next_preset[h // 2 :]) < 8:
                break
        assert mad(now, next_preset[h // 2 :]) < 8 < mad(now, stylized[h // 2 :]), "n did not switch the preset"

        xdisplay.press("q", centre)
        assert proc.wait(timeout=20) == 0, log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
