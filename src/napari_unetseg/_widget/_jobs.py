"""The work the widget runs in threads, as plain generators: arrays in, results out, no napari.

Each job yields updates the GUI turns into layers and progress, and *returns* its outcome. Jobs
never raise: a failure is returned as :class:`JobFailed` with a message for people, so the GUI
decides how to show it (napari's workers would otherwise pop up tracebacks, and treat a
``RuntimeError`` such as an out-of-memory error as a normal return value).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..axes import AxesLayout, read_plane
from ..checkpoint import Checkpoint
from ..device import free_gpu_memory, is_out_of_memory
from ..engine_settings import EngineSettings
from ..inference import iter_segment
from ..predictor import BatchProgress, PlanePredictor, PlaneResult
from ..metrics import object_changes
from ..precision import CHANGING_WEIGHTS_BACKEND, PREVIEW_PRECISION
from ..slabs import iter_segment_stacks
from ..training import Trainer, TrainProgress, TrainResult
from ..uncertainty import UncertaintyProgress, iter_uncertainty


@dataclass(frozen=True)
class JobFailed:
    """Returned instead of a result: ``message`` says in plain words what went wrong."""

    message: str


def describe_error(exc: BaseException, doing: str) -> str:
    """A one-paragraph message: what failed and why, without a traceback."""
    text = str(exc).strip().splitlines()
    reason = text[0] if text else type(exc).__name__
    return f"{doing} failed: {reason}"


# ---------------------------------------------------------------------------- segmentation


@dataclass
class SegmentOutcome:
    """The end of a run: how many slices were segmented."""

    total: int


def segment_job(
    image: Any,
    checkpoint: Checkpoint,
    out: Any,
    settings: EngineSettings,
    *,
    axes: str,
    order: Sequence[tuple[int, ...]],
    id_offset: int = 0,
    link_z: bool = False,
    diameter: float | str | None = "auto",
) -> Generator[BatchProgress, None, SegmentOutcome | JobFailed]:
    """:func:`~..inference.iter_segment` with ``settings`` over the planes in ``order`` into ``out``, as a job.

    Instance ids start after ``id_offset``; ``link_z`` links objects across Z through ``out``
    (numpy or zarr alike); ``diameter`` rescales planes of large objects (:mod:`..size`); out of
    memory, the batch size is halved (steps with a ``note``).
    """
    try:
        yield from iter_segment(
            image, checkpoint, settings, axes=axes, plane_order=order, id_offset=id_offset, out=out, link_z=link_z,
            diameter=diameter,
        )
    except Exception as exc:  # every failure becomes a message
        return JobFailed(describe_error(exc, "Segmentation"))
    return SegmentOutcome(len(order))


def objects_3d_job(
    image: Any,
    checkpoint: Checkpoint,
    out: Any,
    settings: EngineSettings,
    *,
    axes: str,
    voxel_size: Sequence[float] | None,
    diameter: float | str | None,
) -> Generator[BatchProgress, None, SegmentOutcome | JobFailed]:
    """One id per 3D object of each (Z, Y, X) stack into ``out``: :func:`~..slabs.iter_segment_stacks` as a job."""
    try:
        predictor = PlanePredictor(checkpoint, settings)
        yield from iter_segment_stacks(image, AxesLayout(axes), predictor, out, voxel_size=voxel_size, diameter=diameter)
    except Exception as exc:
        return JobFailed(describe_error(exc, "Segmenting 3D objects"))
    return SegmentOutcome(math.prod(n for n, a in zip(image.shape, axes) if a not in "YXC"))


# ---------------------------------------------------------------------------- uncertainty


def entropy_job(
    image: Any,
    checkpoint: Checkpoint,
    settings: EngineSettings,
    *,
    axes: str,
    order: Sequence[tuple[int, ...]],
) -> Generator[UncertaintyProgress, None, int | JobFailed]:
    """:func:`~..uncertainty.iter_uncertainty` as a job: per-pixel entropy, 0 (sure) to 1 (undecided)."""
    try:
        yield from iter_uncertainty(image, checkpoint, settings, axes=axes, plane_order=order)
    except Exception as exc:
        return JobFailed(describe_error(exc, "Computing the uncertainty"))
    return len(order)


# ---------------------------------------------------------------------------- fine-tuning


PREVIEW_HANDOFF_S = 2.0  # the longest a job waits for the GUI to show a preview


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

    ``preview.index`` may be changed from another thread to follow the plane on screen. After a
    preview the job waits (up to ``PREVIEW_HANDOFF_S``) until the GUI calls :meth:`preview_shown`:
    making and drawing a layer takes napari about 0.1 s on the GUI thread, and training beside it
    holds Python's lock and doubles that stall.
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
    _shown: threading.Event = field(default_factory=threading.Event, repr=False)
    _parent_labels: dict[tuple[int, ...], np.ndarray] = field(default_factory=dict, repr=False)

    def stop(self) -> None:
        """Ask the job to finish after the current iteration (without waiting for a preview to show)."""
        self._stop.set()
        self._shown.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def preview_shown(self) -> None:
        """Called by the GUI once a preview is on screen: training goes on."""
        self._shown.set()

    def _show(self, update: FineTuneUpdate) -> Generator[FineTuneUpdate, None, None]:
        """Yield ``update``; if it carries a preview, wait until the GUI has shown it."""
        if not self.stopping:
            self._shown.clear()
        yield update
        if update.preview is not None:
            self._shown.wait(PREVIEW_HANDOFF_S)

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
                        yield from self._show(self._preview_update(trainer.result(), step))
                        last_preview = time.monotonic()
                    else:
                        yield FineTuneUpdate(step)
                break
            except Exception as exc:
                batch = trainer.config.batch_size
                if is_out_of_memory(exc) and batch > 1:
                    free_gpu_memory()
                    trainer.config = replace(trainer.config, batch_size=batch // 2)
                    yield FineTuneUpdate(
                        None, note=f"Out of memory on {self.device}: continuing with batch size {batch // 2}."
                    )
                    continue
                return JobFailed(describe_error(exc, "Fine-tuning"))
        result = trainer.result()
        if self.preview is not None:
            yield from self._show(self._preview_update(result, None))
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
        settings = EngineSettings(device=self.device, precision=PREVIEW_PRECISION, backend=CHANGING_WEIGHTS_BACKEND)
        predictor = PlanePredictor(checkpoint, settings)
        plane = predictor.prepare(read_plane(source.image, AxesLayout(source.axes), index))
        shape = (source.image.shape[source.axes.index("Y")], source.image.shape[source.axes.index("X")])
        if plane is None:
            return PlaneResult(index, predictor.blank_labels(shape))
        return PlaneResult(index, predictor.labels(predictor.probabilities([plane])[0]))
