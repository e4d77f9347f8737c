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
   side.
3. **3D instances.** The averaged probabilities are smoothed a little (:data:`SMOOTHING_SIGMA`);
   seeds are connected regions where the interior probability is confident
   (:data:`SEED_THRESHOLD`); a 3D watershed grows them over the foreground. Objects
   smaller than :data:`RELATIVE_MIN_VOLUME` of the median volume, or spanning fewer than
   :data:`MIN_SLICES` slices, are dropped and the rest numbered 1..N.

The labels are resized back to the stack's shape. The whole stack is held in memory (float32
probabilities of the rescaled stack, three classes).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import watershed

from .axes import AxesLayout, read_plane
from .inference import BatchProgress, PlanePredictor, PlaneResult, halve_batch
from .normalize import normalize_plane
from .postprocess import BACKGROUND, BOUNDARY, INTERIOR, drop_small_objects

#: The object diameter (pixels) a model expects when its checkpoint does not say: the middle of the
#: built-in nuclei model's training sizes (radius 4-30 px, log-uniform), where its 2D F1 is flat (16-30 px).
DEFAULT_MODEL_DIAMETER = 20.0
#: Stacks are only shrunk, never enlarged: enlarging small nuclei lowered the F1 (measured on synthetic
#: nuclei of radius 6: 0.59 -> 0.08 at 2x); and only when the objects are this much larger than the model's size.
SHRINK_ABOVE = 1.5
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
#: XY planes used by :func:`estimate_diameter` (spread over the stack).
DIAMETER_PLANES = 6

PlaneProbabilities = Callable[[list[np.ndarray]], list[np.ndarray]]


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
    xy_zoom = 1.0
    if diameter is not None and diameter > SHRINK_ABOVE * model_diameter:
        xy_zoom = model_diameter / diameter
    pixel = min(y_step, x_step)
    zoom = (xy_zoom * z_step / pixel, xy_zoom * y_step / pixel, xy_zoom * x_step / pixel)
    return VolumePlan(zoom, diameter)


def _consensus(
    volume: np.ndarray, plane_probabilities: PlaneProbabilities, batch: int = 8
) -> Generator[tuple[int, int], None, np.ndarray]:
    """Class probabilities ``(K, Z, Y, X)`` averaged over the XY, XZ and YZ planes of a normalised volume.

    Yields ``(planes done, planes in all)`` after each network batch.
    """
    total: np.ndarray | None = None
    done, planes = 0, sum(volume.shape)
    yield done, planes
    for axis in (0, 1, 2):
        results: list[np.ndarray] = []
        for start in range(0, volume.shape[axis], batch):
            stop = min(start + batch, volume.shape[axis])
            results += plane_probabilities([np.take(volume, i, axis=axis)[np.newaxis] for i in range(start, stop)])
            done += stop - start
            yield done, planes
        along = np.stack(results, axis=axis + 1).astype(np.float32)
        total = along if total is None else total + along
    assert total is not None
    return total / 3.0


def instances_3d(probabilities: np.ndarray, z_zoom: float = 1.0) -> np.ndarray:
    """``(3, Z, Y, X)`` averaged probabilities -> uint32 3D objects numbered 1..N, fragments dropped.

    ``z_zoom``: how much the volume was stretched along Z, so :data:`MIN_SLICES` counts input slices.
    """
    probabilities = np.stack([ndi.gaussian_filter(p, SMOOTHING_SIGMA) for p in probabilities])
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


def estimate_diameter(
    stack: np.ndarray, plane_probabilities: PlaneProbabilities, plane_labels: Callable[[np.ndarray], np.ndarray],
    low: float = 1.0, high: float = 99.8,
) -> float | None:
    """Median equivalent diameter (pixels) of the objects the network finds in a few XY planes, or None.

    The planes are the :data:`DIAMETER_PLANES` brightest of the stack (in focus, where nuclei
    are at their full size), each normalised on its own as in 2D segmentation.
    """
    brightness = np.array([np.percentile(plane, 99) for plane in stack])
    chosen = sorted(np.argsort(-brightness, kind="stable")[:DIAMETER_PLANES].tolist())
    prepared = [normalize_plane(stack[z], low, high) for z in chosen]
    ready = [p[np.newaxis] for p in prepared if p is not None]
    if not ready:
        return None
    areas = []
    for probabilities in plane_probabilities(ready):
        sizes = np.bincount(plane_labels(probabilities).ravel())[1:]
        areas.append(sizes[sizes > 0])
    found = np.concatenate(areas)
    if found.size == 0:
        return None
    return float(2.0 * np.sqrt(np.median(found) / np.pi))


def normalize_volume(volume: np.ndarray, low: float = 1.0, high: float = 99.8) -> np.ndarray:
    """The whole volume's ``low`` / ``high`` percentiles -> 0 / 1, as :func:`~.normalize.normalize_plane` does per plane."""
    normalised = normalize_plane(volume.reshape(volume.shape[0], -1), low, high)
    if normalised is None:
        return np.zeros(volume.shape, np.float32)
    return normalised.reshape(volume.shape)


def iter_segment_volume(
    stack: np.ndarray,
    plane_probabilities: PlaneProbabilities,
    plane_labels: Callable[[np.ndarray], np.ndarray],
    *,
    voxel_size: Sequence[float] | None = None,
    diameter: float | str | None = "auto",
    model_diameter: float = DEFAULT_MODEL_DIAMETER,
    normalization: tuple[float, float] = (1.0, 99.8),
) -> Generator[tuple[int, int], None, tuple[np.ndarray, VolumePlan]]:
    """3D object ids (uint32, 1..N, the stack's shape) of a ``(Z, Y, X)`` stack, and the resampling used.

    Yields ``(planes done, planes in all)`` after each network batch (so a GUI shows progress and
    can stop it there) and returns ``(labels, plan)``. ``plane_probabilities`` runs the network on
    normalised ``(1, H, W)`` planes of one size (and may raise to cancel); ``plane_labels`` turns
    one plane's probabilities into 2D objects (for the size estimate). ``diameter``: the objects'
    diameter in XY pixels, ``"auto"`` to measure it, or None to keep the stack's scale. See the
    module docstring for the method.
    """
    stack = np.asarray(stack)
    if stack.ndim != 3:
        raise ValueError(f"3D objects need a (Z, Y, X) stack, got shape {stack.shape}")
    low, high = normalization
    if diameter == "auto":
        diameter = estimate_diameter(stack, plane_probabilities, plane_labels, low, high)
    plan = plan_volume(voxel_size, None if diameter is None else float(diameter), model_diameter)
    volume = normalize_volume(stack.astype(np.float32), low, high)
    if plan.resamples:
        volume = ndi.zoom(volume, plan.zoom, order=1, grid_mode=True, mode="nearest")
    probabilities = yield from _consensus(volume, plane_probabilities)
    labels = instances_3d(probabilities, plan.zoom[0])
    if labels.shape != stack.shape:
        labels = _resize_labels(labels, stack.shape)
    return drop_small_objects(labels, 1), plan


def segment_volume(
    stack: np.ndarray, plane_probabilities: PlaneProbabilities, plane_labels: Callable[[np.ndarray], np.ndarray],
    **options: Any,
) -> tuple[np.ndarray, VolumePlan]:
    """:func:`iter_segment_volume` run to the end: ``(labels, plan)``."""
    steps = iter_segment_volume(stack, plane_probabilities, plane_labels, **options)
    while True:
        try:
            next(steps)
        except StopIteration as end:
            return end.value


def iter_segment_stacks(
    image: Any, layout: AxesLayout, predictor: PlanePredictor, out: Any, *,
    voxel_size: Sequence[float] | None = None, diameter: float | str | None = "auto", id_offset: int = 0,
) -> Iterator[BatchProgress]:
    """3D objects of each (Z, Y, X) stack of ``image`` (one per T index) into ``out``, ids continuing from
    stack to stack after ``id_offset``.

    Yields after each network batch (``done`` / ``total`` count network planes; the total of later
    stacks is estimated from the first) and, once a stack is written, with its Z planes.
    """
    if predictor.network.in_channels != 1:
        raise ValueError("3D objects need a model with one input channel; use z_method='linking'")
    info = predictor.checkpoint.info
    options = {
        "voxel_size": voxel_size, "diameter": diameter, "model_diameter": info.object_diameter or DEFAULT_MODEL_DIAMETER,
        "normalization": (info.normalization.get("low", 1.0), info.normalization.get("high", 99.8)),
    }
    z_axis = layout.plane_axes.index("Z")
    lead_shape = tuple(image.shape[layout.axes.index(a)] for a in layout.plane_axes if a != "Z")
    depth, stacks = image.shape[layout.axes.index("Z")], max(1, int(np.prod(lead_shape)))
    next_id, before, total = int(id_offset), 0, 3 * depth  # total: network planes per stack (known after the first)
    for count, lead in enumerate(np.ndindex(*lead_shape)):
        indices = [lead[:z_axis] + (z,) + lead[z_axis:] for z in range(depth)]
        stack = np.stack([np.nanmean(read_plane(image, layout, i).astype(np.float32), axis=0) for i in indices])
        labels = None
        while labels is None:  # again with half the batch after running out of memory
            steps = iter_segment_volume(stack, predictor.probabilities, predictor.labels, **options)
            try:
                labels, total = yield from _as_progress(steps, before, stacks - count)
            except Exception as exc:
                yield BatchProgress(before, before + total * (stacks - count), [], halve_batch(predictor, exc))
        before += total
        labels[labels > 0] += np.uint32(next_id)
        next_id = max(next_id, int(labels.max()))
        out[lead[:z_axis] + (slice(None),) + lead[z_axis:]] = labels
        planes = [PlaneResult(index, labels[z]) for z, index in enumerate(indices)]
        yield BatchProgress(before, before + total * (stacks - count - 1), planes)


def _as_progress(
    steps: Generator[tuple[int, int], None, tuple[np.ndarray, VolumePlan]], before: int, stacks_left: int
) -> Generator[BatchProgress, None, tuple[np.ndarray, int]]:
    """:func:`iter_segment_volume`'s steps as :class:`BatchProgress` after ``before`` planes; returns
    the labels and the planes this stack took."""
    total = 0
    while True:
        try:
            done, total = next(steps)
        except StopIteration as end:
            return end.value[0], total
        yield BatchProgress(before + done, before + total * stacks_left)


def _resize_labels(labels: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Nearest-neighbour resize of ``labels`` to ``shape`` (voxel centres mapped onto each other)."""
    coordinates = [
        np.minimum(((np.arange(n) + 0.5) * (m / n)).astype(np.intp), m - 1) for n, m in zip(shape, labels.shape)
    ]
    return labels[np.ix_(*coordinates)]
