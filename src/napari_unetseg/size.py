"""Object size: planes whose objects are much larger than the model's are shrunk before the network.

A U-Net sees a window of fixed size; nuclei much larger than those it was trained on look like flat
bright areas to it, and it cuts them up or merges them. Like cellpose's ``diameter``, the image is
rescaled so its objects have the diameter the model was trained on
(:attr:`~.checkpoint.ModelInfo.object_diameter`), and the labels are resized back. ``"auto"`` measures
the diameter from a first pass of the network over a few of the image's brightest planes (in focus,
where nuclei are at their full size). Images are only shrunk, never enlarged (:data:`SHRINK_ABOVE`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from scipy import ndimage as ndi

from .axes import AxesLayout, read_plane

#: The object diameter (pixels) a model expects when its checkpoint does not say: the middle of the
#: built-in nuclei model's training sizes (radius 4-30 px, log-uniform), where its 2D F1 is flat (16-30 px).
DEFAULT_MODEL_DIAMETER = 20.0
#: Images are only shrunk, never enlarged: enlarging small nuclei lowered the F1 (measured on synthetic
#: nuclei of radius 6: 0.59 -> 0.08 at 2x); and only when the objects are this much larger than the model's size.
SHRINK_ABOVE = 1.5
#: Planes the diameter is measured on: the brightest of up to :data:`CANDIDATE_PLANES` spread over the image.
DIAMETER_PLANES = 6
CANDIDATE_PLANES = 24
#: Planes are measured in a centred window of at most this side, so the first pass stays cheap on huge planes.
MEASURE_WINDOW = 1024
#: ...and at half their resolution (a quarter of a full pass): objects large enough to be shrunk (over
#: :data:`SHRINK_ABOVE` x 20 px) are then still well inside the sizes the model was trained on (8-60 px).
MEASURE_ZOOM = 0.5

PlaneProbabilities = Callable[[list[np.ndarray]], list[np.ndarray]]


class Predictor(Protocol):
    """What :func:`plan_size` needs of a :class:`~.predictor.PlanePredictor`."""

    checkpoint: Any

    def prepare(self, plane: np.ndarray) -> np.ndarray | None: ...
    def probabilities(self, planes: list[np.ndarray]) -> list[np.ndarray]: ...
    def labels(self, probabilities: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class SizePlan:
    """How an image's planes are rescaled: ``zoom`` for Y and X (1: not at all), from ``diameter``
    (the objects' diameter in input pixels; None when not known)."""

    zoom: float
    diameter: float | None

    @property
    def rescales(self) -> bool:
        return abs(self.zoom - 1.0) > 1e-3


def model_diameter(object_diameter: float | None) -> float:
    """The diameter a checkpoint's model expects (its recorded one, else :data:`DEFAULT_MODEL_DIAMETER`)."""
    return float(object_diameter) if object_diameter else DEFAULT_MODEL_DIAMETER


def shrink_factor(diameter: float | None, expected: float) -> float:
    """The XY zoom that brings objects of ``diameter`` to ``expected`` px: below 1 for large objects, else 1."""
    if diameter is None or diameter <= SHRINK_ABOVE * expected:
        return 1.0
    return expected / float(diameter)


def equivalent_diameter(labels: Sequence[np.ndarray]) -> float | None:
    """Median equivalent-circle diameter (pixels) of the objects in ``labels`` (2D planes), or None if none."""
    areas = [sizes[sizes > 0] for sizes in (np.bincount(np.asarray(p).ravel())[1:] for p in labels)]
    found = np.concatenate(areas) if areas else np.zeros(0)
    if found.size == 0:
        return None
    return float(2.0 * np.sqrt(np.median(found) / np.pi))


def brightest(planes: Sequence[np.ndarray], count: int = DIAMETER_PLANES) -> list[int]:
    """Positions of the ``count`` brightest ``planes`` (99th percentile), in their order."""
    brightness = np.array([np.nanpercentile(plane, 99) for plane in planes])
    return sorted(np.argsort(-brightness, kind="stable")[:count].tolist())


def measure_diameter(
    image: Any, layout: AxesLayout, prepare: Callable[[np.ndarray], np.ndarray | None],
    probabilities: PlaneProbabilities, labels: Callable[[np.ndarray], np.ndarray],
    planes: Sequence[tuple[int, ...]] | None = None,
) -> float | None:
    """The median diameter (input pixels) of the objects the network finds in the brightest of
    ``planes`` (plane indices; default every plane of the image), or None (:func:`measure_planes`).

    ``prepare``, ``probabilities`` and ``labels`` are a :class:`~.predictor.PlanePredictor`'s (raw
    ``(C, H, W)`` plane -> input; inputs -> class probabilities; probabilities -> 2D objects).
    """
    plane_shape = tuple(image.shape[layout.axes.index(a)] for a in layout.plane_axes)
    indices = list(np.ndindex(*plane_shape)) if planes is None else sorted(set(planes))  # as any order of them
    shape = (image.shape[layout.axes.index("Y")], image.shape[layout.axes.index("X")])
    return measure_planes(len(indices), shape, lambda i, window: read_plane(image, layout, indices[i], window),
                          prepare, probabilities, labels)


def measure_planes(
    count: int, shape: tuple[int, int], read: Callable[[int, tuple[slice, slice]], np.ndarray],
    prepare: Callable[[np.ndarray], np.ndarray | None], probabilities: PlaneProbabilities,
    labels: Callable[[np.ndarray], np.ndarray],
) -> float | None:
    """The median diameter (pixels) of the objects the network finds in planes ``0 .. count - 1`` of
    ``shape`` (Y, X), or None: of up to :data:`CANDIDATE_PLANES` spread over them, ``read(i, window)``
    (plane ``i``'s ``(C, H, W)`` window) reads the centre :data:`MEASURE_WINDOW`; the
    :data:`DIAMETER_PLANES` brightest are seen at :data:`MEASURE_ZOOM`. A few small reads, whatever
    the image's size; the 2D engine and the 3D one measure the same way.
    """
    candidates = range(count)
    if count > CANDIDATE_PLANES:
        candidates = np.linspace(0, count - 1, CANDIDATE_PLANES).round().astype(int).tolist()
    window = (_centre(shape[0]), _centre(shape[1]))
    planes = [read(i, window) for i in candidates]
    chosen = [planes[i] for i in brightest([p.astype(np.float32).mean(axis=0) for p in planes])]
    shrunk = [ndi.zoom(p.astype(np.float32), (1.0, MEASURE_ZOOM, MEASURE_ZOOM), order=1, grid_mode=True,
                       mode="nearest") for p in chosen]
    ready = [p for p in (prepare(plane) for plane in shrunk) if p is not None]
    if not ready:
        return None
    diameter = equivalent_diameter([labels(p) for p in probabilities(ready)])
    return None if diameter is None else diameter / MEASURE_ZOOM


def plan_size(
    image: Any, layout: AxesLayout, predictor: Predictor, diameter: float | str | None,
    planes: Sequence[tuple[int, ...]] | None = None,
) -> SizePlan:
    """How to rescale ``image`` for ``predictor``'s model: ``diameter`` in input pixels, ``"auto"`` to
    measure it on ``planes`` (the ones to be segmented; default all, :func:`measure_diameter`), None
    to keep the image's scale (:func:`size_for`).
    """
    info = predictor.checkpoint.info
    if diameter == "auto" and info.mode == "instance":
        diameter = measure_diameter(image, layout, predictor.prepare, predictor.probabilities, predictor.labels,
                                    planes)
    return size_for(info, diameter)


def size_for(info: Any, diameter: float | str | None) -> SizePlan:
    """The rescaling for objects of ``diameter`` pixels (None: not known) under a model of ``info``
    (a :class:`~.checkpoint.ModelInfo`). Class-map (semantic) models are never rescaled: their classes
    are textures, not objects of a size.
    """
    if diameter is None or diameter == "auto" or info.mode != "instance":
        return SizePlan(1.0, None)
    if float(diameter) <= 0:
        raise ValueError(f"the object diameter must be positive (pixels) or 'auto', got {diameter}")
    return SizePlan(shrink_factor(float(diameter), model_diameter(info.object_diameter)), float(diameter))


def _centre(length: int) -> slice:
    start = max(0, (length - MEASURE_WINDOW) // 2)
    return slice(start, start + min(length, MEASURE_WINDOW))


def zoomed_length(length: int, zoom: float) -> int:
    """The length of an axis of ``length`` pixels rescaled by ``zoom`` (at least 1)."""
    return max(1, round(length * zoom))


class ZoomedImage:
    """``image`` seen with its Y and X axes rescaled by ``zoom`` (linear interpolation), plane by plane.

    Only what :func:`~.axes.read_plane` asks is supported: whole Y, X (and C) axes, one index elsewhere.
    """

    def __init__(self, image: Any, layout: AxesLayout, zoom: float) -> None:
        self._image, self._axes = image, layout.axes
        self.shape = tuple(zoomed_length(n, zoom) if a in "YX" else int(n) for n, a in zip(image.shape, layout.axes))
        self.ndim, self.dtype = len(self.shape), np.dtype(np.float32)

    def __getitem__(self, selector: tuple[Any, ...]) -> np.ndarray:
        plane = np.asarray(self._image[selector], np.float32)
        kept = [i for i, s in enumerate(selector) if isinstance(s, slice)]
        factors = [self.shape[i] / self._image.shape[i] if self._axes[i] in "YX" else 1.0 for i in kept]
        return ndi.zoom(plane, factors, order=1, grid_mode=True, mode="nearest")


def resize_labels(labels: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Nearest-neighbour resize of ``labels`` to ``shape`` (pixel centres mapped onto each other)."""
    coordinates = [
        np.minimum(((np.arange(n) + 0.5) * (m / n)).astype(np.intp), m - 1) for n, m in zip(shape, labels.shape)
    ]
    return labels[np.ix_(*coordinates)]
