"""The one place that decides in which number format, and with which runner, the network computes.

Inference: :func:`resolve_precision` turns ``"auto"`` into bfloat16 on CPUs with native bfloat16
when a probe shows it keeps the model's float32 labels (the probe runs the engine, so it lives with
it: :func:`~.predictor.bfloat16_verdict`, kept per machine in the cache folder);
:func:`choose_precision` gives the dtype (float16 on CUDA, else float32), and
:func:`choose_backend` picks ONNX Runtime or PyTorch. Training asks
:func:`training_autocast`; previews and validation use the named choices below. The runners
themselves are in :mod:`.optimize`.

``"int8"`` (ONNX Runtime static quantization, :mod:`.quantize`) is only ever asked for, never
chosen by ``auto``: a fixed probe did not predict its agreement on real stacks.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable

import torch

from .options import BACKENDS, PRECISIONS
from .postprocess import STRIPWISE_PIXELS

#: The fine-tuning preview: one plane of fresh weights each time, so the bfloat16 probe (two passes
#: over two probe planes) would cost more than it saves, and an ONNX export would be stale at once.
PREVIEW_PRECISION = "float32"
#: Validation during training segments in float32: the score compares weights, not precisions.
VALIDATION_PRECISION = "float32"
#: Networks whose weights change between calls (the preview, validation during training) run with PyTorch:
#: an exported ONNX graph would be out of date at the next call.
CHANGING_WEIGHTS_BACKEND = "torch"


def cpu_supports_bf16() -> bool:
    """True when oneDNN has native bfloat16 kernels on this CPU (AVX512-BF16 or AMX)."""
    checker = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(checker()) if checker is not None else False
    except RuntimeError:
        return False


def choose_precision(device: torch.device, precision: str = "auto") -> torch.dtype:
    """The compute dtype to use on ``device``: ``auto`` is float16 on CUDA, else float32.

    (:func:`resolve_precision` turns ``auto`` into bfloat16 first where that is safe.)
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "int8":
        raise ValueError("precision int8 runs on ONNX Runtime only (see .quantize), not in PyTorch")
    if precision != "auto":
        return getattr(torch, precision)
    return torch.float16 if device.type == "cuda" else torch.float32


def onnxruntime_available() -> bool:
    """True when ONNX Runtime and the ONNX exporter's dependency are installed."""
    return all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "onnx"))


def choose_backend(device: torch.device, precision: str = "auto", backend: str = "auto") -> str:
    """``"onnxruntime"`` or ``"torch"``: ``auto`` is ONNX Runtime for float32 on the CPU when installed.

    ONNX Runtime ran the float32 network about twice as fast as eager PyTorch on the CPU we
    measured, with the same labels; it has no reduced-precision path here. ValueError when
    ``onnxruntime`` is asked for where it cannot run.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    float32_cpu = device.type == "cpu" and choose_precision(device, precision) == torch.float32
    if backend == "onnxruntime" and not (float32_cpu and onnxruntime_available()):
        raise ValueError("the onnxruntime backend needs float32 on the CPU and `pip install onnxruntime onnx`")
    if backend == "onnxruntime" or (backend == "auto" and float32_cpu and onnxruntime_available()):
        return "onnxruntime"
    return "torch"


def buffer_dtype(pixels: int) -> torch.dtype:
    """The dtype a plane's probabilities are kept in: float16 above :data:`~.postprocess.STRIPWISE_PIXELS`
    (padded) pixels, where they are only thresholded and compared (half the memory), else float32."""
    return torch.float16 if pixels > STRIPWISE_PIXELS else torch.float32


def training_autocast(device: torch.device, amp: bool, cpu_bf16: bool) -> torch.dtype | None:
    """The autocast dtype of training steps on ``device``, or None for float32.

    float16 on CUDA with ``amp`` (with a gradient scaler); bfloat16 on the CPU with ``cpu_bf16``
    (~1.4x faster on CPUs with native bfloat16, slower elsewhere, so it is asked for, not automatic).
    """
    if device.type == "cuda":
        return torch.float16 if amp else None
    return torch.bfloat16 if device.type == "cpu" and cpu_bf16 else None


def resolve_precision(device: torch.device, precision: str, bfloat16_agrees: Callable[[], bool]) -> str:
    """The precision ``"auto"`` stands for: bfloat16 on a CPU with native bfloat16 when ``bfloat16_agrees()``
    says the model keeps its float32 labels there (asked only then: it may run a probe,
    :func:`~.predictor.bfloat16_verdict`), else what :func:`choose_precision` picks (float16 on CUDA,
    float32 elsewhere). Other values are returned as they are.
    """
    if precision != "auto" or device.type != "cpu" or not cpu_supports_bf16():
        return precision
    return "bfloat16" if bfloat16_agrees() else "float32"
