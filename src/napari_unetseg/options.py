"""Names and values shared by the engine and the ``unetseg`` command line, importable without PyTorch.

The command line builds its parser (and ``unetseg --help`` answers) from these without importing
the engine, whose modules load PyTorch, zarr and scikit-image.
"""

from __future__ import annotations

#: The built-in model used when none is named.
DEFAULT_MODEL = "nuclei"
#: Device names accepted by :func:`~.device.get_device` (``"cuda:1"`` style indices too).
DEVICE_CHOICES = ("auto", "cuda", "mps", "cpu")
#: Compute precisions of :mod:`.optimize`.
PRECISIONS = ("auto", "float32", "bfloat16", "float16")
#: Inference backends of :mod:`.optimize`.
BACKENDS = ("auto", "torch", "onnxruntime")
#: Kinds of model and of labels: separated objects or one class per label value.
MODES = ("instance", "semantic")
#: Label results bigger than this are not held in memory: they stream into a zarr store, and an
#: output whose format is left open (a folder) is written as zarr instead of TIFF.
LARGE_RESULT_BYTES = 1 << 30
ZARR_SUFFIX = ".zarr"
