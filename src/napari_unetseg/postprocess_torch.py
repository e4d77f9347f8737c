"""The post-processing of :mod:`.postprocess` as torch operations, on whatever device the probabilities are on.

On a GPU the CPU watershed and the copy of three float probabilities a pixel to the host limit the
throughput long before the network does; here a batch of ``(N, K, H, W)`` probabilities becomes
``(N, H, W)`` labels where it was computed, and only the labels (4 bytes a pixel) travel.

- class maps: the weighted arg-max, exactly as :func:`~.postprocess.probabilities_to_classes`;
- instances: seeds by label propagation (4-connected, as ``ndi.label``), grown by a seeded
  watershed flooded level by level (:data:`WATERSHED_LEVELS` levels of the boundary probability)
  instead of pixel by pixel, then the same small-object rule and ids 1..N in the order the CPU
  path gives them. Pixels the two floods order differently can change hands between touching
  objects, so :func:`device_postprocess_agrees` checks :func:`~.metrics.agreement`'s bar before
  ``postprocess="auto"`` uses this path.

The same code runs on the CPU, which is how it is tested without a GPU.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from .metrics import agreement
from .model import UNet
from .normalize import normalize_plane
from .options import POSTPROCESS_CHOICES
from .postprocess import BACKGROUND, BOUNDARY, INTERIOR, RELATIVE_MIN_SIZE, probabilities_to_instances, size_threshold

#: Levels of the boundary probability the watershed floods one after the other (more: closer to the CPU's order).
WATERSHED_LEVELS = 32
#: Propagation steps between two checks for convergence (each check waits for the device).
STEPS_PER_CHECK = 4


class Runner(Protocol):
    """What :func:`resolve_postprocess` needs of a fast network (:class:`~.optimize.FastModel`)."""

    device: torch.device

    def __call__(self, batch: torch.Tensor) -> torch.Tensor: ...


_SIGNED = {1: torch.uint8, 2: torch.int16, 4: torch.int32}


def _neighbour_max(values: torch.Tensor) -> torch.Tensor:
    """For ``(N, H, W)`` values, the largest of each pixel's four neighbours and itself (zeros outside)."""
    padded = F.pad(values, (1, 1, 1, 1))
    vertical = torch.maximum(padded[:, :-2, 1:-1], padded[:, 2:, 1:-1])
    horizontal = torch.maximum(padded[:, 1:-1, :-2], padded[:, 1:-1, 2:])
    return torch.maximum(values, torch.maximum(vertical, horizontal))


def _label_dtype(count: int) -> torch.dtype:
    return torch.int32 if count < 2**31 - 1 else torch.int64


def connected_components(mask: torch.Tensor) -> torch.Tensor:
    """4-connected components of an ``(N, H, W)`` bool mask, numbered for :func:`compact_ids`.

    A component's value is ``mask.numel()`` minus the flat index of its first pixel (raster order,
    plane by plane), so larger values come first, as ``ndi.label`` numbers them. Values spread by
    neighbour maxima and jump along the pixel each value names (pointer jumping), so a component
    is done in far fewer steps than its length.
    """
    total = mask.numel()
    dtype = _label_dtype(total + 1)
    values = torch.arange(total, 0, -1, dtype=dtype, device=mask.device).view(mask.shape)
    labels = torch.where(mask, values, 0)
    while True:
        before = labels
        for _ in range(STEPS_PER_CHECK):
            grown = torch.where(mask, _neighbour_max(labels), 0).view(-1)
            # the pixel a value names holds a value at least as large, of the same component
            labels = torch.where(grown > 0, grown[(total - grown).clamp(0, total - 1)], 0).view(mask.shape)
        if torch.equal(labels, before):
            return labels


def seeded_watershed(
    elevation: torch.Tensor, seeds: torch.Tensor, mask: torch.Tensor, levels: int = WATERSHED_LEVELS
) -> torch.Tensor:
    """Grow ``seeds`` over ``mask`` by flooding ``elevation`` (in [0, 1]) from low to high, ``levels`` steps.

    At level ``t`` every labelled pixel no higher than ``t`` passes its label to unlabelled 4-neighbours
    in the mask until nothing changes, as skimage's watershed pops pixels in order of height and
    labels their neighbours; within one level, nearer pixels come first. Unreachable pixels stay 0.
    Elevations above 1 start to spread at the last level.
    """
    labels = torch.where(mask, seeds, 0)
    open_ = mask & (seeds == 0)
    edges = torch.linspace(0, 1, levels + 1, device=elevation.device)[1:]
    edges[-1] = torch.inf  # the last level floods everything left
    first_level = torch.where(mask, torch.bucketize(elevation, edges), levels)  # where each pixel starts to spread
    used = torch.bincount(first_level.view(-1), minlength=levels + 1)[:levels].nonzero().view(-1).tolist()
    for level in used:  # a level no pixel starts to spread at changes nothing: skipped
        spreads = elevation <= edges[level]
        while True:
            before = labels
            for _ in range(STEPS_PER_CHECK):
                grown = _neighbour_max(torch.where(spreads, labels, 0))
                labels = torch.where(open_ & (labels == 0), grown, labels)
            if torch.equal(labels, before):
                break
    return labels


def compact_ids(labels: torch.Tensor, min_size: int, relative_min_size: float) -> torch.Tensor:
    """Drop small objects (:func:`~.postprocess.size_threshold` per plane) and number each plane's rest 1..N.

    ``labels`` come from :func:`connected_components` (then grown); ids follow the values from
    large to small, which is the order of the CPU path.
    """
    total = labels.numel()
    sizes = torch.bincount(labels.view(-1).long(), minlength=total + 1)
    sizes[0] = 0
    values = torch.nonzero(sizes).view(-1)
    counts = sizes[values].cpu().numpy()
    values_host = values.cpu().numpy()
    plane_pixels = labels[0].numel()
    planes = (total - values_host) // plane_pixels
    new_ids = np.zeros(len(values_host), np.int64)
    for plane in np.unique(planes):
        chosen = np.flatnonzero(planes == plane)[::-1]  # larger value = earlier first pixel
        keep = counts[chosen] >= size_threshold(counts[chosen], min_size, relative_min_size)
        new_ids[chosen[keep]] = np.arange(1, int(keep.sum()) + 1)
    lookup = torch.zeros(total + 1, dtype=labels.dtype, device=labels.device)
    lookup[values] = torch.from_numpy(new_ids).to(labels.device, labels.dtype)
    return lookup[labels.long()]


def instances_torch(
    probabilities: torch.Tensor, threshold: float = 0.5, min_size: int = 8,
    relative_min_size: float = RELATIVE_MIN_SIZE, levels: int = WATERSHED_LEVELS,
) -> torch.Tensor:
    """``(N, 3, H, W)`` background / interior / boundary probabilities -> ``(N, H, W)`` ids from 1 per plane.

    What :func:`~.postprocess.probabilities_to_instances` computes, on the probabilities' device
    (whole planes, never strips).
    """
    foreground = probabilities[:, BACKGROUND] < threshold
    seeds = connected_components((probabilities[:, INTERIOR] > threshold) & foreground)
    grown = seeded_watershed(probabilities[:, BOUNDARY].float(), seeds, foreground, levels)
    return compact_ids(grown, min_size, relative_min_size)


def classes_torch(probabilities: torch.Tensor, weights: Sequence[float] | None = None) -> torch.Tensor:
    """``(N, K, H, W)`` probabilities -> ``(N, H, W)`` classes 1..K (:func:`~.postprocess.probabilities_to_classes`)."""
    if weights is not None:
        scale = torch.as_tensor(weights, dtype=probabilities.dtype, device=probabilities.device)
        probabilities = probabilities * scale.view(1, -1, 1, 1)
    return probabilities.argmax(dim=1) + 1


def to_host(labels: torch.Tensor, dtype: np.dtype) -> np.ndarray:
    """``labels`` as a numpy array of ``dtype`` (uint8, uint16 or uint32); from a GPU through page-locked
    memory, asynchronously, so only the labels wait for the copy."""
    dtype = np.dtype(dtype)
    small = labels.to(_SIGNED[dtype.itemsize])  # torch has no unsigned 16/32-bit: same bits, viewed as unsigned
    if small.device.type == "cuda":
        host = torch.empty(small.shape, dtype=small.dtype, pin_memory=True)
        host.copy_(small, non_blocking=True)
        torch.cuda.current_stream(small.device).synchronize()
        small = host
    return small.numpy().view(dtype)


def device_labels(
    probabilities: list[torch.Tensor], mode: str, weights: Sequence[float] | None = None
) -> list[np.ndarray]:
    """Labels of ``(K, H, W)`` probability planes (same size, one device), computed together on their device."""
    if not probabilities:
        return []
    batch = torch.stack(probabilities)
    if mode == "instance":
        labels = to_host(instances_torch(batch), np.uint32)
    else:
        labels = to_host(classes_torch(batch, weights), np.uint8 if batch.shape[1] < 255 else np.uint16)
    return list(labels)


_VERDICTS: weakref.WeakKeyDictionary[UNet, bool] = weakref.WeakKeyDictionary()


def device_postprocess_agrees(
    runner: Runner, network: UNet, normalization: dict, planes: int = 2, size: int = 512
) -> bool:
    """True when this module's instances of ``runner``'s probabilities on a fixed probe (synthetic nuclei
    planes) meet :func:`~.metrics.agreement`'s bar against :func:`~.postprocess.probabilities_to_instances`.
    """
    from .synthetic import synthetic_nuclei_2d  # local: only the probe needs it

    low, high = normalization.get("low", 1.0), normalization.get("high", 99.8)
    inputs = [normalize_plane(synthetic_nuclei_2d((size, size), seed=seed)[0], low, high) for seed in range(planes)]
    batch = torch.from_numpy(np.stack(inputs)[:, None]).repeat(1, network.in_channels, 1, 1)
    probabilities = runner(batch)
    on_device = to_host(instances_torch(probabilities), np.uint32)
    on_cpu = np.stack([probabilities_to_instances(p) for p in probabilities.float().cpu().numpy()])
    return agreement(on_device, on_cpu, "instance")["same"]


def resolve_postprocess(choice: str, runner: Runner, network: UNet, mode: str, normalization: dict) -> str:
    """``"cpu"`` or ``"device"``: where a predictor post-processes. ``auto`` is the device on CUDA when
    the labels agree (class maps always do; instances: :func:`device_postprocess_agrees`, once per
    network and process), else the CPU. ``device`` on a CPU runs the torch operations there.
    """
    if choice not in POSTPROCESS_CHOICES:
        raise ValueError(f"postprocess must be one of {', '.join(POSTPROCESS_CHOICES)}, got {choice!r}")
    if choice != "auto":
        return choice
    if runner.device.type != "cuda":
        return "cpu"
    if mode != "instance":
        return "device"
    if network not in _VERDICTS:
        _VERDICTS[network] = device_postprocess_agrees(runner, network, normalization)
    return "device" if _VERDICTS[network] else "cpu"
