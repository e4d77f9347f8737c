"""Checkpoint files: weights plus everything needed to use them, loaded without running code.

A checkpoint is a ``torch.save`` of a dict holding only tensors and plain Python values
(str, int, float, bool, list, dict, None), so ``torch.load(weights_only=True)`` reads it and
a file carrying a pickled object that would run code is refused.
"""

from __future__ import annotations

import datetime as _dt
import os
import pickle
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_write
from .model import UNet
from .options import MODES

FORMAT_NAME = "napari-unetseg"
FORMAT_VERSION = 1
INSTANCE_CLASSES = ["background", "interior", "boundary"]


class CheckpointError(ValueError):
    """A checkpoint file could not be used; the message names the file and the reason."""


@dataclass
class ModelInfo:
    """Metadata stored beside the weights.

    ``mode``: ``"instance"`` (classes background / interior / boundary, objects separated by
    watershed) or ``"semantic"`` (one output class per label value 1..K).
    ``normalization``: per-plane percentiles mapped to 0 and 1 before the network.
    ``training``: provenance, e.g. data, iterations, metrics, parent model, date.
    ``decision_weights``: semantic models only, one factor per class applied to the probabilities
    before the arg-max (e.g. ``[0.35, 0.65]`` calls class 1 where its probability exceeds 0.65),
    chosen on held-out data; ``None`` is the plain arg-max.
    """

    mode: str = "instance"
    class_names: list[str] = field(default_factory=lambda: list(INSTANCE_CLASSES))
    normalization: dict[str, float] = field(default_factory=lambda: {"low": 1.0, "high": 99.8})
    name: str = ""
    description: str = ""
    training: dict[str, Any] = field(default_factory=dict)
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    format_version: int = FORMAT_VERSION
    decision_weights: list[float] | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")


@dataclass
class Checkpoint:
    """A ready-to-use model (in eval mode, on the CPU) and its metadata."""

    model: UNet
    info: ModelInfo
    path: Path | None = None


def save_checkpoint(path: str | os.PathLike, model: UNet, info: ModelInfo, overwrite: bool = False) -> Path:
    """Write ``model`` and ``info`` to ``path`` atomically; refuse to replace a file unless ``overwrite``.

    The data goes to a temporary file in the same folder first, so a crash never leaves a
    half-written checkpoint under the final name; the file's mode follows the umask (readable by
    colleagues in a shared model folder where the umask allows it).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; choose another name or allow overwriting")
    payload = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "config": dict(model.config),
        "info": asdict(info),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
    }
    with atomic_write(path, overwrite) as handle:
        torch.save(payload, handle)
    return path


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint safely and rebuild its network; raise :class:`CheckpointError` if unusable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: refused to load, the file contains Python objects other than weights "
            f"and plain data ({_first_line(exc)})"
        ) from None
    except Exception as exc:  # any decoding failure of a damaged or foreign file
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or corrupt: {_first_line(exc)})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path}: not a {FORMAT_NAME} checkpoint")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: written by a newer napari-unetseg (format {payload['format_version']}); please upgrade"
        )
    try:
        info = ModelInfo(**payload["info"])
        model = UNet(**payload["config"])
        model.load_state_dict(payload["state_dict"], strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: weights do not fit the stated architecture ({_first_line(exc)})") from None
    expected = len(INSTANCE_CLASSES) if info.mode == "instance" else len(info.class_names)
    if model.num_classes != expected:
        raise CheckpointError(
            f"{path}: {info.mode} mode with classes {info.class_names} needs {expected} outputs, "
            f"the network has {model.num_classes}"
        )
    model.eval()
    return Checkpoint(model=model.to(device), info=info, path=path)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
