"""The thin napari layer: layers -> arrays and their geometry, results -> layers, and notifications."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import Container, Label

from ..io import LARGE_RESULT_BYTES, temporary_labels_zarr

if TYPE_CHECKING:
    import napari

METADATA_KEY = "napari_unetseg"


class UserError(Exception):
    """A problem the user can fix (no image, wrong layer...): shown as a plain notification."""


def notify(kind: str, message: str) -> None:
    """Show ``message`` as a napari notification; ``kind`` is ``"info"``, ``"warning"`` or ``"error"``."""
    from napari.utils import notifications

    {"info": notifications.show_info, "warning": notifications.show_warning, "error": notifications.show_error}[kind](
        message
    )


class Note(Label):
    """A label for sentences, wrapped at ``COLUMNS`` characters here (Qt's word wrap mis-sizes in docks)."""

    COLUMNS = 46

    def set_value(self, value: Any) -> None:
        lines = str(value).splitlines() or [""]
        super().set_value("\n".join(textwrap.fill(line, self.COLUMNS) or line for line in lines))


def row(*widgets: Any) -> Container:
    """Widgets side by side, without margins."""
    line = Container(widgets=list(widgets), layout="horizontal", labels=False)
    line.margins = (0, 0, 0, 0)
    return line


@dataclass(frozen=True)
class ImageSource:
    """What a job needs from an image layer: the array-like (never loaded whole), its axes and geometry.

    ``axes`` is ``"YX"``, ``"ZYX"`` or ``"TZYX"``, plus a trailing ``"C"`` for RGB(A) images.
    """

    name: str
    layer_id: Any
    data: Any
    axes: str
    geometry: dict[str, Any]

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """Shape without the channel axis: the shape of labels and annotations."""
        return tuple(n for n, a in zip(self.data.shape, self.axes) if a != "C")

    @property
    def plane_shape(self) -> tuple[int, ...]:
        """Number of planes along each non-YX axis (``()`` for a 2D image)."""
        return self.spatial_shape[:-2]

    def all_planes(self, first: tuple[int, ...] | None = None) -> list[tuple[int, ...]]:
        """Every plane index, ``first`` (e.g. the one on screen) moved to the front."""
        order = list(np.ndindex(*self.plane_shape))
        if first is not None and first in order:
            order.remove(first)
            order.insert(0, first)
        return order


def image_source(layer: napari.layers.Image | None) -> ImageSource:
    """Describe an image layer for a job; :class:`UserError` if there is none or it cannot be used."""
    if layer is None:
        raise UserError("There is no image to work on: open an image (File > Open) or a sample (File > Open Sample).")
    data = layer.data[0] if layer.multiscale else layer.data
    spatial = layer.ndim
    if spatial < 2 or spatial > 4:
        raise UserError(
            f"'{layer.name}' has {spatial} dimensions; U-Net Segmentation works on 2D, 3D (Z) and 4D (T, Z) "
            "images. Split the channels or other axes into separate layers first."
        )
    axes = "TZYX"[4 - spatial :] + ("C" if layer.rgb else "")
    return ImageSource(layer.name, layer.unique_id, data, axes, layer_geometry(layer))


def layer_geometry(layer: napari.layers.Layer) -> dict[str, Any]:
    """Keyword arguments giving a new layer the same place in the world as ``layer``."""
    return {
        "scale": tuple(layer.scale),
        "translate": tuple(layer.translate),
        "axis_labels": tuple(layer.axis_labels),
        "units": tuple(str(u) for u in layer.units),
    }


def current_plane(viewer: napari.Viewer, source: ImageSource, layer: napari.layers.Layer) -> tuple[int, ...]:
    """Index (over the plane axes) of the plane of ``layer`` that the viewer shows now."""
    n = len(source.plane_shape)
    if n == 0:
        return ()
    position = np.asarray(layer.world_to_data(viewer.dims.point))[:n]
    return tuple(int(np.clip(round(float(p)), 0, size - 1)) for p, size in zip(position, source.plane_shape))


def find_layer(viewer: napari.Viewer, layer_id: Any) -> napari.layers.Layer | None:
    """The layer with ``unique_id == layer_id`` if it is still in the viewer."""
    return next((layer for layer in viewer.layers if layer.unique_id == layer_id), None)


def layers_of_type(viewer: napari.Viewer, kind: str) -> list[napari.layers.Layer]:
    """Layers of a napari layer class named ``kind`` (e.g. ``"Image"``, ``"Labels"``), top first."""
    from napari import layers

    cls = getattr(layers, kind)
    return [layer for layer in reversed(viewer.layers) if isinstance(layer, cls)]


def blank_labels(shape: tuple[int, ...], dtype: np.dtype) -> Any:
    """Zeros for a labels layer: numpy, or past :data:`~..io.LARGE_RESULT_BYTES` a zarr array on disk.

    The zarr store lives in a temporary folder deleted with the array, so a stack larger than
    memory can be segmented into a layer that napari reads plane by plane.
    """
    if math.prod(shape) * np.dtype(dtype).itemsize > LARGE_RESULT_BYTES:
        return temporary_labels_zarr(shape, dtype)
    return np.zeros(shape, dtype)


def largest_label(data: Any) -> int:
    """The highest value in a layer's data (numpy or zarr), reading a zarr array one plane at a time."""
    if isinstance(data, np.ndarray):
        return int(data.max()) if data.size else 0
    return max((int(np.asarray(data[index]).max()) for index in np.ndindex(*data.shape[:-2])), default=0)


class OwnedLayers:
    """The layers this widget made, by role and image, so it never writes into a layer the user made
    or painted in.

    Layers are remembered by napari's ``unique_id`` (a duplicate of one of ours is the user's),
    and marked in ``metadata`` for people and other tools. A layer of ours that the user paints
    in (brush, fill, eraser) becomes theirs to keep: it is never written again.
    """

    def __init__(self, viewer: napari.Viewer, on_change: Callable[[], None]) -> None:
        self.viewer = viewer
        self.on_change = on_change  # called when a layer becomes ours (layer lists change)
        self._ids: dict[tuple[str, Any], Any] = {}
        self._edited: set[Any] = set()

    def _own(self, role: str, source: ImageSource, layer: napari.layers.Layer) -> None:
        self._ids[(role, source.layer_id)] = layer.unique_id
        self.on_change()

    def get(self, role: str, source: ImageSource) -> napari.layers.Layer | None:
        """Our ``role`` layer (``"labels"``, ``"uncertainty"``) of this image, if it still exists."""
        layer_id = self._ids.get((role, source.layer_id))
        return None if layer_id is None else find_layer(self.viewer, layer_id)

    def owns(self, layer: napari.layers.Layer) -> bool:
        return layer.unique_id in self._ids.values()

    def edited(self, layer: napari.layers.Layer) -> bool:
        """Whether the user has painted in this layer (then it is theirs: never written again)."""
        return layer.unique_id in self._edited

    def labels(
        self, source: ImageSource, dtype: np.dtype, clear: bool, model: str | None = None
    ) -> napari.layers.Labels:
        """The layer for a result of ``model`` on ``source``, made (or reshaped) to fit; zeroed if ``clear``.

        Each model has its own ``"<image> labels (<model>)"`` layer, so segmenting with another model
        keeps the earlier results; running a model again reuses its layer unless the user painted in
        it, which gets a new layer instead. ``model=None`` is the image's latest result layer
        (``"<image> labels"`` when there is none), e.g. for a live preview.
        """
        role = "labels" if model is None else f"labels ({model})"
        layer = self.get(role, source)
        shape = source.spatial_shape
        if layer is None or self.edited(layer):
            layer = self.viewer.add_labels(
                blank_labels(shape, dtype),
                name=f"{source.name} labels" + ("" if model is None else f" ({model})"),
                **source.geometry,
                metadata={METADATA_KEY: {"role": "labels", "image": source.name, "model": model}},
            )
            layer.events.paint.connect(lambda *_, layer_id=layer.unique_id: self._edited.add(layer_id))
            self._own(role, source, layer)
        elif layer.data.shape != shape or np.dtype(layer.data.dtype) != np.dtype(dtype):
            layer.data = blank_labels(shape, dtype)
        elif clear:
            layer.data[...] = 0
            layer.refresh()
        self._ids[("labels", source.layer_id)] = layer.unique_id  # the image's latest result
        return layer

    def output(self, layer: napari.layers.Labels) -> LayerOutput:
        """``layer``'s data as a job's ``out``, written only while the user has not painted in the layer."""
        return LayerOutput(layer.data, lambda: self.edited(layer))

    def uncertainty(self, source: ImageSource) -> napari.layers.Image:
        """Our ``"<image> uncertainty"`` layer (float32 zeros to start), made if needed."""
        layer = self.get("uncertainty", source)
        shape = source.spatial_shape
        if layer is None or layer.data.shape != shape:
            if layer is not None:
                self.viewer.layers.remove(layer)
            layer = self.viewer.add_image(
                np.zeros(shape, np.float32),
                name=f"{source.name} uncertainty",
                colormap="magma",
                blending="additive",
                opacity=0.7,
                contrast_limits=(0.0, 1.0),
                **source.geometry,
                metadata={METADATA_KEY: {"role": "uncertainty", "image": source.name}},
            )
            self._own("uncertainty", source, layer)
        return layer


class LayerOutput:
    """A layer's data (numpy or zarr) for the engine to write planes into from a worker thread and
    read them back (Z-linking); writes are dropped once ``edited()`` says the layer is the user's.

    The GUI thread only redraws (``layer.refresh()``), so no whole copy of a stack is needed.
    """

    def __init__(self, data: Any, edited: Callable[[], bool]) -> None:
        self.data, self.edited = data, edited
        self.shape, self.dtype = data.shape, data.dtype

    def __getitem__(self, key: Any) -> Any:
        return self.data[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        if not self.edited():
            self.data[key] = value


def write_planes(layer: napari.layers.Layer, planes: list[tuple[tuple[int, ...], np.ndarray]]) -> None:
    """Write finished planes into a layer's data (numpy or zarr) and redraw it."""
    for index, values in planes:
        layer.data[index] = values
    layer.refresh()
