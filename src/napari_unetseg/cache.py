"""Files worth keeping between runs (exported networks, precision probes), keyed by what the network computes.

A key hashes the network's architecture and weights, PyTorch's version and whatever else shaped
the file, so a changed model or library never reads a stale entry. Writes are atomic, and a
cache that cannot be read or written is skipped: it only saves time.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from .atomic import atomic_write
from .model import UNet

#: Overrides the cache folder (default: the user cache folder, e.g. ~/.cache/napari-unetseg).
CACHE_ENV = "NAPARI_UNETSEG_CACHE_DIR"


def cache_dir() -> Path:
    """Folder for files worth keeping between runs: ``$NAPARI_UNETSEG_CACHE_DIR``, else the user cache folder."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("napari-unetseg", appauthor=False))


def network_sha256(model: UNet) -> str:
    """sha256 of what the network computes: its class, architecture and weights (not a file's metadata).

    Hashing the weights rather than a checkpoint file also covers models that were never saved
    (a fine-tuned network in the viewer).
    """
    digest = hashlib.sha256()
    setup = {"network": f"{type(model).__module__}.{type(model).__qualname__}", "config": model.config}
    digest.update(json.dumps(setup, sort_keys=True, default=str).encode())
    for name, tensor in model.state_dict().items():
        values = tensor.detach().cpu().contiguous()
        digest.update(f"{name} {values.dtype} {tuple(values.shape)}".encode())
        digest.update(values.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def cache_key(model: UNet, **setup: object) -> str:
    """sha256 of the network (:func:`network_sha256`) and of ``setup``, what else shapes a cached result."""
    text = json.dumps({"network": network_sha256(model), "torch": torch.__version__, **setup}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def read_cache(path: Path) -> bytes | None:
    """A cached file's bytes, or None when it is not there (or cannot be read)."""
    try:
        return path.read_bytes()
    except OSError:
        return None


def write_cache(path: Path, data: bytes) -> None:
    """Store ``data`` atomically (parallel runs never read half a file); a cache that cannot be written is skipped."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path, overwrite=True) as handle:
            handle.write(data)
    except OSError:
        pass
