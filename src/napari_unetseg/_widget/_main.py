"""The U-Net Segmentation dock widget: the shared choices (image, model, device), the session the panels
share, and the panels (Segment, measurements, Annotate, Fine-tune)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox, Container, Label

from ..checkpoint import CheckpointError
from ..device import explain_devices
from ..engine_settings import EngineSettings
from ..imaging import image_imaging
from ._annotate import AnnotatePanel
from ._finetune import FineTunePanel
from ._keys import bind_segment_key
from ._layers import (
    Note,
    OwnedLayers,
    UserError,
    current_plane,
    image_source,
    layers_of_type,
)
from ._measure import MeasurePanel
from ._models import ModelPicker
from ._runner import preload_first_jobs
from ._segment import SegmentPanel
from ._session import PanelSettings, Session
from ._settings import preferred_device

if TYPE_CHECKING:
    import napari

__all__ = ["UNetSegWidget"]


class UNetSegWidget(Container):
    """U-Net Segmentation: pick an image, a model and a device, then Segment or Annotate & fine-tune.

    Child widgets are attributes (``image``, ``models.model``, ``device``, ``segment.run_button``,
    ``measure.save_button``, ``annotate.new_button``, ``finetune.train_button``...) so scripts and tests
    can set values and call the handlers; ``session`` holds what the panels share (settings, status).
    """

    def __init__(self, viewer: napari.viewer.Viewer) -> None:
        preload_first_jobs()  # first: it overlaps the building of the panels
        super().__init__(labels=False)
        self.viewer = viewer
        self.owned = OwnedLayers(viewer, on_change=self.reset_choices)
        self.image = ComboBox(label="image", choices=self._image_choices)
        self.models = ModelPicker()
        report = explain_devices()
        self.device = ComboBox(label="device", choices=report.devices, value=preferred_device(report.devices))
        self.device_report = Note(value=report.summary(), tooltip="What PyTorch can use on this computer.")
        settings = PanelSettings(EngineSettings(device=self.device.value))
        self.session = Session(viewer, self.owned, self.models, lambda: self.image.value, settings)
        self.device.changed.connect(lambda device: settings.change_engine(device=device))
        self.segment = SegmentPanel(self.session)
        self.measure = MeasurePanel(self.session)
        self.annotate = AnnotatePanel(self.session)
        self.finetune = FineTunePanel(self.session)
        top = Container(widgets=[self.image, self.models, self.device])
        top.margins = (0, 0, 0, 0)
        self.extend(
            [
                top,
                self.device_report,
                _heading("Segment"),
                self.segment,
                self.measure,
                _heading("Annotate & fine-tune"),
                self.annotate,
                self.finetune,
            ]
        )
        self.models.model.changed.connect(self._model_changed)
        self.image.changed.connect(self._image_changed)
        self._image_changed()
        self._model_changed()
        self._events = [
            (viewer.layers.events.inserted, self._layers_changed),
            (viewer.layers.events.removed, self._layer_removed),
            (viewer.layers.events.reordered, self._layers_changed),
            (viewer.dims.events.current_step, self._dims_changed),
        ]
        for event, handler in self._events:
            event.connect(handler)
        for layer in viewer.layers:
            layer.events.name.connect(self._layers_changed)
        self._unbind_segment_key = bind_segment_key(viewer, self._segment_key)
        self.native.destroyed.connect(self._closed)

    def _segment_key(self) -> None:
        """The Segment shortcut: a click on the Segment button, so nothing while it is disabled (a job runs)."""
        if self.segment.run_button.enabled:
            self.segment.run()

    def _image_choices(self, _widget: ComboBox | None = None) -> list[tuple[str, Any]]:
        return [(layer.name, layer) for layer in layers_of_type(self.viewer, "Image") if not self.owned.owns(layer)]

    def busy(self) -> bool:
        """Whether a segmentation, fine-tuning or uncertainty job is running."""
        return self.session.busy()

    def _image_kind(self) -> str | None:
        """Whether the chosen image looks like fluorescence or EM (its plane on screen); None if unclear."""
        layer = self.image.value
        try:
            source = image_source(layer)
        except UserError:
            return None
        plane = np.asarray(source.data[current_plane(self.viewer, source, layer)])
        return image_imaging(plane.mean(axis=-1) if "C" in source.axes else plane)

    def _image_changed(self, *_: object) -> None:
        try:
            self.segment.image_changed(image_source(self.image.value))
        except UserError:
            self.segment.image_changed(None)
        if not self.models.chosen_by_user:  # follow the image until the user picks a model
            self.models.preselect(self._image_kind())

    def _model_changed(self, *_: object) -> None:
        try:
            info = self.models.current_info()
        except CheckpointError:
            info = None
        self.annotate.model_changed(info)
        self.finetune.model_changed()

    def _layers_changed(self, event: Any = None) -> None:
        if event is not None and getattr(event, "type", "") == "inserted":
            event.value.events.name.connect(self._layers_changed)
        self.reset_choices()

    def _layer_removed(self, event: Any) -> None:
        layer_id = event.value.unique_id
        self.segment.layer_removed(layer_id)
        self.annotate.layer_removed(layer_id)
        self.finetune.layer_removed(layer_id)
        self.reset_choices()

    def _dims_changed(self, *_: object) -> None:
        self.finetune.follow_dims()

    def _closed(self, *_: object) -> None:
        """The dock widget was closed: stop listening to the viewer and stop running jobs."""
        for event, handler in self._events:
            event.disconnect(handler)
        for layer in self.viewer.layers:
            layer.events.name.disconnect(self._layers_changed)
        self._unbind_segment_key()
        self.session.close()


def _heading(text: str) -> Label:
    label = Label(value=f"<b>{text}</b>")
    label.native.setContentsMargins(0, 8, 0, 0)
    return label
