"""napari-unetseg: U-Net segmentation for microscopy, as a Python API, a command line and a napari plugin.

The public API is importable without napari or Qt.
"""

try:
    from ._version import version as __version__
except ImportError:  # running from a source tree without an install
    __version__ = "0.0.0"

from .checkpoint import Checkpoint, ModelInfo, load_checkpoint, save_checkpoint
from .model import UNet

__all__ = ["Checkpoint", "ModelInfo", "UNet", "__version__", "load_checkpoint", "save_checkpoint"]
