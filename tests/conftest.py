"""Shared fixtures and markers.

Tests make their own small data in tmp_path; nothing here reads ../shared.
Browser, display and TURN tests skip with a reason where Chromium, Xvfb or
coturn is missing, unless STYLECAST_REQUIRE_BROWSER / _DISPLAY / _TURN is set
(CI sets them), in which case a missing tool fails the test instead.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
XVFB = shutil.which("Xvfb")


def require_tool(path: str | None, what: str, env: str, package: str | None = None) -> str:
    """Return the tool's path, or skip (fail in CI) with the reason."""
    if path:
        return path
    msg = f"{what} is not installed (apt-get install {package or what.lower()})"
    if os.environ.get(env):
        pytest.fail(f"{msg}, and {env} is set")
    pytest.skip(msg)


def need_gpu(reason: str | None) -> None:
    """Skip a GPU test with ``reason`` (None: it can run), or fail where STYLECAST_REQUIRE_GPU says a GPU
    machine is expected (bench/gpu_check.sh sets it): there, anything missing is an error."""
    if reason is None:
        return
    if os.environ.get("STYLECAST_REQUIRE_GPU"):
        pytest.fail(f"{reason}, and STYLECAST_REQUIRE_GPU is set")
    pytest.skip(reason)


@pytest.fixture
def chromium_path() -> str:
    return require_tool(CHROMIUM, "Chromium", "STYLECAST_REQUIRE_BROWSER")


@pytest.fixture
def xvfb_path() -> str:
    return require_tool(XVFB, "Xvfb", "STYLECAST_REQUIRE_DISPLAY")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded, untrained 3-style generator checkpoint (tiny widths, fast)."""
    torch = pytest.importorskip("torch")
    from trainer.checkpoint import Checkpoint, Style, save_checkpoint
    from trainer.models import Generator, GeneratorConfig

    torch.manual_seed(0)
    g = Generator(GeneratorConfig(num_styles=3, width=16, half_width=8, num_blocks=2))
    # Spread the per-style rows apart so styles give visibly different outputs.
    with torch.no_grad():
        for p in g.style_parameters():
            p.add_(torch.randn_like(p) * 0.5)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.safetensors"
    names = ["ember", "glacier", "moss"]
    save_checkpoint(
        path,
        Checkpoint(g.config, [Style(n, f"{n}.png") for n in names], step=0, generator_state=g.state_dict()),
    )
    return path


@pytest.fixture(scope="session")
def tiny_onnx(tiny_checkpoint: Path) -> Path:
    """``tiny_checkpoint`` exported to ONNX (uint8 NHWC in/out), next to it as ``tiny.onnx``.

    Same stem as the checkpoint, so ``load_backend`` finds either file from the other.
    """
    pytest.importorskip("onnxscript")
    from engines.export import export_onnx

    return export_onnx(tiny_checkpoint, tiny_checkpoint.with_suffix(".onnx"))


@pytest.fixture(scope="session")
def tiny_v2_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A seeded, untrained 3-style v2 generator (stroke input, stride 8; tiny widths)."""
    torch = pytest.importorskip("torch")
    from trainer.checkpoint import Checkpoint, Style, save_checkpoint
    from trainer.models import GeneratorConfig, build_generator

    torch.manual_seed(0)
    g = build_generator(GeneratorConfig.v2(3, width=8, half_width=8, deep_width=16, num_blocks=1))
    with torch.no_grad():  # rows that differ per style and stroke anchor, as after training
        for p in g.style_parameters():
            p.add_(torch.randn_like(p) * 0.5)
    path = tmp_path_factory.mktemp("ckpt2") / "tiny2.safetensors"
    names = ["ember", "glacier", "moss"]
    save_checkpoint(
        path,
        Checkpoint(g.config, [Style(n, f"{n}.png") for n in names], step=0, generator_state=g.state_dict()),
    )
    return path


@pytest.fixture(scope="session")
def tiny_v2_onnx(tiny_v2_checkpoint: Path) -> Path:
    """``tiny_v2_checkpoint`` exported (inputs image, style, stroke), as ``tiny2.onnx`` beside it."""
    pytest.importorskip("onnxscript")
    from engines.export import export_onnx

    return export_onnx(tiny_v2_checkpoint, tiny_v2_checkpoint.with_suffix(".onnx"))
