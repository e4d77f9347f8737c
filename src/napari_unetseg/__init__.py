"""napari-unetseg: U-Net segmentation for microscopy, as a Python API, a command line and a napari plugin.

The public names load on first use, so importing the package (as napari does for the sample data
and the reader) does not import PyTorch; none of them needs napari or Qt.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

try:
    from ._version import version as __version__
except ImportError:  # running from a source tree without an install
    __version__ = "0.0.0"

_PUBLIC = {
    "Checkpoint": "checkpoint",
    "ModelInfo": "checkpoint",
    "load_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
    "UNet": "model",
    "segment": "inference",
    "train": "training",
    "list_models": "models",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(import_module(f".{_PUBLIC[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
