"""Make a trained network fast for inference on a given device, without changing its answers.

- BatchNorm is folded into the preceding convolution (eval mode only: the same arithmetic, fewer passes).
- channels_last memory format, which oneDNN (CPU) and cuDNN (GPU) run fastest.
- float16 autocast on CUDA; bfloat16 autocast on CPUs with AVX512-BF16/AMX, which
  :func:`~.precision.resolve_precision` picks only when a probe shows it keeps the model's
  float32 labels (about 1.7x faster than float32 PyTorch on the machine we measured).
- On the CPU, ONNX Runtime (when installed: ``pip install napari-unetseg[onnx]``) runs the same
  float32 network about twice as fast as eager PyTorch on the machine we measured, with the same
  labels; ``backend="auto"`` uses it there. The exported network is cached on disk (see
  :func:`exported_onnx`), so only the first run of a model pays for the export.

Which precision and which runner is decided in :mod:`.precision`; this module holds the runners.
"""

from __future__ import annotations

import copy
import importlib.metadata
import importlib.util
import io
import warnings

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .cache import cache_dir, cache_key, read_cache, write_cache
from .model import UNet
from .precision import choose_precision

ONNX_OPSET = 17


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
        if self.device.type == "cuda":  # page-locked host memory: the copy to the GPU runs asynchronously
            batch = batch.pin_memory()
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


def onnx_cache_key(model: UNet) -> str:
    """The name of ``model``'s exported graph in the cache: the network and everything the exporter adds."""
    return cache_key(
        model, onnx=importlib.metadata.version("onnx"), opset=ONNX_OPSET,
        inputs="x: (batch, channels, height, width), dynamic batch/height/width; BatchNorm folded",
    )


def export_onnx(model: nn.Module, output_name: str = "logits") -> bytes:
    """The network with BatchNorm folded as an ONNX graph (dynamic batch and plane size); a few seconds.

    ``model`` is a :class:`UNet` or a module wrapping one (with its ``in_channels``).
    """
    buffer = io.BytesIO()
    example = torch.zeros(1, model.in_channels, 64, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            fold_batchnorm(model).cpu(), (example,), buffer, input_names=["x"], output_names=[output_name],
            dynamic_axes={"x": {0: "batch", 2: "height", 3: "width"}}, dynamo=False, opset_version=ONNX_OPSET,
        )
    return buffer.getvalue()


def exported_onnx(model: UNet, refresh: bool = False) -> bytes:
    """:func:`export_onnx` of ``model``, read from ``<cache_dir>/onnx/<sha256>.onnx`` when it was exported before.

    A new export is written there atomically (so parallel runs never read half a file); a cache
    folder that cannot be written costs the export time on every run, never the result.
    ``refresh`` exports again and replaces the cached file (e.g. one that failed to load).
    """
    path = cache_dir() / "onnx" / f"{onnx_cache_key(model)}.onnx"
    graph = None if refresh else read_cache(path)
    if graph is None:
        graph = export_onnx(model)
        write_cache(path, graph)
    return graph


class OnnxModel:
    """The network (BatchNorm folded) exported to ONNX and run by ONNX Runtime on the CPU.

    Same interface as :class:`FastModel`; float32 only. The export (a few seconds) is cached on disk
    by :func:`exported_onnx` (``graph``; :class:`~.quantize.Int8Model` runs its int8 graph instead).
    """

    device = torch.device("cpu")
    dtype = torch.float32
    graph = staticmethod(exported_onnx)

    def __init__(self, model: UNet) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()

        def session(graph: bytes) -> onnxruntime.InferenceSession:
            return onnxruntime.InferenceSession(graph, options, providers=["CPUExecutionProvider"])

        try:
            self.session = session(self.graph(model))
        except Exception:  # a damaged cached file (ONNX Runtime's errors share no base class): export again
            self.session = session(self.graph(model, refresh=True))

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        # one input at a time: ONNX Runtime's CPU convolutions were slower per plane with batches (measured)
        inputs = np.ascontiguousarray(batch.numpy(), np.float32)
        logits = np.concatenate([self.session.run(None, {"x": item[None]})[0] for item in inputs])
        return torch.softmax(torch.from_numpy(logits), dim=1)
