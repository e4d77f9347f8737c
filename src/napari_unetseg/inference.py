"""Array in, labels out: every 2D plane of an image stack through the U-Net, batch by batch.

The engine is a generator (:func:`iter_segment`) that yields after each batch, so a GUI worker
can show progress and stop at any yield; :func:`segment` runs it to the end for scripts and
the command line. Images may be numpy, dask or zarr arrays: only one batch of planes is read
at a time, and with ``segment(..., out=zarr_array)`` only one batch of labels is held, so stacks
larger than memory stream from disk to disk. :mod:`.distributed` runs the same engine on a cluster.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .axes import AxesLayout, labels_spec, parse_axes, read_plane
from .checkpoint import Checkpoint, info_problem
from .device import OutOfMemoryError, fit_to_memory, free_gpu_memory, get_device, is_out_of_memory
from .engine_settings import EngineSettings, settings_with
from .normalize import check_image, normalize_plane
from .optimize import make_fast_model
from .options import labels_dtype
from .postprocess import link_to_previous, probabilities_to_classes, probabilities_to_instances
from .postprocess_torch import device_labels, resolve_postprocess
from .precision import buffer_dtype, resolve_precision
from .size import ZoomedImage, plan_size, resize_labels
from .tiling import TilePlan, plan_tiles

#: How ``segment(stitch_z=True)`` makes 3D objects: XY/XZ/YZ consensus (:mod:`.volume`) or plane-to-plane linking.
Z_METHODS = ("consensus", "linking")
logger = logging.getLogger(__name__)


class SegmentationCancelled(Exception):
    """Raised by :func:`segment` when ``should_stop`` asked it to stop."""


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
    from .models import resolve_model  # local import: the registry reads package files

    return resolve_model(model)


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
        precision = resolve_precision(checkpoint, device, settings.precision)
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
    probe shows it keeps the model's labels (:func:`~.precision.resolve_precision`), else float32;
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
        from .slabs import iter_segment_stacks  # local: slabs builds on this module

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
