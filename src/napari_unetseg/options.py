"""Names and values shared by the engine and the ``unetseg`` command line, importable without PyTorch.

The command line builds its parser (and ``unetseg --help`` answers) from these without importing
the engine, whose modules load PyTorch, zarr and scikit-image.
"""

from __future__ import annotations

import numpy as np

#: The built-in model used when none is named.
DEFAULT_MODEL = "nuclei"
#: Device names accepted by :func:`~.device.get_device` (``"cuda:1"`` style indices too).
DEVICE_CHOICES = ("auto", "cuda", "mps", "cpu")
#: Compute precisions of :mod:`.optimize`.
PRECISIONS = ("auto", "float32", "bfloat16", "float16", "int8")
#: Inference backends of :mod:`.optimize`.
BACKENDS = ("auto", "torch", "onnxruntime")
#: Where probabilities become labels (:mod:`.postprocess_torch`): ``auto`` (the device on CUDA when a probe
#: shows the labels agree, else the CPU), ``cpu``, ``device``.
POSTPROCESS_CHOICES = ("auto", "cpu", "device")
#: Kinds of model and of labels: separated objects or one class per label value.
MODES = ("instance", "semantic")
#: Label results bigger than this are not held in memory: they stream into a zarr store, and an
#: output whose format is left open (a folder) is written as zarr instead of TIFF.
LARGE_RESULT_BYTES = 1 << 30
ZARR_SUFFIX = ".zarr"


def labels_dtype(mode: str) -> np.dtype:
    """The dtype of a model's labels (results and annotations): uint32 object ids, or uint8 classes."""
    return np.dtype(np.uint32 if mode == "instance" else np.uint8)
