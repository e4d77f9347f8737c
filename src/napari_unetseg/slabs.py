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
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from .axes import AxesLayout, read_plane
from .predictor import BatchProgress, PlanePredictor, PlaneResult, halve_batch
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


@dataclass(frozen=True)
class StackPlan:
    """How one stack is segmented slab by slab: its resampling, its slabs, and what every slab's
    consensus is given (:func:`~.volume.iter_segment_volume`'s options, with the whole stack's levels)."""

    volume: VolumePlan
    slabs: tuple[Slab, ...]
    overlap: int
    options: dict[str, Any]

    @property
    def match_planes(self) -> int:
        """Planes next to a slab boundary on which objects are matched: the half of the overlap next to the core."""
        return max(1, self.overlap // 2)


@dataclass(frozen=True)
class SlabEdges:
    """What numbering a slab's objects needs of it (small next to its labels): the ids in its core, its
    labels on the planes just before the core and its core's last planes (up to ``match_planes`` each)."""

    ids: np.ndarray
    head: np.ndarray
    tail: np.ndarray


def plan_stack(
    planes: Any,
    plane_probabilities: PlaneProbabilities,
    plane_labels: Callable[[np.ndarray], np.ndarray],
    *,
    voxel_size: Sequence[float] | None = None,
    diameter: float | str | None = "auto",
    model_diameter: float = DEFAULT_MODEL_DIAMETER,
    normalization: tuple[float, float] = (1.0, 99.8),
    memory_budget: int = SLAB_BUDGET_BYTES,
) -> StackPlan:
    """The :class:`StackPlan` of the stack ``planes`` (``len`` and ``planes[z]``): the object size (measured
    when ``"auto"``) and the normalisation levels are measured once here, on the whole stack."""
    low, high = normalization
    if diameter == "auto":
        diameter = estimate_diameter(planes, plane_probabilities, plane_labels, low, high)
    size = None if diameter is None else float(diameter)
    volume = plan_volume(voxel_size, size, model_diameter)
    depth = len(planes)
    core, overlap = slab_layout((depth, *np.shape(planes[0])), volume, model_diameter, memory_budget)
    options = {"voxel_size": voxel_size, "diameter": size, "model_diameter": model_diameter,
               "normalization": normalization, "levels": stack_levels(planes, low, high)}
    return StackPlan(volume, tuple(plan_slabs(depth, core, overlap)), overlap, options)


def iter_segment_slab(
    planes: Any, slab: Slab, plan: StackPlan, plane_probabilities: PlaneProbabilities,
    plane_labels: Callable[[np.ndarray], np.ndarray],
) -> Generator[tuple[int, int], None, tuple[np.ndarray, SlabEdges]]:
    """One slab of ``planes`` segmented as a stack of its own: yields ``(network planes done, in all)`` and
    returns its core's labels (the slab's own ids) and its :class:`SlabEdges`."""
    stack = np.stack([np.asarray(planes[z], np.float32) for z in range(slab.start, slab.stop)])
    labels, _ = yield from iter_segment_volume(stack, plane_probabilities, plane_labels, **plan.options)
    core_start, core_stop = slab.core_start - slab.start, slab.core_stop - slab.start
    near = min(plan.match_planes, core_start)
    core = labels[core_start:core_stop]
    edges = SlabEdges(np.unique(core[core > 0]), labels[core_start - near : core_start].copy(),
                      core[max(0, len(core) - plan.match_planes) :].copy())
    return core, edges


def number_slab(edges: SlabEdges, tail_before: np.ndarray, objects: int) -> tuple[np.ndarray, int]:
    """A lookup from a slab's ids to the stack's, and the objects so far: a core object that overlaps an
    object of ``tail_before`` (the slab before's final labels on its core's last planes) near the boundary
    with IoU above :data:`MATCH_IOU` takes its id; the others get new ids after ``objects``, in order."""
    near = min(len(edges.head), len(tail_before))
    head, tail = edges.head[len(edges.head) - near :], tail_before[len(tail_before) - near :]
    top = int(max(edges.ids.max(initial=0), head.max(initial=0)))
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
    for label in edges.ids.tolist():
        if label in matched:
            mapping[label] = matched[label]
        else:
            objects += 1
            mapping[label] = objects
    return mapping, objects


def iter_segment_slabs(
    planes: Any,
    plane_probabilities: PlaneProbabilities,
    plane_labels: Callable[[np.ndarray], np.ndarray],
    write: PlaneWriter,
    **options: Any,
) -> Generator[tuple[int, int], None, tuple[int, VolumePlan]]:
    """3D objects of the stack ``planes`` (``len`` and ``planes[z]``, e.g. :class:`StackPlanes` or an array),
    slab by slab, handed to ``write``; returns ``(objects, plan)``.

    Yields ``(network planes done, planes in all)`` (the total estimated from the first slab).
    ``options`` are :func:`plan_stack`'s.
    """
    plan = plan_stack(planes, plane_probabilities, plane_labels, **options)
    done, objects = 0, 0
    tail = np.zeros((0, *np.shape(planes[0])), np.uint32)
    for count, slab in enumerate(plan.slabs):
        steps = iter_segment_slab(planes, slab, plan, plane_probabilities, plane_labels)
        while True:
            try:
                slab_done, slab_total = next(steps)
            except StopIteration as end:
                core, edges = end.value
                break
            yield done + slab_done, done + slab_total * (len(plan.slabs) - count)
        done += slab_total
        mapping, objects = number_slab(edges, tail, objects)
        write(slab.core_start, mapping[core])
        tail = mapping[edges.tail]
    return objects, plan.volume


def iter_segment_stacks(
    image: Any, layout: AxesLayout, predictor: PlanePredictor, out: Any, *,
    voxel_size: Sequence[float] | None = None, diameter: float | str | None = "auto", id_offset: int = 0,
    memory_budget: int | None = None,
) -> Iterator[BatchProgress]:
    """3D objects of each (Z, Y, X) stack of ``image`` (one per T index) into ``out``, ids continuing from
    stack to stack after ``id_offset``.

    Stacks are read a plane at a time and segmented in Z-slabs when their consensus would take more than
    ``memory_budget`` bytes (default :data:`SLAB_BUDGET_BYTES`). Yields after
    each network batch (``done`` / ``total`` count network planes; the total of later stacks is estimated
    from the first) and, as planes are written, with those planes.
    """
    options = stack_options(predictor, voxel_size, diameter, memory_budget)
    stacks = stack_indices(image.shape, layout)
    depth = len(stacks[0])
    next_id, before, total = int(id_offset), 0, 3 * depth  # total: network planes per stack (known after the first)
    z_axis = layout.plane_axes.index("Z")
    for count, indices in enumerate(stacks):
        written: list[PlaneResult] = []
        write = partial(_write_planes, out, z_axis, indices, next_id, written)
        objects = None
        while objects is None:  # again with half the batch after running out of memory
            steps = iter_segment_slabs(StackPlanes(image, layout, indices), predictor.probabilities,
                                       predictor.labels, write, **options)
            try:
                objects, total = yield from _as_progress(steps, before, len(stacks) - count, written)
            except Exception as exc:
                written.clear()
                yield BatchProgress(before, before + total * (len(stacks) - count), [], halve_batch(predictor, exc))
        before += total
        next_id += objects
        yield BatchProgress(before, before + total * (len(stacks) - count - 1), written[:])


def stack_options(
    predictor: PlanePredictor, voxel_size: Sequence[float] | None, diameter: float | str | None,
    memory_budget: int | None = None,
) -> dict[str, Any]:
    """:func:`plan_stack`'s options for ``predictor``'s model (its object size and normalisation)."""
    if predictor.network.in_channels != 1:
        raise ValueError("3D objects need a model with one input channel; use z_method='linking'")
    info = predictor.checkpoint.info
    return {
        "voxel_size": voxel_size, "diameter": diameter, "model_diameter": info.object_diameter or DEFAULT_MODEL_DIAMETER,
        "normalization": (info.normalization.get("low", 1.0), info.normalization.get("high", 99.8)),
        "memory_budget": SLAB_BUDGET_BYTES if memory_budget is None else int(memory_budget),
    }


def stack_indices(shape: Sequence[int], layout: AxesLayout) -> list[list[tuple[int, ...]]]:
    """The plane indices of each (Z, Y, X) stack of an image of ``shape`` (one stack per T index), Z in order."""
    z_axis = layout.plane_axes.index("Z")
    lead_shape = tuple(shape[layout.axes.index(a)] for a in layout.plane_axes if a != "Z")
    depth = shape[layout.axes.index("Z")]
    return [[lead[:z_axis] + (z,) + lead[z_axis:] for z in range(depth)] for lead in np.ndindex(*lead_shape)]


def _write_planes(
    out: Any, z_axis: int, indices: list[tuple[int, ...]], id_offset: int, written: list[PlaneResult],
    start: int, labels: np.ndarray,
) -> None:
    """Planes ``start, start + 1, ...`` of one stack (``indices``) into ``out``, ids after ``id_offset``;
    noted in ``written``."""
    labels = labels + np.uint32(id_offset) * (labels > 0).astype(np.uint32)
    index = indices[start]
    out[index[:z_axis] + (slice(start, start + len(labels)),) + index[z_axis + 1 :]] = labels
    written.extend(PlaneResult(indices[start + z], plane) for z, plane in enumerate(labels))


def _as_progress(
    steps: Generator[tuple[int, int], None, tuple[int, VolumePlan]], before: int, stacks_left: int,
    written: list[PlaneResult],
) -> Generator[BatchProgress, None, tuple[int, int]]:
    """:func:`iter_segment_slabs`'s steps as :class:`BatchProgress` after ``before`` planes, with the
    planes ``written`` since the last step; returns the stack's objects and the network planes it took."""
    total = 0
    while True:
        try:
            done, total = next(steps)
        except StopIteration as end:
            return end.value[0], total
        planes = written[:]
        written.clear()
        yield BatchProgress(before + done, before + total * stacks_left, planes)
