"""Built-in pretrained models shipped inside the package, and name-or-path resolution."""

from __future__ import annotations

import copy
import os
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..checkpoint import Checkpoint, CheckpointError, load_checkpoint
from ..options import DEFAULT_MODEL  # noqa: F401  (its home was here: re-exported)

BUILTIN_DIR = Path(__file__).parent


def builtin_names() -> list[str]:
    """Names of the models shipped with the package (file stems of ``models/*.pt``)."""
    return sorted(path.stem for path in BUILTIN_DIR.glob("*.pt"))


def builtin_path(name: str) -> Path:
    """File of the built-in model ``name``; :class:`CheckpointError` if there is none."""
    path = BUILTIN_DIR / f"{name}.pt"
    if not path.is_file():
        known = ", ".join(builtin_names()) or "none installed"
        raise CheckpointError(f"{name}: no such checkpoint file or built-in model (built-ins: {known})")
    return path


def resolve_model(spec: str | os.PathLike) -> Checkpoint:
    """Load a checkpoint given a file path (a bioimage.io package ``.zip`` too) or the name of a built-in model."""
    path = Path(spec)
    if path.suffix in (".pt", ".pth") and path.stem in builtin_names() and not path.exists():
        raise CheckpointError(f"{spec}: no such checkpoint file (the built-in model is named {path.stem!r}, no suffix)")
    if path.suffix.lower() == ".zip":
        from ..bioimageio_load import load_package

        return load_package(path)
    if path.suffix or path.exists() or os.sep in str(spec):
        return load_checkpoint(path)
    return _load_builtin(str(spec))


@lru_cache(maxsize=4)
def _builtin_checkpoint(name: str) -> Checkpoint:
    return load_checkpoint(builtin_path(name))


def _load_builtin(name: str) -> Checkpoint:
    """A fresh copy of a built-in model (the cached one is never handed out to be modified)."""
    cached = _builtin_checkpoint(name)
    return Checkpoint(model=copy.deepcopy(cached.model), info=copy.deepcopy(cached.info), path=cached.path)


def list_models() -> list[dict[str, Any]]:
    """One row per built-in model: name, mode, classes, file size, training data and metrics."""
    rows = []
    for name in builtin_names():
        checkpoint = _builtin_checkpoint(name)
        info = checkpoint.info
        rows.append(
            {
                "name": name,
                "mode": info.mode,
                "classes": list(info.class_names),
                "size_mb": round(builtin_path(name).stat().st_size / 1e6, 2),
                "parameters": sum(p.numel() for p in checkpoint.model.parameters()),
                "training_data": info.training.get("data", ""),
                "metrics": info.training.get("metrics", {}),
                "description": info.description,
            }
        )
    return rows
