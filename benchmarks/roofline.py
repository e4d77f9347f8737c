"""What the hardware can do against what the model needs: matmul rate and the U-Net's FLOPs per plane.

    python benchmarks/roofline.py                     # CPU (or --device cuda)
    python benchmarks/roofline.py --model nuclei --size 512

Attainable rate = a large square matmul in float32 and, where supported, bfloat16 (float16 on
CUDA). Model FLOPs are counted from the convolution shapes (2 x multiply-adds), so achieved
FLOP/s = FLOPs per plane x planes per second from ``benchmarks/inference.py``.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from napari_unetseg.device import get_device
from napari_unetseg.models import resolve_model
from napari_unetseg.precision import cpu_supports_bf16


def matmul_flops(device: torch.device, dtype: torch.dtype, size: int = 2048, seconds: float = 2.0) -> float:
    """Sustained FLOP/s of ``size x size`` matmuls on ``device`` in ``dtype``."""
    a = torch.rand(size, size, device=device).to(dtype)
    b = torch.rand(size, size, device=device).to(dtype)
    torch.matmul(a, b)
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        torch.matmul(a, b)
        runs += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
    return 2 * size**3 * runs / (time.perf_counter() - start)


def model_flops(model: nn.Module, size: int) -> int:
    """FLOPs (2 x multiply-accumulates) of one forward pass on a ``size x size`` single plane."""
    total = 0

    def count(module: nn.Module, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.ConvTranspose2d):
            spatial = inputs[0].shape[-2] * inputs[0].shape[-1]
        else:
            spatial = output.shape[-2] * output.shape[-1]
        kernel = module.kernel_size[0] * module.kernel_size[1]
        total += 2 * spatial * kernel * module.in_channels * module.out_channels // module.groups

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    with torch.inference_mode():
        model.eval()(torch.zeros(1, model.in_channels, size, size))
    for hook in hooks:
        hook.remove()
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="nuclei")
    parser.add_argument("--size", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = get_device(args.device)
    model = resolve_model(args.model).model.cpu()
    for size in args.size:
        flops = model_flops(model, size)
        print(f"model {args.model}: {flops / 1e9:.2f} GFLOP per {size}x{size} plane")
    fp32 = matmul_flops(device, torch.float32)
    print(f"matmul float32 on {device} ({torch.get_num_threads()} threads): {fp32 / 1e9:.1f} GFLOP/s")
    if device.type == "cuda":
        print(f"matmul float16 on {device}: {matmul_flops(device, torch.float16) / 1e9:.1f} GFLOP/s")
    elif cpu_supports_bf16():
        print(f"matmul bfloat16 on {device}: {matmul_flops(device, torch.bfloat16) / 1e9:.1f} GFLOP/s")
    else:
        print("bfloat16: no native support on this CPU")


if __name__ == "__main__":
    main()
