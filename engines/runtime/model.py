"""Read what a stylecast ONNX file says about itself, without onnx or torch.

Serving installs neither the ``onnx`` package nor torch, so the few metadata
fields we need are read straight from the protobuf wire format: ``ModelProto``
field 14 is ``repeated StringStringEntryProto metadata_props`` (key = field 1,
value = field 2). Every other top-level field (the graph, the weights) is
skipped by its length prefix, so reading metadata costs O(number of fields),
not O(file size) of parsing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.stroke import StrokeScale
from engines.runtime.base import ModelFileError

META_PREFIX = "stylecast."
_METADATA_PROPS = 14  # ModelProto.metadata_props
_GRAPH = 7  # ModelProto.graph


@dataclass(frozen=True)
class ModelInfo:
    """The stylecast metadata of an exported ONNX model."""

    path: Path
    styles: list[str]
    sources: list[str]
    generator: dict[str, Any]
    format_version: int
    stride: int
    checkpoint_sha256: str
    quantized: str = ""  # "int8" for a model from `python -m engines quantize`, else ""
    precision: str = "fp32"  # the graph's arithmetic: "fp32", or "fp16" (engines export --precision fp16)

    @property
    def strokes(self) -> tuple[float, ...]:
        """The stroke anchors of a v2 model, whose graph has a ``stroke`` input; () for v1."""
        return self.stroke_scale.anchors

    @property
    def stroke_scale(self) -> StrokeScale:
        """The stroke anchors, floor and unit (``common.stroke``)."""
        return StrokeScale.of(self.generator)


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _fields(buf: bytes) -> list[tuple[int, int, bytes | int]]:
    """Top-level (field number, wire type, value) of one protobuf message."""
    out: list[tuple[int, int, bytes | int]] = []
    pos = 0
    while pos < len(buf):
        tag, pos = _varint(buf, pos)
        field, wire = tag >> 3, tag & 7
        if field == 0:
            raise ValueError("field number 0")
        if wire == 0:
            value, pos = _varint(buf, pos)
            out.append((field, wire, value))
        elif wire == 1:
            pos += 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            if pos + n > len(buf):
                raise ValueError("truncated length-delimited field")
            out.append((field, wire, buf[pos : pos + n]))
            pos += n
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
    if pos != len(buf):
        raise ValueError("truncated message")
    return out


def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    """All ``metadata_props`` of an ONNX file as a dict; ``EngineError`` if it is not ONNX."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}")
    data = path.read_bytes()
    try:
        fields = _fields(data)
    except (ValueError, IndexError) as e:
        raise ModelFileError(f"{path} is not a valid ONNX file (corrupt or truncated): {e}") from e
    if not any(f == _GRAPH and w == 2 for f, w, _ in fields):
        raise ModelFileError(f"{path} is not a valid ONNX file: it has no graph")
    meta: dict[str, str] = {}
    for field, wire, value in fields:
        if field == _METADATA_PROPS and wire == 2 and isinstance(value, bytes):
            entry = {f: v for f, w, v in _fields(value) if w == 2 and isinstance(v, bytes)}
            meta[entry.get(1, b"").decode()] = entry.get(2, b"").decode()
    return meta


def read_model_info(path: str | Path) -> ModelInfo:
    """Parse and validate the stylecast metadata of ``path`` (a clear error if absent)."""
    path = Path(path)
    meta = read_onnx_metadata(path)
    ours = {k[len(META_PREFIX) :]: v for k, v in meta.items() if k.startswith(META_PREFIX)}
    try:
        info = ModelInfo(
            path=path,
            styles=list(json.loads(ours["styles"])),
            sources=list(json.loads(ours.get("sources", "[]"))),
            generator=dict(json.loads(ours["generator"])),
            format_version=int(ours["format_version"]),
            stride=int(ours.get("stride", "4")),
            checkpoint_sha256=ours.get("checkpoint_sha256", ""),
            quantized=ours.get("quantized", ""),
            precision=ours.get("precision", "fp32"),
        )
    except (KeyError, ValueError, TypeError) as e:
        raise ModelFileError(
            f"{path} is not a stylecast model (missing or malformed metadata {e}); "
            "export it with: python -m engines export MODEL.safetensors --out MODEL.onnx"
        ) from e
    if not info.styles:
        raise ModelFileError(f"{path} names no styles")
    return info


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
