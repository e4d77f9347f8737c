"""3D objects from the 2D U-Net: one id per nucleus in a (Z, Y, X) stack.

Linking the objects of each XY plane to the plane before (:func:`~.postprocess.stitch_slices`)
keeps every out-of-focus fragment as an object of its own and chains packed nuclei together.
:func:`segment_volume` instead asks the network about every voxel three times:

1. **Size.** The stack is rescaled so its objects have the diameter the model was trained on
   (:func:`estimate_diameter` measures them from a first pass over a few XY planes when the size
   is not given) and so its voxels are cubes (``voxel_size``, e.g. from the layer's scale).
2. **Consensus.** The rescaled stack, normalised once as a whole (so a dim out-of-focus plane
   stays dim), goes through the network as XY, XZ and YZ planes; the three class probabilities
   are averaged. Glow that looks like a nucleus in one XY plane does not look like one from the
   side. To save time, XY planes are the input's own Z planes (their probabilities interpolated
   along Z when the stack is stretched), and XZ / YZ planes are run every :func:`side_stride` rows
   and columns, interpolated in between.
3. **3D instances.** The averaged probabilities are smoothed a little (:data:`SMOOTHING_SIGMA`);
   seeds are connected regions where the interior probability is confident
   (:data:`SEED_THRESHOLD`); a 3D watershed grows them over the foreground. Objects
   smaller than :data:`RELATIVE_MIN_VOLUME` of the median volume, or spanning fewer than
   :data:`MIN_SLICES` slices, are dropped and the rest numbered 1..N.

The labels are brought back to the stack's shape (:func:`labels_at_input`). The whole stack is held in memory (float32
probabilities of the rescaled stack, three classes).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import watershed

from .normalize import apply_levels, normalize_plane, percentile_levels
from .postprocess import BACKGROUND, BOUNDARY, INTERIOR, drop_small_objects
from .size import (
    DEFAULT_MODEL_DIAMETER,
    PlaneProbabilities,
    measure_planes,
    resize_labels,
    shrink_factor,
)

#: Averaged (and smoothed) interior probability that makes a seed; a higher bar than a single plane's
#: 0.5, because consensus probabilities of glow and of the gaps between nuclei sit around 0.5.
SEED_THRESHOLD = 0.6
#: Gaussian sigma (voxels of the rescaled stack, where objects are about the model's size) applied to
#: the averaged probabilities: on noisy, dim stacks the interior breaks into speckles, each of which
#: would seed an object (synthetic dim stack: 550 seeds for 32 nuclei unsmoothed, 42 smoothed).
SMOOTHING_SIGMA = 1.0
#: Objects below this fraction of the median object volume are dropped as fragments.
RELATIVE_MIN_VOLUME = 0.25
#: Objects spanning fewer slices than this (in the input's Z) are dropped.
MIN_SLICES = 2
#: XZ / YZ planes are run every this many rows / columns times the Z step (see :func:`side_stride`); the
#: probabilities vary on the scale of the objects (~20 px after rescaling), so rows in between are interpolated.
#: Measured on the synthetic stacks of benchmarks/accuracy_3d.py: 2 (vs 1) kept the 3D F1 (isotropic mean 0.748
#: vs 0.745, Z step 3x 0.826 vs 0.811) with a third fewer network pixels on isotropic stacks.
SIDE_STRIDE = 2
#: ... but never fewer side planes than this many per object diameter: the rows between side planes are
#: interpolated across Y (XZ planes) or X (YZ planes), where the stack has its full detail. Two touching
#: spheres of 18 px at a Z step of 4 px (stride 8 from the Z step alone) kept 93 % of each sphere; a side
#: plane every 4 px kept 97 % (every px: 99.8 %).
SIDE_PLANES_PER_OBJECT = 4

@dataclass(frozen=True)
class VolumePlan:
    """How a stack is resampled before the network: ``zoom`` per axis (Z, Y, X) and why."""

    zoom: tuple[float, float, float]
    diameter: float | None  # measured or given object diameter in input XY pixels (None: not known)

    @property
    def resamples(self) -> bool:
        return any(abs(z - 1.0) > 1e-3 for z in self.zoom)


def plan_volume(
    voxel_size: Sequence[float] | None, diameter: float | None, model_diameter: float = DEFAULT_MODEL_DIAMETER
) -> VolumePlan:
    """Zoom factors that make voxels cubic and, for objects larger than the model's size, shrink them to it."""
    z_step, y_step, x_step = (1.0, 1.0, 1.0) if voxel_size is None else (float(v) for v in voxel_size)
    if min(z_step, y_step, x_step) <= 0:
        raise ValueError(f"voxel sizes must be positive, got {tuple(voxel_size or ())}")
    xy_zoom = shrink_factor(diameter, model_diameter)
    pixel = min(y_step, x_step)
    zoom = (xy_zoom * z_step / pixel, xy_zoom * y_step / pixel, xy_zoom * x_step / pixel)
    return VolumePlan(zoom, diameter)


def side_stride(z_stretch: float, object_size: float) -> int:
    """Every how many rows and columns an XZ / YZ plane is run: :data:`SIDE_STRIDE` times the input's Z
    step in (rescaled) XY pixels, ``z_stretch`` (1 when isotropic), at most a :data:`SIDE_PLANES_PER_OBJECT`-th
    of the objects' diameter ``object_size`` (rescaled pixels).

    A side plane of a stack stretched along Z holds no more detail in Z than the stack's own slices,
    which is what the Z step sets; the rows and columns skipped are interpolated, and the object size
    bounds what that interpolation may blur.
    """
    return max(1, min(round(SIDE_STRIDE * z_stretch), int(object_size // SIDE_PLANES_PER_OBJECT)))


def _consensus(
    planes_xy: np.ndarray, volume: np.ndarray, plane_probabilities: PlaneProbabilities, object_size: float,
    batch: int = 8,
) -> Generator[tuple[int, int], None, np.ndarray]:
    """Class probabilities ``(K, Z, Y, X)`` of ``volume`` averaged over its XY, XZ and YZ planes.

    ``planes_xy`` are the input's own Z planes at ``volume``'s XY size: their probabilities are
    interpolated along Z to ``volume``'s depth, rather than running the network on interpolated
    planes. XZ and YZ planes are run every :func:`side_stride` rows / columns and interpolated in
    between (see :func:`side_stride`; ``object_size``: the objects' diameter in ``volume``'s pixels).
    Yields ``(planes done, planes in all)`` after each network batch.
    """
    depth, stride = planes_xy.shape[0], side_stride(volume.shape[0] / planes_xy.shape[0], object_size)
    centres = (np.arange(depth) + 0.5) * (volume.shape[0] / depth) - 0.5  # as ndi.zoom(grid_mode=True) maps Z
    runs = [(planes_xy, 0, list(range(depth)), centres)]
    for axis in (1, 2):
        indices = _sampled(volume.shape[axis], stride)
        runs.append((volume, axis, indices, np.asarray(indices, np.float64)))
    done, planes = 0, sum(len(run[2]) for run in runs)
    yield done, planes
    total: np.ndarray | None = None
    for source, axis, indices, positions in runs:
        results: list[np.ndarray] = []
        for start in range(0, len(indices), batch):
            chosen = indices[start : start + batch]
            results += plane_probabilities([np.take(source, i, axis=axis)[np.newaxis] for i in chosen])
            done += len(chosen)
            yield done, planes
        known = np.stack(results, axis=axis + 1).astype(np.float32, copy=False)
        del results
        along = _fill(known, positions, volume.shape[axis], axis)
        del known
        if total is None:
            total = along
        else:
            total += along
        del along
    assert total is not None
    total /= 3.0
    return total


def _sampled(length: int, stride: int) -> list[int]:
    """Every ``stride``-th index of ``length``, always with the last one (nothing is extrapolated)."""
    indices = list(range(0, length, stride))
    return indices if indices[-1] == length - 1 else indices + [length - 1]


def _fill(probabilities: np.ndarray, positions: np.ndarray, length: int, axis: int) -> np.ndarray:
    """``(K, ...)`` probabilities known at ``positions`` (increasing) along spatial ``axis`` ->
    linearly interpolated at ``0 .. length - 1`` there (held constant beyond the first and last)."""
    if len(positions) == length and np.array_equal(positions, np.arange(length)):
        return probabilities
    if len(positions) == 1:
        return np.repeat(probabilities, length, axis=axis + 1)
    where = np.arange(length, dtype=np.float64)
    upper = np.clip(np.searchsorted(positions, where, side="right"), 1, len(positions) - 1)
    lower = upper - 1
    weight = np.clip((where - positions[lower]) / (positions[upper] - positions[lower]), 0.0, 1.0)
    shape = [1] * probabilities.ndim
    shape[axis + 1] = length
    weight = weight.astype(np.float32).reshape(shape)
    filled = np.take(probabilities, lower, axis=axis + 1)
    step = np.take(probabilities, upper, axis=axis + 1)
    step -= filled
    step *= weight
    filled += step
    return filled


def instances_3d(probabilities: np.ndarray, z_zoom: float = 1.0) -> np.ndarray:
    """``(3, Z, Y, X)`` averaged probabilities -> uint32 3D objects numbered 1..N, fragments dropped.

    ``z_zoom``: how much the volume was stretched along Z, so :data:`MIN_SLICES` counts input slices.
    ``probabilities`` (float32) are smoothed in place, one class at a time, to hold no second copy.
    """
    for probability in probabilities:
        probability[...] = ndi.gaussian_filter(probability, SMOOTHING_SIGMA)
    foreground = probabilities[BACKGROUND] < 0.5
    seeds, count = ndi.label((probabilities[INTERIOR] > SEED_THRESHOLD) & foreground)
    if count == 0:
        return np.zeros(foreground.shape, np.uint32)
    labels = watershed(probabilities[BOUNDARY], markers=seeds, mask=foreground).astype(np.uint32)
    too_thin = [
        i + 1 for i, box in enumerate(ndi.find_objects(labels))
        if box is not None and (box[0].stop - box[0].start) < MIN_SLICES * z_zoom
    ]
    if too_thin:
        labels[np.isin(labels, too_thin)] = 0
    return drop_small_objects(labels, 8, RELATIVE_MIN_VOLUME)


def labels_at_input(labels: np.ndarray, background: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """3D objects of the rescaled volume -> the input's ``shape``, each input plane taken at its centre.

    An input plane's centre usually falls between two volume planes (at a Z stretch of 2, a quarter of
    a volume plane from each), and a nearest-neighbour pick would always take the same one of the two,
    adding voxels to one end of every object and taking them from the other. So whether a voxel is
    inside an object is decided by the ``background`` probability interpolated to the plane's centre, and
    its id is the nearer volume plane's, else the other's. XY is then resized by nearest neighbour.
    """
    depth, volume_depth = shape[0], labels.shape[0]
    centres = np.clip((np.arange(depth) + 0.5) * (volume_depth / depth) - 0.5, 0, volume_depth - 1)
    planes = np.empty((depth, *labels.shape[1:]), labels.dtype)
    for z, centre in enumerate(centres):
        below = int(np.floor(centre))
        above, weight = min(below + 1, volume_depth - 1), float(centre - below)
        if weight < 1e-6:
            planes[z] = labels[below]
            continue
        near, far = (below, above) if weight <= 0.5 else (above, below)
        inside = (1.0 - weight) * background[below] + weight * background[above] < 0.5
        ids = np.where(labels[near] > 0, labels[near], labels[far])
        planes[z] = np.where(inside, ids, 0)
    return planes if planes.shape == tuple(shape) else resize_labels(planes, tuple(shape))


def estimate_diameter(
    stack: Any, plane_probabilities: PlaneProbabilities, plane_labels: Callable[[np.ndarray], np.ndarray],
    low: float = 1.0, high: float = 99.8,
) -> float | None:
    """Median equivalent diameter (pixels) of the objects the network finds in a few XY planes of ``stack``
    (``len`` and ``stack[z]``), or None: :func:`~.size.measure_planes`, each plane normalised on its own
    as in 2D segmentation (the brightest planes are in focus, where nuclei are at their full size)."""

    def prepare(plane: np.ndarray) -> np.ndarray | None:
        normalised = normalize_plane(plane[0], low, high)
        return None if normalised is None else normalised[np.newaxis]

    def read(z: int, window: tuple[slice, slice]) -> np.ndarray:
        return np.asarray(stack[z])[window][np.newaxis]

    return measure_planes(len(stack), np.shape(stack[0]), read, prepare, plane_probabilities, plane_labels)


def stack_levels(stack: Any, low: float = 1.0, high: float = 99.8) -> tuple[float, float] | None:
    """The values mapped to 0 and 1 when a stack is normalised as a whole: its ``low`` / ``high`` percentiles.

    ``stack`` is anything with ``len`` and ``stack[z]`` -> a plane, read one plane at a time: every voxel
    up to 2**22 of them, else each plane's every n-th (the same voxels in memory and in Z-slabs).
    """
    depth = len(stack)
    if depth == 0:
        return None
    first = np.asarray(stack[0])
    step = max(1, -(-depth * first.size // 2**22))
    sample = np.concatenate([np.asarray(stack[z], np.float32).ravel()[::step] for z in range(depth)])
    return percentile_levels(sample, low, high)


def iter_segment_volume(
    stack: np.ndarray,
    plane_probabilities: PlaneProbabilities,
    plane_labels: Callable[[np.ndarray], np.ndarray],
    *,
    voxel_size: Sequence[float] | None = None,
    diameter: float | str | None = "auto",
    model_diameter: float = DEFAULT_MODEL_DIAMETER,
    normalization: tuple[float, float] = (1.0, 99.8),
    levels: tuple[float, float] | None = None,
) -> Generator[tuple[int, int], None, tuple[np.ndarray, VolumePlan]]:
    """3D object ids (uint32, 1..N, the stack's shape) of a ``(Z, Y, X)`` stack, and the resampling used.

    Yields ``(planes done, planes in all)`` after each network batch (so a GUI shows progress and
    can stop it there) and returns ``(labels, plan)``. ``plane_probabilities`` runs the network on
    normalised ``(1, H, W)`` planes of one size (and may raise to cancel); ``plane_labels`` turns
    one plane's probabilities into 2D objects (for the size estimate). ``diameter``: the objects'
    diameter in XY pixels, ``"auto"`` to measure it, or None to keep the stack's scale. ``levels``:
    the values mapped to 0 and 1 (default: :func:`stack_levels` of ``stack``; a Z-slab gets its whole
    stack's). See the module docstring for the method.
    """
    stack = np.asarray(stack)
    if stack.ndim != 3:
        raise ValueError(f"3D objects need a (Z, Y, X) stack, got shape {stack.shape}")
    low, high = normalization
    if diameter == "auto":
        diameter = estimate_diameter(stack, plane_probabilities, plane_labels, low, high)
    plan = plan_volume(voxel_size, None if diameter is None else float(diameter), model_diameter)
    levels = stack_levels(stack, low, high) if levels is None else levels
    if levels is None:  # no contrast anywhere
        return np.zeros(stack.shape, np.uint32), plan
    normalised = apply_levels(stack.astype(np.float32), levels)
    planes_xy, volume = normalised, normalised
    if plan.resamples:
        planes_xy = _zoom(normalised, (1.0, *plan.zoom[1:]))
        volume = _zoom(planes_xy, (plan.zoom[0], 1.0, 1.0))
    object_size = model_diameter if plan.diameter is None else plan.diameter * plan.zoom[1]  # rescaled pixels
    probabilities = yield from _consensus(planes_xy, volume, plane_probabilities, object_size)
    labels = instances_3d(probabilities, plan.zoom[0])
    if labels.shape != stack.shape:
        labels = labels_at_input(labels, probabilities[BACKGROUND], stack.shape)
    return drop_small_objects(labels, 1), plan


def segment_volume(
    stack: np.ndarray, plane_probabilities: PlaneProbabilities, plane_labels: Callable[[np.ndarray], np.ndarray],
    **options: Any,
) -> tuple[np.ndarray, VolumePlan]:
    """:func:`iter_segment_volume` run to the end: ``(labels, plan)``."""
    return run_to_end(iter_segment_volume(stack, plane_probabilities, plane_labels, **options))


def run_to_end(steps: Generator[Any, None, Any]) -> Any:
    """Run an engine's generator to its end, its progress unseen, and return what it returns."""
    while True:
        try:
            next(steps)
        except StopIteration as end:
            return end.value


def _zoom(volume: np.ndarray, zoom: Sequence[float]) -> np.ndarray:
    """``volume`` resampled (linearly, voxel centres mapped onto each other) by ``zoom``; itself at zoom 1."""
    if all(abs(z - 1.0) <= 1e-3 for z in zoom):
        return volume
    return ndi.zoom(volume, zoom, order=1, grid_mode=True, mode="nearest")
