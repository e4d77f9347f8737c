"""3D objects of stacks larger than memory: the consensus method (:mod:`.volume`) in Z-slabs.

A stack whose consensus would take more than ``memory_budget`` bytes is cut along Z into slabs:
each slab's *core* planes are extended by an overlap on both sides (about one object diameter),
segmented as a stack of its own, and only the core is written. The object size and the
normalisation levels are measured once on the whole stack (read one plane at a time), so every
slab sees the same input as the whole stack would. An object of a slab that meets the planes just
before its core takes the id of the object there in the slab before (the one it overlaps with IoU
above :data:`MATCH_IOU`); the others get new ids, so ids run 1..N in order of first appearance.

Memory is bounded by one slab's consensus, plus the overlap planes of the slab before. The result
is the in-memory one when the stack fits in one slab; across slab boundaries it agrees with it
within :func:`~.metrics.agreement`'s bar (tested in tests/test_slabs.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .axes import AxesLayout, read_plane
from .size import DEFAULT_MODEL_DIAMETER
from .volume import (
    PlaneProbabilities,
    VolumePlan,
    estimate_diameter,
    iter_segment_volume,
    plan_volume,
    stack_levels,
)

#: Bytes one slab's consensus may take by default (the float32 stack and probabilities, rescaled).
SLAB_BUDGET_BYTES = 2 * 2**30
#: Bytes per voxel of the rescaled stack while it is segmented (the normalised volume, the summed and the
#: current view's class probabilities, interpolation temporaries, seeds and labels), as measured: peak
#: resident memory above the imports over the slab's voxels, ``benchmarks/large_stack.py --stitch-z``.
BYTES_PER_VOXEL = 72
#: An object of a slab is the object of the slab before that it overlaps with this IoU near the boundary.
MATCH_IOU = 0.5

#: ``write(start, labels)``: planes ``start, start + 1, ...`` of the stack get ``labels`` (ids 1..N so far).
PlaneWriter = Callable[[int, np.ndarray], None]


class StackPlanes:
    """One (Z, Y, X) stack of an image, read a plane at a time: ``len`` and ``[z]`` -> float32 (Y, X),
    channels averaged."""

    def __init__(self, image: Any, layout: AxesLayout, indices: Sequence[tuple[int, ...]]) -> None:
        self.image, self.layout, self.indices = image, layout, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, z: int) -> np.ndarray:
        return np.nanmean(read_plane(self.image, self.layout, self.indices[z]).astype(np.float32), axis=0)


@dataclass(frozen=True)
class Slab:
    """Planes ``start:stop`` are segmented; planes ``core_start:core_stop`` of them are kept."""

    start: int
    stop: int
    core_start: int
    core_stop: int


def plan_slabs(depth: int, core: int, overlap: int) -> list[Slab]:
    """Slabs whose cores (``core`` planes, the last one shorter) tile ``0:depth``, each extended by ``overlap``."""
    core = max(1, core)
    return [
        Slab(max(0, start - overlap), min(depth, start + core + overlap), start, min(depth, start + core))
        for start in range(0, depth, core)
    ]


def slab_layout(shape: Sequence[int], plan: VolumePlan, model_diameter: float, memory_budget: int) -> tuple[int, int]:
    """``(core planes, overlap planes)`` for a ``(Z, Y, X)`` stack: the whole stack when its consensus fits
    ``memory_budget``, else cores as deep as fit, overlapped by about one object diameter (at least as deep)."""
    depth = int(shape[0])
    plane_bytes = BYTES_PER_VOXEL * math.prod(plan.zoom) * int(shape[1]) * int(shape[2])
    if plane_bytes * depth <= memory_budget:
        return depth, 0
    diameter = plan.diameter if plan.diameter is not None else model_diameter
    overlap = math.ceil(diameter * plan.zoom[1] / plan.zoom[0]) + 2  # one object diameter in input Z planes
    core = max(overlap, int(memory_budget // plane_bytes) - 2 * overlap)
    return min(core, depth), overlap


def iter_segment_slabs(
    planes: Any,
    plane_probabilities: PlaneProbabilities,
    plane_labels: Callable[[np.ndarray], np.ndarray],
    write: PlaneWriter,
    *,
    voxel_size: Sequence[float] | None = None,
    diameter: float | str | None = "auto",
    model_diameter: float = DEFAULT_MODEL_DIAMETER,
    normalization: tuple[float, float] = (1.0, 99.8),
    memory_budget: int = SLAB_BUDGET_BYTES,
) -> Generator[tuple[int, int], None, tuple[int, VolumePlan]]:
    """3D objects of the stack ``planes`` (``len`` and ``planes[z]``, e.g. :class:`StackPlanes` or an array),
    slab by slab, handed to ``write``; returns ``(objects, plan)``.

    Yields ``(network planes done, planes in all)`` (the total estimated from the first slab). The
    other arguments are :func:`~.volume.iter_segment_volume`'s.
    """
    low, high = normalization
    if diameter == "auto":
        diameter = estimate_diameter(planes, plane_probabilities, plane_labels, low, high)
    size = None if diameter is None else float(diameter)
    plan = plan_volume(voxel_size, size, model_diameter)
    depth = len(planes)
    shape = (depth, *np.shape(planes[0]))
    core, overlap = slab_layout(shape, plan, model_diameter, memory_budget)
    options = {"voxel_size": voxel_size, "diameter": size, "model_diameter": model_diameter,
               "normalization": normalization, "levels": stack_levels(planes, low, high)}
    slabs = plan_slabs(depth, core, overlap)
    done, objects, tail = 0, 0, np.zeros((0, *shape[1:]), np.uint32)
    for count, slab in enumerate(slabs):
        stack = np.stack([np.asarray(planes[z], np.float32) for z in range(slab.start, slab.stop)])
        steps = iter_segment_volume(stack, plane_probabilities, plane_labels, **options)
        while True:
            try:
                slab_done, slab_total = next(steps)
            except StopIteration as end:
                labels = end.value[0]
                break
            yield done + slab_done, done + slab_total * (len(slabs) - count)
        done += slab_total
        core_labels = labels[slab.core_start - slab.start : slab.core_stop - slab.start]
        near = min(len(tail), slab.core_start - slab.start, max(1, overlap // 2))  # planes matched: the half of
        head = labels[slab.core_start - slab.start - near : slab.core_start - slab.start]  # the overlap next to the core
        mapping, objects = _global_ids(core_labels, head, tail[len(tail) - near :], objects)
        kept = mapping[core_labels]
        write(slab.core_start, kept)
        tail = kept[max(0, len(kept) - overlap) :]
    return objects, plan


def _global_ids(core: np.ndarray, head: np.ndarray, tail: np.ndarray, objects: int) -> tuple[np.ndarray, int]:
    """A lookup from a slab's ids to the stack's, and the objects so far: ids of ``core`` that overlap an
    object of ``tail`` (the slab before's final labels on the planes of ``head``) with IoU above
    :data:`MATCH_IOU` take its id, the others new ids after ``objects`` in order."""
    top = int(max(core.max(initial=0), head.max(initial=0)))
    mapping = np.zeros(top + 1, np.uint32)
    matched: dict[int, int] = {}
    if head.size and tail.size:
        both = (head > 0) & (tail > 0)
        pairs, shared = np.unique(np.stack([head[both], tail[both]]), axis=1, return_counts=True)
        ours = np.bincount(head.ravel(), minlength=top + 1)
        theirs = dict(zip(*np.unique(tail[tail > 0], return_counts=True)))
        for (mine, other), common in zip(pairs.T.tolist(), shared.tolist()):
            if common / (ours[mine] + theirs[other] - common) > MATCH_IOU:
                matched[mine] = other
    for label in np.unique(core[core > 0]).tolist():
        if label in matched:
            mapping[label] = matched[label]
        else:
            objects += 1
            mapping[label] = objects
    return mapping, objects
