"""The network on planes: a checkpoint's U-Net run on batches of normalised planes, tiled where large.

:class:`PlanePredictor` is the engine's lowest step, below the 2D engine (:mod:`.inference`), the 3D
engine (:mod:`.slabs`), uncertainty and validation. It picks its runner (:func:`make_fast_model`:
PyTorch, ONNX Runtime or int8), and its batch and tile sizes to fit the device's memory;
:func:`halve_batch` is the out-of-memory step every engine takes. The bfloat16 probe
(:func:`bfloat16_verdict`) is here too: :func:`~.precision.resolve_precision` asks it, and it runs predictors.
"""

from __future__ import annotations

import json
import math
import os
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from .cache import cache_dir, cache_key, read_cache, write_cache
from .checkpoint import Checkpoint, info_problem
from .device import OutOfMemoryError, fit_to_memory, free_gpu_memory, get_device, is_out_of_memory
from .engine_settings import EngineSettings
from .metrics import agreement
from .model import UNet
from .models import resolve_model
from .normalize import normalize_plane
from .optimize import FastModel, OnnxModel
from .options import labels_dtype
from .postprocess import probabilities_to_classes, probabilities_to_instances
from .postprocess_torch import resolve_postprocess
from .precision import buffer_dtype, choose_backend, resolve_precision
from .quantize import int8_model
from .synthetic import synthetic_nuclei_2d
from .tiling import TilePlan, plan_tiles


class SegmentationCancelled(Exception):
    """Raised when ``should_stop`` asked a run to stop
    (:func:`~.inference.segment`, :meth:`PlanePredictor.probabilities_on`)."""


@dataclass
class PlaneResult:
    """Labels of one plane; ``index`` selects the plane in the output (over the plane axes)."""

    index: tuple[int, ...]
    labels: np.ndarray


@dataclass
class BatchProgress:
    """Yielded after each batch: planes done so far, the total, and the planes finished (or changed) since."""

    done: int
    total: int
    planes: list[PlaneResult] = field(default_factory=list)
    note: str = ""  # for people, e.g. that the batch size was lowered after running out of memory


def resolve_checkpoint(model: Checkpoint | str | os.PathLike) -> Checkpoint:
    """A :class:`Checkpoint` from itself, a built-in model name or a checkpoint path."""
    if isinstance(model, Checkpoint):
        return model
    return resolve_model(model)


def make_fast_model(
    model: UNet, device: torch.device, precision: str = "auto", backend: str = "auto"
) -> FastModel | OnnxModel:
    """The runner :func:`~.precision.choose_backend` picks for ``device``, ``precision`` and ``backend``."""
    if getattr(model, "runs_itself", False):  # a bioimage.io package's ONNX network (see .bioimageio_load)
        return FastModel(model, device, "float32")
    if precision == "int8":
        return int8_model(model, device, backend)
    if choose_backend(device, precision, backend) == "onnxruntime":
        return OnnxModel(model)
    return FastModel(model, device, precision)


class PlanePredictor:
    """Runs a checkpoint's network on normalised planes, tiling planes larger than the settings' ``tile_size``.

    ``settings`` (:class:`~.engine_settings.EngineSettings`) say where and how. On a GPU, batch
    and tile sizes shrink to fit its free memory; ``batch_size=None`` takes the largest batch that
    fits (4 on a CPU). The precision is resolved by :func:`~.precision.resolve_precision`, the
    runner by :func:`~.precision.choose_backend`. ``postprocess`` ``"device"`` turns probabilities
    into labels where the network ran (:mod:`.postprocess_torch`); ``"auto"`` does so on CUDA
    when a probe shows the labels agree with the CPU path's.
    """

    def __init__(self, checkpoint: Checkpoint, settings: EngineSettings = EngineSettings()) -> None:
        problem = info_problem(checkpoint.info, checkpoint.model.num_classes)
        if problem:  # checked at load already; this catches checkpoints built in memory
            raise ValueError(f"model {checkpoint.info.name or checkpoint.path or '(unnamed)'}: {problem}")
        self.checkpoint = checkpoint
        self.network = checkpoint.model
        self.settings = settings
        device = get_device(settings.device)
        precision = resolve_precision(device, settings.precision, lambda: bfloat16_verdict(checkpoint))
        self.fast = make_fast_model(self.network, device, precision, settings.backend)
        value_bytes = 4 if self.fast.dtype == torch.float32 else 2
        batch_size, tile_size = fit_to_memory(
            self.fast.device, self.network.config["base_channels"], settings.batch_size, int(settings.tile_size),
            value_bytes,
        )
        self.batch_size = max(1, int(batch_size))
        self.tile_size = tile_size
        info = checkpoint.info
        self.postprocess = resolve_postprocess(settings.postprocess, self.fast, self.network, info.mode,
                                               info.normalization)

    @property
    def device(self) -> torch.device:
        return self.fast.device

    @property
    def num_classes(self) -> int:
        return self.network.num_classes

    def plan(self, height: int, width: int) -> TilePlan:
        return plan_tiles(self.network, height, width, self.tile_size)

    def prepare(self, plane: np.ndarray) -> np.ndarray | None:
        """``(C, H, W)`` raw plane -> normalised network input, or ``None`` for a blank plane."""
        norm = self.checkpoint.info.normalization
        low, high = norm.get("low", 1.0), norm.get("high", 99.8)
        expected = self.network.in_channels
        if expected == 1 and plane.shape[0] > 1:
            plane = np.nanmean(plane.astype(np.float32), axis=0, keepdims=True)
        if plane.shape[0] != expected:
            raise ValueError(f"the model expects {expected} channel(s), the image has {plane.shape[0]}")
        channels = [normalize_plane(channel, low, high) for channel in plane]
        if any(c is None for c in channels):
            return None
        return np.stack(channels)

    def probabilities(self, planes: list[np.ndarray], should_stop: Callable[[], bool] | None = None) -> list[np.ndarray]:
        """Class probabilities ``(K, H, W)`` for each normalised ``(C, H, W)`` plane (same size).

        float32, or float16 for huge planes (:func:`~.precision.buffer_dtype`).
        """
        return [p.numpy() for p in self.probabilities_on(torch.device("cpu"), planes, should_stop)]

    def probabilities_on(
        self, where: torch.device, planes: list[np.ndarray], should_stop: Callable[[], bool] | None = None
    ) -> list[torch.Tensor]:
        """:meth:`probabilities` as tensors on ``where`` (the predictor's device: post-processed there)."""
        plan = self.plan(*planes[0].shape[-2:])
        padded = [plan.pad(p) for p in planes]
        dtype = buffer_dtype(math.prod(plan.padded_shape))
        outputs = [torch.zeros((self.num_classes, *plan.padded_shape), dtype=dtype, device=where) for _ in planes]
        jobs = [(i, tile) for i in range(len(planes)) for tile in plan.tiles]
        for start in range(0, len(jobs), self.batch_size):
            if should_stop is not None and should_stop():
                raise SegmentationCancelled
            chunk = jobs[start : start + self.batch_size]
            batch = np.stack([padded[i][(slice(None), *tile.source)] for i, tile in chunk])
            probs = self.fast(torch.from_numpy(batch)).to(where)
            for (i, tile), prob in zip(chunk, probs):
                outputs[i][(slice(None), *tile.target)] = prob[(slice(None), *tile.keep)]
        return [plan.crop(o) for o in outputs]

    def labels(self, probabilities: np.ndarray) -> np.ndarray:
        if self.checkpoint.info.mode == "instance":
            return probabilities_to_instances(probabilities)
        return probabilities_to_classes(probabilities, self.checkpoint.info.decision_weights)

    def blank_labels(self, shape: tuple[int, int]) -> np.ndarray:
        """Labels for a plane with no contrast: nothing found (0) in either mode."""
        return np.zeros(shape, labels_dtype(self.checkpoint.info.mode))


def planes_per_batch(network: torch.nn.Module, height: int, width: int, batch_size: int, tile_size: int) -> int:
    """Planes of ``height`` x ``width`` that go through the network together (``batch_size`` tiles' worth, >= 1)."""
    return max(1, max(1, int(batch_size)) // len(plan_tiles(network, height, width, int(tile_size)).tiles))


def halve_batch(predictor: PlanePredictor, exc: Exception) -> str:
    """After ``exc``: halve the predictor's batch size if it was out of memory and say so, else raise.

    Raises ``exc`` again when it is another error, and :class:`~.device.OutOfMemoryError` at batch size 1.
    """
    if not is_out_of_memory(exc):
        raise exc
    free_gpu_memory()
    if predictor.batch_size == 1:
        raise OutOfMemoryError(
            f"out of memory on {predictor.device} even with batch size 1; try a smaller tile size or the CPU"
        ) from exc
    predictor.batch_size //= 2
    return f"Out of memory on {predictor.device}: continuing with batch size {predictor.batch_size}."


# ---------------------------------------------------------------------------- the bfloat16 probe
# (asked by precision.resolve_precision)

_BFLOAT16_VERDICTS: weakref.WeakKeyDictionary[UNet, bool] = weakref.WeakKeyDictionary()


def bfloat16_verdict(checkpoint: Checkpoint) -> bool:
    """:func:`bfloat16_agrees`, kept once per network and process, and in the cache folder by network,
    PyTorch and CPU kind (so once per machine). A probe that cannot run proves nothing: False, not kept."""
    if checkpoint.model not in _BFLOAT16_VERDICTS:
        _BFLOAT16_VERDICTS[checkpoint.model] = _cached_bfloat16_verdict(checkpoint)
    return _BFLOAT16_VERDICTS[checkpoint.model]


def _cached_bfloat16_verdict(checkpoint: Checkpoint) -> bool:
    """:func:`bfloat16_agrees` from the cache folder, else probed and kept there."""
    key = cache_key(checkpoint.model, probe="bfloat16_agrees", cpu=torch.backends.cpu.get_cpu_capability())
    path = cache_dir() / "precision" / f"{key}.json"
    try:
        return bool(json.loads(read_cache(path) or b"")["bfloat16_agrees"])
    except (ValueError, KeyError, TypeError):  # not there yet, or damaged: probe
        pass
    try:
        verdict = bfloat16_agrees(checkpoint)
    except (RuntimeError, MemoryError):  # a probe that cannot run proves nothing: stay with float32 (not kept)
        return False
    write_cache(path, json.dumps({"bfloat16_agrees": verdict}).encode())
    return verdict


def bfloat16_agrees(checkpoint: Checkpoint, planes: int = 2, size: int = 512) -> bool:
    """True when bfloat16 gives the float32 labels on a fixed probe (synthetic nuclei planes).

    "The same" is :func:`~.metrics.agreement`'s bar: 99.5 % of pixels and, for instances, object
    F1 >= 0.99. The probe is fixed, not the user's image, so every process (and every worker of
    a cluster) makes the same choice for a model. Costs one float32 and one bfloat16 pass over
    ``planes`` planes of ``size`` px.
    """
    channels = checkpoint.model.in_channels
    probe = [np.repeat(synthetic_nuclei_2d((size, size), seed=seed)[0][np.newaxis], channels, 0)
             for seed in range(planes)]
    labels = []
    for precision in ("float32", "bfloat16"):
        settings = EngineSettings(device="cpu", batch_size=planes, tile_size=size, precision=precision, backend="torch")
        predictor = PlanePredictor(checkpoint, settings)
        prepared = [predictor.prepare(plane) for plane in probe]
        labels.append(np.stack([predictor.labels(p) for p in predictor.probabilities(prepared)]))
    return agreement(labels[1], labels[0], checkpoint.info.mode)["same"]
