"""Array in, labels out: every 2D plane of an image stack through the U-Net, batch by batch.

The engine is a generator (:func:`iter_segment`) that yields after each batch, so a GUI worker
can show progress and stop at any yield; :func:`segment` runs it to the end for scripts and
the command line. Images may be numpy, dask or zarr arrays: only one batch of planes is read
at a time, and with ``segment(..., out=zarr_array)`` only one batch of labels is held, so stacks
larger than memory stream from disk to disk. :mod:`.distributed` runs the same engine on a cluster.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from .axes import AxesLayout, labels_spec, parse_axes, read_plane
from .checkpoint import Checkpoint
from .engine_settings import EngineSettings, settings_with
from .normalize import check_image
from .postprocess import link_to_previous
from .postprocess_torch import device_labels
from .predictor import (
    BatchProgress,
    PlanePredictor,
    PlaneResult,
    SegmentationCancelled,
    halve_batch,
    planes_per_batch,
    resolve_checkpoint,
)
from .size import ZoomedImage, plan_size, resize_labels
from .slabs import iter_segment_stacks

#: How ``segment(stitch_z=True)`` makes 3D objects: XY/XZ/YZ consensus (:mod:`.volume`) or plane-to-plane linking.
Z_METHODS = ("consensus", "linking")
logger = logging.getLogger(__name__)


def predict_planes(
    image: Any, layout: AxesLayout, predictor: PlanePredictor, order: Sequence[tuple[int, ...]]
) -> Iterator[list[PlaneResult]]:
    """Labels of the planes in ``order``, one network batch at a time; instance ids start at 1 in every plane.

    Batches start at multiples of :func:`planes_per_batch` within ``order``, so a caller that cuts
    the planes into runs of such multiples (e.g. cluster tasks) feeds the network identical batches.
    The post-processing of one batch runs in a second thread while the network computes the next.
    """
    height, width = image.shape[layout.axes.index("Y")], image.shape[layout.axes.index("X")]
    plan = predictor.plan(height, width)
    per_batch = planes_per_batch(predictor.network, height, width, predictor.batch_size, predictor.tile_size)
    with ThreadPoolExecutor(max_workers=1) as post_processing:
        pending: Future[list[PlaneResult]] | None = None
        for start in range(0, len(order), per_batch):
            indices = order[start : start + per_batch]
            prepared = [predictor.prepare(read_plane(image, layout, index)) for index in indices]
            ready = [p for p in prepared if p is not None]
            if not ready:
                probabilities = []
            elif predictor.postprocess == "device":
                probabilities = predictor.probabilities_on(predictor.device, ready)
            else:
                probabilities = predictor.probabilities(ready)
            if pending is not None:
                yield pending.result()
            pending = post_processing.submit(_batch_labels, predictor, plan.shape, indices, prepared, probabilities)
        if pending is not None:
            yield pending.result()


def _batch_labels(
    predictor: PlanePredictor, shape: tuple[int, int], indices: Sequence[tuple[int, ...]],
    prepared: list[np.ndarray | None], probabilities: list[Any],
) -> list[PlaneResult]:
    if predictor.postprocess == "device":  # the whole batch at once, where the network ran
        info = predictor.checkpoint.info
        remaining = iter(device_labels(probabilities, info.mode, info.decision_weights))
    else:
        remaining = (predictor.labels(p) for p in probabilities)
    return [
        PlaneResult(index, predictor.blank_labels(shape) if plane is None else next(remaining))
        for index, plane in zip(indices, prepared)
    ]


def iter_segment(
    image: Any,
    model: Checkpoint | str | os.PathLike,
    settings: EngineSettings = EngineSettings(),
    *,
    axes: str | None = None,
    plane_order: Iterable[tuple[int, ...]] | None = None,
    id_offset: int = 0,
    out: Any = None,
    link_z: bool = False,
    diameter: float | str | None = "auto",
) -> Iterator[BatchProgress]:
    """Segment every 2D plane with ``settings``, yielding a :class:`BatchProgress` after each batch.

    Instance ids are unique across all planes yielded and start after ``id_offset`` (each plane
    continues after the highest id so far). ``plane_order`` lets a caller go first through the
    plane on screen. ``out`` (numpy, zarr...) receives every plane as it is done; with ``link_z``
    (instance models, images with a Z axis) each plane's objects then take the ids of the objects
    they overlap in the plane before along Z, read back from ``out`` (:func:`stitch_plane`), so a
    stack on disk is linked without being held. A plane whose predecessor is not done yet is
    written as it is and linked (and yielded again) once it is. On out-of-memory the batch size
    is halved and the run goes on, with a step whose ``note`` says so (:func:`predict_with_backoff`);
    at batch size 1 it raises :class:`~.device.OutOfMemoryError`.

    ``diameter`` (instance models): the objects' diameter in pixels, ``"auto"`` to measure it from a
    first pass over a few of the planes in ``plane_order``, None to keep the image's scale. Planes with objects much larger
    than the model's are shrunk before the network and their labels resized back (:mod:`.size`).

    ``precision`` ``"auto"`` is float16 on CUDA, bfloat16 on CPUs with native bfloat16 when a
    probe shows it keeps the model's labels (:func:`~.precision.resolve_precision`,
    :func:`~.predictor.bfloat16_verdict`), else float32;
    ``backend`` ``"auto"`` runs float32 CPU work with ONNX Runtime when it is installed
    (:func:`~.precision.choose_backend`); it exports the network first (a second or two, then
    cached on disk).
    """
    check_image(image)
    layout = parse_axes(image.shape, axes)
    predictor = PlanePredictor(resolve_checkpoint(model), settings)
    plane_shape = tuple(image.shape[layout.axes.index(a)] for a in layout.plane_axes)
    order = list(plane_order) if plane_order is not None else list(np.ndindex(*plane_shape))
    link = link_z and "Z" in layout.plane_axes and predictor.checkpoint.info.mode == "instance"
    if link and out is None:
        raise ValueError("linking objects across Z needs an output array (out=) to read the planes before from")
    writer = None if out is None else _PlaneWriter(out, layout.plane_axes.index("Z") if link else None)
    next_id, done = int(id_offset), 0
    for results, note in predict_with_backoff(image, layout, predictor, order, diameter):
        for plane in results:
            if plane.labels.dtype == np.uint32 and plane.labels.size:
                plane.labels[plane.labels > 0] += np.uint32(next_id)
                next_id = max(next_id, int(plane.labels.max()))
        done += len(results)
        yield BatchProgress(done, len(order), results if writer is None else writer.write(results), note)


def predict_with_backoff(
    image: Any, layout: AxesLayout, predictor: PlanePredictor, order: Sequence[tuple[int, ...]],
    diameter: float | str | None = None,
) -> Iterator[tuple[list[PlaneResult], str]]:
    """:func:`predict_planes` that halves the batch on out-of-memory and goes on (:func:`halve_batch`).

    Yields ``(planes, "")`` per batch, and ``([], note)`` after each halving, the note for people.
    Instance ids start at 1 in every plane. The smaller batch stays with ``predictor``. The
    planes not done yet start again from the first of them, in batches of the new size.
    ``diameter`` as in :func:`iter_segment`; it is measured (``"auto"``) inside the retry, so a
    first pass that runs out of memory is retried too.
    """
    remaining, size = list(order), None
    shape = (image.shape[layout.axes.index("Y")], image.shape[layout.axes.index("X")])
    while remaining:
        try:
            if size is None:
                size = plan_size(image, layout, predictor, diameter, order)
            source = ZoomedImage(image, layout, size.zoom) if size.rescales else image
            for results in predict_planes(source, layout, predictor, remaining):
                remaining = remaining[len(results) :]
                if size.rescales:  # labels at the image's own scale
                    results = [PlaneResult(r.index, resize_labels(r.labels, shape)) for r in results]
                yield results, ""
        except Exception as exc:  # only out-of-memory is retried, with half the batch
            yield [], halve_batch(predictor, exc)


class _PlaneWriter:
    """Writes planes into ``out`` and, along plane axis ``z_axis``, links each plane once the one before is final."""

    def __init__(self, out: Any, z_axis: int | None) -> None:
        self.out, self.z_axis = out, z_axis
        self.final: set[tuple[int, ...]] = set()  # linked (or first along Z)
        self.waiting: set[tuple[int, ...]] = set()  # written unlinked: the plane before is not final yet

    def write(self, planes: list[PlaneResult]) -> list[PlaneResult]:
        """Write ``planes``; return every plane whose labels in ``out`` changed, with those labels."""
        if self.z_axis is None:
            for plane in planes:
                self.out[plane.index] = plane.labels
            return planes
        changed: list[PlaneResult] = []
        for plane in planes:
            if not self._linkable(plane.index):
                self.out[plane.index] = plane.labels
                self.waiting.add(plane.index)
                changed.append(plane)
                continue
            index, labels = plane.index, plane.labels
            while True:  # link this plane, then the waiting planes after it
                labels = stitch_plane(self.out, index, labels, self.z_axis)
                self.out[index] = labels
                self.final.add(index)
                self.waiting.discard(index)
                changed.append(PlaneResult(index, labels))
                index = self._shift(index, 1)
                if index not in self.waiting:
                    break
                labels = np.asarray(self.out[index])
        return changed

    def _shift(self, index: tuple[int, ...], step: int) -> tuple[int, ...]:
        z = self.z_axis
        assert z is not None
        return index[:z] + (index[z] + step,) + index[z + 1 :]

    def _linkable(self, index: tuple[int, ...]) -> bool:
        assert self.z_axis is not None
        return index[self.z_axis] == 0 or self._shift(index, -1) in self.final


def stitch_plane(out: Any, index: tuple[int, ...], labels: np.ndarray, z_axis: int | None) -> np.ndarray:
    """``labels`` of plane ``index`` linked to the plane before it along plane axis ``z_axis``, read from ``out``.

    Planes must arrive in order along Z, each written to ``out`` before the next: then linking
    pair by pair gives what :func:`~.postprocess.stitch_slices` gives on the whole stack.
    """
    if z_axis is None or index[z_axis] == 0:
        return labels
    previous = index[:z_axis] + (index[z_axis] - 1,) + index[z_axis + 1 :]
    return link_to_previous(np.asarray(out[previous]), labels)


def segment(
    image: Any,
    model: Checkpoint | str | os.PathLike,
    settings: EngineSettings | None = None,
    *,
    axes: str | None = None,
    stitch_z: bool = False,
    z_method: str = "consensus",
    voxel_size: Sequence[float] | None = None,
    diameter: float | str | None = "auto",
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    out: Any = None,
    **engine: Any,
) -> Any:
    """Labels for ``image`` with the image's shape minus any channel axis.

    ``settings`` (:class:`~.engine_settings.EngineSettings`, default ``EngineSettings()``) say
    where and how the network runs. For convenience the settings' fields may also be given as
    keywords (``segment(image, "nuclei", device="cpu", batch_size=8)``), which change those of
    ``settings`` (:func:`~.engine_settings.settings_with`); another keyword is a TypeError.

    ``instance`` models give uint32 object ids unique in the whole result; ``semantic`` models a
    class map (label k = class k). Instance models' planes are shrunk first when their objects are
    much larger than the model's (``diameter`` in pixels, ``"auto"`` to measure it, None to keep
    the image's scale; :mod:`.size`), and the labels resized back. ``stitch_z`` (instance models) gives one id per 3D object: each
    (Z, Y, X) stack goes through :func:`~.slabs.iter_segment_stacks` (XY, XZ and YZ planes, rescaled by
    ``voxel_size`` (Z, Y, X) and the objects' ``diameter`` in pixels, ``"auto"`` to measure it);
    ids are unique in the whole result, 1..N. ``z_method="linking"`` instead links each plane's
    objects to the plane before. ``progress(done,
    total)`` is called after each batch; ``should_stop()`` is checked between batches and raises
    :class:`SegmentationCancelled` when true. Out of memory, the batch size is halved (logged as a
    warning) until it is 1 (:func:`iter_segment`).

    ``out`` (e.g. a zarr array from :func:`~.io.create_labels_zarr`) receives each batch's planes as
    soon as they are done and is returned, so memory stays bounded by one batch however large the
    stack; by default a new numpy array is returned. A boolean image (a mask) is segmented as
    0/1; a non-array raises TypeError and a complex or non-numeric dtype ValueError.
    """
    settings = settings_with(settings, **engine)
    check_image(image)
    layout = parse_axes(image.shape, axes)
    checkpoint = resolve_checkpoint(model)
    shape, dtype = labels_spec(image.shape, layout, checkpoint.info.mode)
    if out is None:
        out = np.zeros(shape, dtype)
    elif tuple(out.shape) != shape:
        raise ValueError(f"the output has shape {tuple(out.shape)}, the labels of this image need {shape}")
    if z_method not in Z_METHODS:
        raise ValueError(f"z_method must be one of {', '.join(Z_METHODS)}, got {z_method!r}")
    stitch = stitch_z and "Z" in layout.plane_axes and checkpoint.info.mode == "instance"
    if stitch and z_method == "consensus":
        predictor = PlanePredictor(checkpoint, settings)
        steps = iter_segment_stacks(image, layout, predictor, out, voxel_size=voxel_size, diameter=diameter)
    else:
        steps = iter_segment(image, checkpoint, settings, axes=layout.axes, out=out, link_z=stitch, diameter=diameter)
    for step in steps:
        if step.note:
            logger.warning(step.note)
        if progress is not None:
            progress(step.done, step.total)
        if should_stop is not None and should_stop() and step.done < step.total:
            raise SegmentationCancelled
    return out
