"""int8 inference on the CPU: ONNX Runtime static quantization of the exported float32 network.

Meant for CPUs without native bfloat16, where ONNX Runtime float32 was the fastest path: the
quantized network ran about 1.6x faster than float32 ONNX Runtime on the machine we measured
(docs/benchmarks.md). Only precision ``"int8"`` asks for it: ``"auto"`` does not pick it. A fixed
probe of two synthetic planes (the kind that gates bfloat16) agreed for the built-in model, yet on
benchmarks/inference.py's stack int8 missed :func:`~.metrics.agreement`'s bar (pixels 0.986, object
F1 0.929), so such a probe cannot gate int8; it stays a choice the user makes knowingly.

The format is chosen to be safe on every x86 CPU, not only this one:

- QDQ graph, weights int8 per output channel, activations uint8 (the ReLU outputs are never
  negative, so unsigned activations use all 256 steps). ONNX Runtime runs these as U8S8 kernels.
- ``reduce_range``: weights in 7 bits. On AVX2 without VNNI, the U8S8 kernels add pairs of
  u8 x s8 products in 16 bits (``vpmaddubsw``), which saturates for 8-bit weights
  (2 x 255 x 127 > 32767); with 7-bit weights it cannot (2 x 255 x 63 < 32767). VNNI CPUs do
  not need it, but the cached graph is the same on every machine.
- The first convolution (it reads the normalised image, whose fine intensity steps carry the
  nuclei's edges) and the last one (the logits, which decide each pixel) stay float32: with them
  quantized the built-in model missed the agreement bar (object F1 0.987), without 0.996.
- Calibration: min/max ranges over fixed synthetic nuclei planes (:func:`calibration_planes`),
  other planes than the probe's, so the probe checks planes the quantizer has not seen.
"""

from __future__ import annotations

import importlib.metadata
import logging
import tempfile
from pathlib import Path

import numpy as np
import torch

from .model import UNet
from .normalize import normalize_plane
from .cache import cache_dir, cache_key, read_cache, write_cache
from .optimize import ONNX_OPSET, OnnxModel, exported_onnx
from .precision import onnxruntime_available
from .synthetic import synthetic_nuclei_2d

#: What :func:`quantize_graph` makes, in words; part of the cache key, so a change here quantizes again.
INT8_FORMAT = "QDQ; weights int8 per channel, 7-bit (reduce_range); activations uint8 min/max; first+last conv float32"
#: Calibration planes: how many, their side, and the first seed (seeds apart from the test planes).
CALIBRATION = {"planes": 4, "size": 256, "first_seed": 1000}
#: CPU features that decide which kernels run, as /proc/cpuinfo flags (any one of them counts).
CPU_FLAGS = {
    "AVX2": ("avx2",), "AVX-512": ("avx512f",), "VNNI": ("avx512_vnni", "avx_vnni"),
    "bf16": ("avx512_bf16", "amx_bf16"), "AMX": ("amx_int8", "amx_tile"),
}
INT8_NEEDS = "precision int8 runs on ONNX Runtime on the CPU: `pip install onnxruntime onnx` (the [onnx] extra)"


def cpu_features() -> dict[str, bool]:
    """Which of :data:`CPU_FLAGS` this CPU has (from /proc/cpuinfo; elsewhere from what PyTorch dispatches to)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        flags = set(next(line for line in text.splitlines() if line.startswith("flags")).split(":", 1)[1].split())
    except (OSError, StopIteration):
        capability = torch.backends.cpu.get_cpu_capability()
        flags = {"avx2"} if capability in ("AVX2", "AVX512") else set()
        flags |= {"avx512f"} if capability == "AVX512" else set()
    return {name: any(flag in flags for flag in names) for name, names in CPU_FLAGS.items()}


def cpu_kind() -> str:
    """The CPU features as one line, e.g. ``"AVX2 AVX-512 VNNI bf16 AMX"`` (``"none"`` without any)."""
    return " ".join(name for name, present in cpu_features().items() if present) or "none"


def calibration_planes(channels: int) -> list[np.ndarray]:
    """The fixed ``(1, channels, size, size)`` float32 inputs whose activation ranges set the int8 scales."""
    first, size = CALIBRATION["first_seed"], CALIBRATION["size"]
    planes = []
    for seed in range(first, first + CALIBRATION["planes"]):
        plane = normalize_plane(synthetic_nuclei_2d((size, size), seed=seed)[0], 1.0, 99.8)
        planes.append(np.repeat(plane[np.newaxis, np.newaxis], channels, axis=1).astype(np.float32))
    return planes


def quantize_graph(graph: bytes, planes: list[np.ndarray]) -> bytes:
    """The float32 ONNX ``graph`` quantized as :data:`INT8_FORMAT` says, calibrated on ``planes`` (its input ``x``)."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Planes(CalibrationDataReader):
        def __init__(self) -> None:
            self.remaining = iter(planes)

        def get_next(self) -> dict[str, np.ndarray] | None:
            plane = next(self.remaining, None)
            return None if plane is None else {"x": plane}

    network = onnx.load_from_string(graph)
    convolutions = [node.name for node in network.graph.node if node.op_type == "Conv"]
    quiet = logging.getLogger()  # the quantizer logs advice (pre-processing) on the root logger
    level = quiet.level
    quiet.setLevel(max(level, logging.ERROR))
    try:
        with tempfile.TemporaryDirectory() as folder:
            output = Path(folder) / "int8.onnx"
            quantize_static(
                network, output, Planes(), quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                nodes_to_exclude=convolutions[:1] + convolutions[-1:],
            )
            return output.read_bytes()
    finally:
        quiet.setLevel(level)


def int8_cache_key(model: UNet) -> str:
    """The name of ``model``'s quantized graph in the cache: the float32 export's inputs, the quantizer and its data."""
    return cache_key(
        model, onnx=importlib.metadata.version("onnx"), opset=ONNX_OPSET,
        onnxruntime=importlib.metadata.version("onnxruntime"), int8=INT8_FORMAT, calibration=CALIBRATION,
    )


def quantized_onnx(model: UNet, refresh: bool = False) -> bytes:
    """:func:`quantize_graph` of ``model``'s float32 export, kept next to it as ``<cache_dir>/onnx/<sha256>.int8.onnx``.

    Quantizing takes a few seconds, so only the first run of a model pays; ``refresh`` quantizes
    again (and exports again) and replaces the cached files, e.g. after one failed to load.
    """
    path = cache_dir() / "onnx" / f"{int8_cache_key(model)}.int8.onnx"
    graph = None if refresh else read_cache(path)
    if graph is None:
        graph = quantize_graph(exported_onnx(model, refresh=refresh), calibration_planes(model.in_channels))
        write_cache(path, graph)
    return graph


class Int8Model(OnnxModel):
    """The network quantized to int8 (:func:`quantized_onnx`), run by ONNX Runtime on the CPU.

    Same interface as :class:`~.optimize.OnnxModel`; it returns float32 probabilities.
    """

    graph = staticmethod(quantized_onnx)


def int8_model(model: UNet, device: torch.device, backend: str) -> Int8Model:
    """:class:`Int8Model` of ``model``, or ValueError saying why int8 cannot run with ``device`` and ``backend``."""
    if device.type != "cpu" or backend not in ("auto", "onnxruntime"):
        raise ValueError(f"{INT8_NEEDS}; got device {device.type}, backend {backend}")
    if not onnxruntime_available():
        raise ValueError(f"{INT8_NEEDS}; ONNX Runtime is not installed")
    return Int8Model(model)
