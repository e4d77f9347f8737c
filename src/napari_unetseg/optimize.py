"""Make a trained network fast for inference on a given device, without changing its answers.

- BatchNorm is folded into the preceding convolution (eval mode only: the same arithmetic, fewer passes).
- channels_last memory format, which oneDNN (CPU) and cuDNN (GPU) run fastest.
- Reduced precision where the hardware supports it: bfloat16 on CPUs with AVX512-BF16/AMX,
  float16 autocast on CUDA. Callers can force ``precision="float32"``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .model import UNet

PRECISIONS = ("auto", "float32", "bfloat16", "float16")


def cpu_supports_bf16() -> bool:
    """True when oneDNN has native bfloat16 kernels on this CPU (AVX512-BF16 or AMX)."""
    checker = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        return bool(checker()) if checker is not None else False
    except RuntimeError:
        return False


def choose_precision(device: torch.device, precision: str = "auto") -> torch.dtype:
    """The compute dtype to use on ``device``: ``auto`` picks bf16 on capable CPUs, fp16 on CUDA."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return getattr(torch, precision)
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and cpu_supports_bf16():
        return torch.bfloat16
    return torch.float32


def fold_batchnorm(model: UNet) -> UNet:
    """A copy of ``model`` (in eval mode) with every Conv2d -> BatchNorm2d pair merged into one Conv2d."""
    folded = copy.deepcopy(model).eval()
    for module in folded.modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module.named_children())
        for (conv_name, conv), (bn_name, bn) in zip(children, children[1:]):
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
                setattr(module, conv_name, fuse_conv_bn_eval(conv, bn))
                setattr(module, bn_name, nn.Identity())
    return folded


class FastModel:
    """A frozen, device-resident copy of a network set up for fast inference.

    Calling it maps a float32 ``(N, C, H, W)`` tensor to float32 class probabilities.
    """

    def __init__(self, model: UNet, device: torch.device, precision: str = "auto") -> None:
        self.device = device
        self.dtype = choose_precision(device, precision)
        self.channels_last = device.type in ("cpu", "cuda")
        prepared = fold_batchnorm(model).to(device)
        if self.channels_last:
            prepared = prepared.to(memory_format=torch.channels_last)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.model = prepared

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        batch = batch.to(self.device, non_blocking=True)
        if self.channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            if self.dtype == torch.float32:
                logits = self.model(batch)
            else:
                with torch.autocast(self.device.type, dtype=self.dtype):
                    logits = self.model(batch)
            return torch.softmax(logits.float(), dim=1)
