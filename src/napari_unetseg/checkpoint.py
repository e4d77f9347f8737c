"""Checkpoint files: weights plus everything needed to use them, loaded without running code.

A checkpoint is a ``torch.save`` of a dict holding only tensors and plain Python values
(str, int, float, bool, list, dict, None), so ``torch.load(weights_only=True)`` reads it and
a file carrying a pickled object that would run code is refused.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import pickle
import pickletools
import re
import warnings
import zipfile
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
    ``object_diameter``: instance models only, the typical object diameter (pixels) the model was
    trained on, to which 3D segmentation rescales a stack's objects; ``None``: not recorded (see
    :data:`~.size.DEFAULT_MODEL_DIAMETER`).
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
    object_diameter: float | None = None

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
    problem = info_problem(info, model.num_classes)
    if problem:
        raise ValueError(f"not saving {path}: {problem}")
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


def info_problem(info: ModelInfo, num_classes: int) -> str | None:
    """What makes ``info`` unusable with a network of ``num_classes`` outputs (naming the field), or None.

    Checked when a checkpoint is loaded or saved, so a bad field is blamed on the checkpoint and
    not, later, on the image being segmented.
    """
    names = info.class_names
    if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
        return f"class_names must be a list of names, got {names!r}"
    expected = len(INSTANCE_CLASSES) if info.mode == "instance" else len(info.class_names)
    if num_classes != expected:
        return (f"{info.mode} mode with classes {info.class_names} needs {expected} outputs, "
                f"the network has {num_classes}")
    norm = info.normalization
    if not isinstance(norm, dict):
        return f"normalization must be a mapping with 'low' and 'high' percentiles, got {norm!r}"
    low, high = norm.get("low", 1.0), norm.get("high", 99.8)
    if not all(_is_number(v) and 0 <= v <= 100 for v in (low, high)) or not low < high:
        return f"normalization needs percentiles 0 <= low < high <= 100, got low={low!r}, high={high!r}"
    weights = info.decision_weights
    if weights is not None:
        if info.mode != "semantic":
            return "decision_weights are for semantic models only"
        if not isinstance(weights, (list, tuple)) or len(weights) != num_classes:
            return f"decision_weights must hold one number per class ({num_classes}), got {weights!r}"
        if not all(_is_number(w) and w > 0 for w in weights):
            return f"decision_weights must be positive numbers, got {weights!r}"
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint safely and rebuild its network; raise :class:`CheckpointError` if unusable."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with warnings.catch_warnings():  # PyTorch warns about pickle protocols of foreign files
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # PyTorch's own message advises weights_only=False: never quote it
        found = _pickled_globals(path) if isinstance(exc, pickle.UnpicklingError) else None
        if found is not None:
            names = [name for name in found if not name.startswith(_WEIGHT_GLOBALS)]
            which = f" ({', '.join(names[:3])})" if names else ""
            raise CheckpointError(
                f"{path}: refused: the file contains Python objects other than weights and plain data{which}"
            ) from None
        raise CheckpointError(f"{path}: not a checkpoint (corrupt or another kind of file)") from None
    return checkpoint_from_payload(payload, path, device)


def checkpoint_from_payload(payload: Any, path: Path, device: str | torch.device = "cpu") -> Checkpoint:
    """Rebuild the network of a checkpoint's contents (a file's, or a bioimage.io package's), naming ``path``
    in every :class:`CheckpointError`."""
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path}: not a {FORMAT_NAME} checkpoint")
    if payload.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: written by a newer napari-unetseg (format {payload['format_version']}); please upgrade"
        )
    try:
        info = ModelInfo(**payload["info"])
    except (KeyError, TypeError, ValueError) as exc:  # a missing, unknown or invalid metadata field
        raise CheckpointError(f"{path}: unusable metadata ({_first_line(exc)})") from None
    try:
        model = UNet(**payload["config"])
        model.load_state_dict(payload["state_dict"], strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: weights do not fit the stated architecture ({_first_line(exc)})") from None
    problem = info_problem(info, model.num_classes)
    if problem:
        raise CheckpointError(f"{path}: {problem}")
    model.eval()
    return Checkpoint(model=model.to(device), info=info, path=path)


#: Globals that PyTorch's weights-only loader accepts in a checkpoint (not worth naming in a refusal).
_WEIGHT_GLOBALS = ("torch.", "collections.OrderedDict", "_codecs.encode", "builtins.set")


def _pickled_globals(path: Path) -> list[str] | None:
    """The names of the Python globals a pickle (or a PyTorch zip's ``data.pkl``) refers to; None if the
    file is not a well-formed pickle at all (then it is damaged or another kind of file)."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                data = next(archive.read(n) for n in archive.namelist() if n.endswith("data.pkl"))
        else:
            data = path.read_bytes()
        names, strings = [], []
        for opcode, arg, _ in pickletools.genops(data):
            if opcode.name == "GLOBAL":
                names.append(str(arg).replace(" ", "."))
            elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.append(".".join(strings[-2:]))
            elif isinstance(arg, str):
                strings.append(arg)
        return names if names else None
    except Exception:  # not a pickle, a truncated one, or a zip without data.pkl
        return None


_ANSI_CODES = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _first_line(exc: BaseException) -> str:
    text = _ANSI_CODES.sub("", str(exc)).strip().splitlines()
    return text[0] if text else type(exc).__name__
