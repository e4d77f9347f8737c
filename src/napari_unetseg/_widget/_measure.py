"""The measurements of a result layer: its ``features`` table, the object count and "Save measurements (CSV)".

The table (see :mod:`..measurements`) goes into the Labels layer's ``features`` with an ``index``
column holding the label values, which is how napari matches rows to labels: the status bar,
napari's features table widget and other plugins show each object's row.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.application import use_app
from magicgui.widgets import Container, PushButton

from ..measurements import Table, measure_objects, unit_label, write_csv
from ._layers import Note, UserError, find_layer, image_source, notify

if TYPE_CHECKING:
    import napari

    from ._session import Session


def layer_table(labels: napari.layers.Labels, image: napari.layers.Image | None, read_lazy: bool = True) -> Table:
    """The measurements of a labels layer, with the image layer's intensities and the labels' scale and unit.

    The physical size column comes when the spatial axes share a unit, unless that is pixels of
    size 1 (the 3D sample, in pixels with a Z scale of 2, gets ``volume_px3``).

    Without ``read_lazy`` a lazily loaded image (dask, zarr) gives no intensities: reading it whole
    can take long, so that waits for an explicit Save.
    """
    source = image_source(image) if image is not None else None
    pixels = None if source is None or source.spatial_shape != labels.data.shape else source.data
    if not read_lazy and not isinstance(pixels, np.ndarray):
        pixels = None
    axes = "TZYX"[4 - labels.ndim :]
    units = {unit_label(str(unit)) for unit, axis in zip(labels.units, axes) if axis != "T"}
    unit = units.pop() if len(units) == 1 else None  # axes in different units: no physical size
    scale = tuple(float(s) for s in labels.scale)
    physical = unit is not None and (unit != "px" or any(s != 1 for s, axis in zip(scale, axes) if axis != "T"))
    return measure_objects(labels.data, pixels, axes=axes, scale=scale if physical else None, unit=unit)


class MeasurePanel(Container):
    """"N objects" of the latest result and the button that saves its measurements as a CSV file.

    It follows the session: a result that starts is forgotten, a result that is ready is measured.
    """

    def __init__(self, session: Session) -> None:
        self.session = session
        self.count = Note(value="")
        self.save_button = PushButton(
            text="Save measurements (CSV)", enabled=False,
            tooltip="One row per object: size, centroid, bounding box and intensity, measured now (with your edits).",
        )
        super().__init__(widgets=[self.count, self.save_button], labels=False)
        self.margins = (0, 0, 0, 0)
        self._ids: tuple[Any, Any] | None = None  # labels layer id, image layer id
        self.save_button.changed.connect(self.save)
        session.result_started.connect(self.forget)
        session.result_ready.connect(self.measure)

    def measure(self, labels: napari.layers.Labels, image: napari.layers.Image | None) -> None:
        """Measure a finished result: its layer's ``features`` get the table, the panel its object count."""
        self._ids = (labels.unique_id, None if image is None else image.unique_id)
        if not isinstance(labels.data, np.ndarray):  # a zarr layer larger than memory
            self.count.value = "Too large to measure here: use 'unetseg measure' on the saved labels."
            return
        self._update(labels, layer_table(labels, image, read_lazy=False))
        self.save_button.enabled = True
        if image is not None and not isinstance(image_source(image).data, np.ndarray):
            self.count.value = f"{self.count.value} Intensities are measured when you save (the image is on disk)."

    def forget(self, labels: napari.layers.Labels) -> None:
        """A new segmentation starts in ``labels``: its old table no longer holds."""
        labels.features = {}
        self._ids = None
        self.count.value = ""
        self.save_button.enabled = False

    def _update(self, labels: napari.layers.Labels, table: Table) -> None:
        labels.features = {"index": table["label"], **table}
        self.count.value = f"{_objects(len(table['label']))} in '{labels.name}'."

    def save(self, *_: object) -> None:
        """Measure the result as it is now (painted corrections included) and save the table where the user says."""
        viewer = self.session.viewer
        labels = None if self._ids is None else find_layer(viewer, self._ids[0])
        if labels is None:
            notify("warning", "There is no result to measure: segment an image first.")
            return
        path = self.ask_csv_path(f"{labels.name}.csv")
        if not path:
            return
        try:
            table = layer_table(labels, find_layer(viewer, self._ids[1]))
            write_csv(table, path, overwrite=True)  # the save dialog asked before replacing a file
        except (UserError, ValueError, OSError) as exc:
            notify("error", f"Saving the measurements failed: {exc}")
            return
        self._update(labels, table)
        notify("info", f"Saved the measurements of {_objects(len(table['label']))} to {path}.")

    def ask_csv_path(self, name: str) -> str | None:
        """A save dialog for the CSV file (tests replace this)."""
        show = use_app().get_obj("show_file_dialog")
        return show("w", caption="Save measurements", start=str(Path.home() / name), filter="CSV files (*.csv)")


def _objects(count: int) -> str:
    return f"{count} object{'s' * (count != 1)}"
