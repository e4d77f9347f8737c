"""Where the network hesitates: the entropy of its class probabilities per pixel, plane by plane.

A generator like :func:`~.inference.iter_segment`, so the widget shows progress and can stop at
any batch; "where to annotate next" paints corrections where the entropy is high.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .axes import parse_axes, read_plane
from .checkpoint import Checkpoint
from .engine_settings import EngineSettings
from .predictor import PlanePredictor, halve_batch, planes_per_batch, resolve_checkpoint
from .normalize import check_image


@dataclass
class UncertaintyProgress:
    """Planes done, the total, and the ``(index, entropy)`` planes finished in this batch."""

    done: int
    total: int
    planes: list[tuple[tuple[int, ...], np.ndarray]] = field(default_factory=list)
    note: str = ""  # for people, e.g. that the batch size was lowered after running out of memory


def entropy(probabilities: np.ndarray) -> np.ndarray:
    """``(K, H, W)`` class probabilities -> float32 ``(H, W)`` entropy scaled to 0 (sure) .. 1 (undecided)."""
    p = np.clip(probabilities.astype(np.float32), 1e-8, 1.0)
    return (-(p * np.log(p)).sum(axis=0) / np.float32(np.log(probabilities.shape[0]))).astype(np.float32)


def iter_uncertainty(
    image: Any,
    model: Checkpoint | str | os.PathLike,
    settings: EngineSettings = EngineSettings(),
    *,
    axes: str | None = None,
    plane_order: Iterable[tuple[int, ...]] | None = None,
) -> Iterator[UncertaintyProgress]:
    """The :func:`entropy` of each plane (in ``plane_order``, default all), one network batch at a time,
    the network run as ``settings`` say (:class:`~.predictor.PlanePredictor`).

    Blank planes (no contrast) get zeros: nothing there to hesitate about. Out of memory, the batch
    size is halved (:func:`~.predictor.halve_batch`; a step with no planes says so) and the batch run again.
    """
    check_image(image)
    layout = parse_axes(image.shape, axes)
    predictor = PlanePredictor(resolve_checkpoint(model), settings)
    height, width = image.shape[layout.axes.index("Y")], image.shape[layout.axes.index("X")]
    plane_shape = tuple(image.shape[layout.axes.index(a)] for a in layout.plane_axes)
    order = list(plane_order) if plane_order is not None else list(np.ndindex(*plane_shape))
    done = 0
    while done < len(order):
        per_batch = planes_per_batch(predictor.network, height, width, predictor.batch_size, predictor.tile_size)
        indices = order[done : done + per_batch]
        prepared = [predictor.prepare(read_plane(image, layout, index)) for index in indices]
        ready = [p for p in prepared if p is not None]
        try:
            probabilities = iter(predictor.probabilities(ready) if ready else [])
        except Exception as exc:  # only out-of-memory is retried, with half the batch
            yield UncertaintyProgress(done, len(order), [], halve_batch(predictor, exc))
            continue
        planes = [
            (index, np.zeros((height, width), np.float32) if plane is None else entropy(next(probabilities)))
            for index, plane in zip(indices, prepared)
        ]
        done += len(indices)
        yield UncertaintyProgress(done, len(order), planes)
