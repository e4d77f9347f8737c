"""The work the widget runs in threads, as plain generators: arrays in, results out, no napari.

Each job yields updates the GUI turns into layers and progress, and *returns* its outcome. Jobs
never raise: a failure is returned as :class:`JobFailed` with a message for people, so the GUI
decides how to show it (napari's workers would otherwise pop up tracebacks, and treat a
``RuntimeError`` such as an out-of-memory error as a normal return value).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..checkpoint import Checkpoint
from ..inference import AxesLayout, PlanePredictor, PlaneResult, _read_plane, iter_segment
from ..metrics import object_changes
from ..postprocess import stitch_slices
from ..training import Trainer, TrainProgress, TrainResult


@dataclass(frozen=True)
class JobFailed:
    """Returned instead of a result: ``message`` says in plain words what went wrong."""

    message: str


def is_out_of_memory(exc: BaseException) -> bool:
    """True for a GPU (or CPU allocator) out-of-memory error."""
    import torch

    if isinstance(exc, torch.cuda.OutOfMemoryError | MemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def describe_error(exc: BaseException, doing: str) -> str:
    """A one-paragraph message: what failed and why, without a traceback."""
    text = str(exc).strip().splitlines()
    reason = text[0] if text else type(exc).__name__
    return f"{doing} failed: {reason}"


# ---------------------------------------------------------------------------- segmentation


@dataclass
class SegmentUpdate:
    """Planes finished since the last update; ``note`` says when the batch size was lowered."""

    done: int
    total: int
    planes: list[PlaneResult]
    note: str = ""


@dataclass
class SegmentOutcome:
    """The end of a run: ``stitched`` is the whole Z-linked result when stitching was asked for."""

    total: int
    stitched: np.ndarray | None = None


def segment_job(
    image: Any,
    checkpoint: Checkpoint,
    *,
    axes: str,
    device: str,
    batch_size: int,
    tile_size: int,
    order: Sequence[tuple[int, ...]],
    id_offset: int = 0,
    stitch_axis: int | None = None,
    precision: str = "auto",
    backend: str = "torch",
) -> Generator[SegmentUpdate, None, SegmentOutcome | JobFailed]:
    """Segment the planes in ``order``; on out-of-memory, go on with half the batch size.

    Instance ids start after ``id_offset`` and stay unique across restarts. With ``stitch_axis``
    (an axis of the output) the job keeps the whole result and links objects along it at the end.
    """
    remaining = list(order)
    total, done, next_id = len(remaining), 0, int(id_offset)
    layout = AxesLayout(axes)
    out_shape = tuple(image.shape[i] for i, a in enumerate(axes) if a != "C")
    kept = np.zeros(out_shape, np.uint32) if stitch_axis is not None else None
    while remaining:
        offset = next_id
        try:
            for step in iter_segment(
                image,
                checkpoint,
                axes=layout.axes,
                device=device,
                batch_size=batch_size,
                tile_size=tile_size,
                precision=precision,
                backend=backend,
                plane_order=remaining,
            ):
                for plane in step.planes:
                    if plane.labels.dtype == np.uint32 and offset:
                        plane.labels[plane.labels > 0] += np.uint32(offset)
                    if plane.labels.dtype == np.uint32 and plane.labels.size:
                        next_id = max(next_id, int(plane.labels.max()))
                    if kept is not None:
                        kept[plane.index] = plane.labels
                done += len(step.planes)
                remaining = remaining[len(step.planes) :]
                yield SegmentUpdate(done, total, step.planes)
        except Exception as exc:  # every failure becomes a message
            if is_out_of_memory(exc) and batch_size > 1:
                _free_gpu_memory()
                batch_size //= 2
                yield SegmentUpdate(
                    done, total, [], f"Out of memory on {device}: continuing with batch size {batch_size}."
                )
                continue
            if is_out_of_memory(exc):
                return JobFailed(
                    f"Out of memory on {device} even with batch size 1. Try a smaller tile size "
                    "(advanced options) or the CPU."
                )
            return JobFailed(describe_error(exc, "Segmentation"))
    if kept is not None:
        kept = stitch_slices(kept, axis=stitch_axis)
    return SegmentOutcome(total, kept)


def _free_gpu_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------- uncertainty


@dataclass
class EntropyUpdate:
    """Planes done, the total, and the finished ``(index, entropy)`` planes."""

    done: int
    total: int
    planes: list[tuple[tuple[int, ...], np.ndarray]]


def entropy_job(
    image: Any,
    checkpoint: Checkpoint,
    *,
    axes: str,
    device: str,
    batch_size: int,
    tile_size: int,
    order: Sequence[tuple[int, ...]],
) -> Generator[EntropyUpdate, None, int | JobFailed]:
    """Per-pixel entropy of the predicted class probabilities, 0 (sure) to 1 (undecided), plane by plane."""
    layout = AxesLayout(axes)
    try:
        predictor = PlanePredictor(checkpoint, device, batch_size, tile_size)
        scale = np.float32(1.0 / np.log(predictor.num_classes))
        for done, index in enumerate(order, start=1):
            plane = predictor.prepare(_read_plane(image, layout, index))
            if plane is None:
                entropy = np.zeros((image.shape[axes.index("Y")], image.shape[axes.index("X")]), np.float32)
            else:
                p = predictor.probabilities([plane])[0]
                entropy = -(p * np.log(np.clip(p, 1e-8, 1.0))).sum(axis=0) * scale
            yield EntropyUpdate(done, len(order), [(index, entropy.astype(np.float32))])
    except Exception as exc:
        return JobFailed(describe_error(exc, "Computing the uncertainty"))
    return len(order)


# ---------------------------------------------------------------------------- fine-tuning


@dataclass
class FineTuneUpdate:
    """One training iteration (``progress``), and now and then a re-predicted plane (``preview``) with
    the objects it ``added`` and ``removed`` against the parent model's labels of that plane."""

    progress: TrainProgress | None
    preview: PlaneResult | None = None
    note: str = ""
    added: int = 0
    removed: int = 0


@dataclass
class PreviewSource:
    """Where previews come from: the image (array-like), its axes, and the plane to show."""

    image: Any
    axes: str
    index: tuple[int, ...]


@dataclass
class FineTuneJob:
    """Fine-tunes ``checkpoint`` on annotated planes (copies); :meth:`stop` ends it keeping the best weights.

    ``preview.index`` may be changed from another thread to follow the plane on screen.
    """

    images: list[np.ndarray]
    annotations: list[np.ndarray]
    checkpoint: Checkpoint
    iterations: int = 200
    device: str = "auto"
    preview: PreviewSource | None = None
    preview_every: float = 3.0
    options: dict[str, Any] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _parent_labels: dict[tuple[int, ...], np.ndarray] = field(default_factory=dict, repr=False)

    def stop(self) -> None:
        """Ask the job to finish after the current iteration."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self) -> Generator[FineTuneUpdate, None, TrainResult | JobFailed]:
        """Train, yielding after every iteration; return the best weights or a :class:`JobFailed`."""
        try:
            trainer = Trainer(
                self.images,
                self.annotations,
                self.checkpoint,
                iterations=self.iterations,
                device=self.device,
                **self.options,
            )
        except ValueError as exc:
            return JobFailed(str(exc))
        except Exception as exc:
            return JobFailed(describe_error(exc, "Preparing the fine-tuning"))
        last_preview = time.monotonic()
        while True:
            try:
                for step in trainer.steps(self._stop.is_set):
                    if self.preview is not None and time.monotonic() - last_preview >= self.preview_every:
                        yield self._preview_update(trainer.result(), step)
                        last_preview = time.monotonic()
                    else:
                        yield FineTuneUpdate(step)
                break
            except Exception as exc:
                batch = trainer.config.batch_size
                if is_out_of_memory(exc) and batch > 1:
                    _free_gpu_memory()
                    trainer.config = replace(trainer.config, batch_size=batch // 2)
                    yield FineTuneUpdate(
                        None, note=f"Out of memory on {self.device}: continuing with batch size {batch // 2}."
                    )
                    continue
                return JobFailed(describe_error(exc, "Fine-tuning"))
        result = trainer.result()
        if self.preview is not None:
            yield self._preview_update(result, None)
        return result

    def _preview_update(self, result: TrainResult, step: TrainProgress | None) -> FineTuneUpdate:
        """An update with a preview and what changed on it; a failing preview is switched off with a
        note, training goes on."""
        try:
            preview = self._predict(result.checkpoint())
            if self.checkpoint.info.mode != "instance":
                return FineTuneUpdate(step, preview)
            if preview.index not in self._parent_labels:
                self._parent_labels[preview.index] = self._predict(self.checkpoint, preview.index).labels
            added, removed = object_changes(preview.labels, self._parent_labels[preview.index])
            return FineTuneUpdate(step, preview, added=added, removed=removed)
        except Exception as exc:
            self.preview = None
            return FineTuneUpdate(step, note=describe_error(exc, "The live preview") + "; training goes on.")

    def _predict(self, checkpoint: Checkpoint, index: tuple[int, ...] | None = None) -> PlaneResult:
        """Labels of the preview plane (or plane ``index``) by ``checkpoint``."""
        source = self.preview
        assert source is not None
        index = source.index if index is None else index
        # float32: for one plane of fresh weights, the bfloat16 probe would cost more than it saves
        predictor = PlanePredictor(checkpoint, self.device, batch_size=4, precision="float32")
        plane = predictor.prepare(_read_plane(source.image, AxesLayout(source.axes), index))
        shape = (source.image.shape[source.axes.index("Y")], source.image.shape[source.axes.index("X")])
        if plane is None:
            return PlaneResult(index, predictor.blank_labels(shape))
        return PlaneResult(index, predictor.labels(predictor.probabilities([plane])[0]))
