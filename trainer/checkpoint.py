"""Self-describing checkpoints: one safetensors file with JSON metadata.

A file holds the generator weights (``generator.*``), optionally the
discriminator (``discriminator.*``) and the optimizer states (``optim.<name>.*``)
for ``--resume``, and in its metadata everything needed to rebuild and use the
model from the file alone::

    format          "stylecast-generator"
    format_version  "1"
    generator       GeneratorConfig as JSON
    discriminator   DiscriminatorConfig as JSON (training checkpoints)
    styles          [{"name": ..., "source": file name of the painting}, ...]
    preprocessing   how the network expects its input
    train           the training config and the command line that made it
    step            optimisation steps done
    optim.<name>    optimizer param_groups as JSON (tensors live in the body)

Writes are atomic (temp file in the same folder, fsync, rename), so a killed
run never leaves half a checkpoint.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from trainer.models import DiscriminatorConfig, GeneratorConfig, StyleGenerator, build_generator

FORMAT = "stylecast-generator"
FORMAT_VERSION = 1


def preprocessing(config: GeneratorConfig) -> dict[str, Any]:
    """How the network expects its input (stored in the checkpoint beside the config)."""
    out: dict[str, Any] = {
        "layout": "NCHW",
        "color": "RGB",
        "range": [0.0, 1.0],
        "stride": config.stride,
        "style": "non-negative weights, one per style, normalised to sum 1 inside the model",
    }
    if config.strokes:
        out["stroke"] = (
            "brush size in network pixels relative to a 480-line frame (common.stroke), "
            f"anchors {list(config.strokes)}, extrapolated half an anchor step below the finest and clamped "
            f"beyond; stroke floor {config.stroke_floor:g}, stroke unit {config.stroke_unit:g}"
        )
    return out


class CheckpointError(ValueError):
    """The file is not a usable checkpoint (corrupt, wrong format, wrong version)."""


@dataclass(frozen=True)
class Style:
    name: str
    source: str  # file name of the painting it was learned from


@dataclass
class Checkpoint:
    """Everything a checkpoint file holds, as Python objects."""

    generator_config: GeneratorConfig
    styles: list[Style]
    step: int = 0
    train: dict[str, Any] = field(default_factory=dict)
    generator_state: dict[str, torch.Tensor] = field(default_factory=dict)
    discriminator_config: DiscriminatorConfig | None = None
    discriminator_state: dict[str, torch.Tensor] | None = None
    optimizers: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def style_names(self) -> list[str]:
        return [s.name for s in self.styles]


def _flatten_optimizer(name: str, state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], str]:
    """torch optimizer state_dict -> flat tensors + JSON of everything else."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, pstate in state["state"].items():
        for key, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{name}.{pid}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors, json.dumps({"param_groups": state["param_groups"], "scalars": scalars})


def _unflatten_optimizer(name: str, tensors: dict[str, torch.Tensor], meta: str) -> dict[str, Any]:
    info = json.loads(meta)
    state: dict[int, dict[str, Any]] = {}
    prefix = f"optim.{name}."
    for key, value in tensors.items():
        if key.startswith(prefix):
            pid, sub = key[len(prefix) :].split(".", 1)
            state.setdefault(int(pid), {})[sub] = value
    for pid, extra in info["scalars"].items():
        state.setdefault(int(pid), {}).update(extra)
    return {"state": state, "param_groups": info["param_groups"]}


def save_checkpoint(path: str | Path, ckpt: Checkpoint) -> Path:
    """Write ``ckpt`` to ``path`` atomically and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"generator.{k}": v.detach().cpu().contiguous() for k, v in ckpt.generator_state.items()}
    meta = {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "generator": json.dumps(ckpt.generator_config.to_dict()),
        "styles": json.dumps([{"name": s.name, "source": s.source} for s in ckpt.styles]),
        "preprocessing": json.dumps(preprocessing(ckpt.generator_config)),
        "train": json.dumps(ckpt.train),
        "step": str(ckpt.step),
    }
    if ckpt.discriminator_config is not None and ckpt.discriminator_state is not None:
        meta["discriminator"] = json.dumps(ckpt.discriminator_config.to_dict())
        tensors.update(
            {f"discriminator.{k}": v.detach().cpu().contiguous() for k, v in ckpt.discriminator_state.items()}
        )
    for name, state in ckpt.optimizers.items():
        opt_tensors, opt_meta = _flatten_optimizer(name, state)
        tensors.update(opt_tensors)
        meta[f"optim.{name}"] = opt_meta
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; a model file is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_metadata(path: str | Path) -> dict[str, str]:
    """The raw JSON-string metadata of a checkpoint, without loading tensors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if n <= 0 or n > 100_000_000:
                raise CheckpointError(f"{path} is not a safetensors checkpoint (bad header length)")
            header = json.loads(f.read(n))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not a safetensors checkpoint: {e}") from e
    meta = header.get("__metadata__") or {}
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a stylecast checkpoint (format={meta.get('format')!r})")
    if int(meta.get("format_version", "0")) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has format version {meta['format_version']}, newer than this code ({FORMAT_VERSION})"
        )
    return dict(meta)


def read_generator_config(path: str | Path) -> GeneratorConfig:
    """A checkpoint's generator config, from its header alone."""
    meta = read_metadata(path)
    try:
        return GeneratorConfig(**json.loads(meta["generator"]))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path} has malformed metadata: {e}") from e


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read every part of a checkpoint file; clear errors for missing/corrupt files."""
    meta = read_metadata(path)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, RuntimeError) as e:
        raise CheckpointError(f"{path} is corrupt: {e}") from e
    try:
        ckpt = Checkpoint(
            generator_config=GeneratorConfig(**json.loads(meta["generator"])),
            styles=[Style(**s) for s in json.loads(meta["styles"])],
            step=int(meta.get("step", "0")),
            train=json.loads(meta.get("train", "{}")),
            generator_state={k[10:]: v for k, v in tensors.items() if k.startswith("generator.")},
        )
        if "discriminator" in meta:
            ckpt.discriminator_config = DiscriminatorConfig(**json.loads(meta["discriminator"]))
            disc = {k[14:]: v for k, v in tensors.items() if k.startswith("discriminator.")}
            ckpt.discriminator_state = disc
        for key, value in meta.items():
            if key.startswith("optim."):
                name = key[6:]
                ckpt.optimizers[name] = _unflatten_optimizer(name, tensors, value)
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path} has malformed metadata: {e}") from e
    if len(ckpt.styles) != ckpt.generator_config.num_styles:
        raise CheckpointError(
            f"{path} names {len(ckpt.styles)} styles but its generator has {ckpt.generator_config.num_styles}"
        )
    return ckpt


def load_generator(path: str | Path, device: str | torch.device = "cpu") -> tuple[StyleGenerator, Checkpoint]:
    """Rebuild the generator (v1 or v2) from the file alone; returns (model in eval mode, checkpoint info)."""
    ckpt = load_checkpoint(path)
    model = build_generator(ckpt.generator_config)
    try:
        model.load_state_dict(ckpt.generator_state)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit the stored config: {e}") from e
    return model.to(device).eval(), ckpt
