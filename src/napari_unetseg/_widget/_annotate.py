"""The Annotate tools: the layer to paint in (new, or started from the result), how to paint for the
chosen model, and "Where to annotate next" (the model's uncertainty as a layer)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import ComboBox, Container, ProgressBar, PushButton

from ..checkpoint import CheckpointError, ModelInfo
from ..options import labels_dtype
from ..targets import result_as_annotation
from ..uncertainty import UncertaintyProgress
from ._jobs import JobFailed, entropy_job
from ._layers import (
    METADATA_KEY,
    ImageSource,
    Note,
    UserError,
    current_plane,
    find_layer,
    layers_of_type,
    notify,
    row,
    write_planes,
)

if TYPE_CHECKING:
    import napari

    from ._session import Session


def convention_text(info: ModelInfo | None) -> str:
    """How to paint for this model, in one line."""
    if info is None or info.mode == "instance":
        return "Paint: 0 = not annotated (ignored) · 1 = background · 2, 3, … = one id per object"
    classes = " · ".join(f"{k} = {name}" for k, name in enumerate(info.class_names, start=1))
    return f"Paint: 0 = not annotated (ignored) · {classes}"


class AnnotatePanel(Container):
    """The annotation layer (``session.annotations``, which fine-tuning trains on), New annotations,
    From result, the painting convention, and Where to annotate next with its progress."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.annotations = ComboBox(label="annotations", choices=self._annotation_choices)
        self.new_button = PushButton(text="New annotations")
        self.from_result_button = PushButton(text="From result")
        self.convention = Note(value=convention_text(None))
        self.uncertainty_button = PushButton(text="Where to annotate next")
        self.uncertainty_stop = PushButton(text="Stop")
        self.progress = ProgressBar(value=0, min=0, max=1, label=" ", visible=False)
        self.status = Note()
        super().__init__(
            widgets=[
                self.annotations,
                row(self.new_button, self.from_result_button),
                self.convention,
                row(self.uncertainty_button, self.uncertainty_stop),
                self.progress,
                self.status,
            ]
        )
        self.margins = (0, 0, 0, 0)
        self.runner = session.runner(self.progress, self.status, [self.uncertainty_button], self.uncertainty_stop)
        self._uncertainty: tuple[Any, ImageSource] | None = None  # the running job's layer id and image
        self.annotations.changed.connect(self._chosen)
        self.new_button.changed.connect(self.new_annotations)
        self.from_result_button.changed.connect(self.from_result)
        self.uncertainty_button.changed.connect(self.where_to_annotate)
        self._chosen(self.annotations.value)

    def _annotation_choices(self, _widget: ComboBox | None = None) -> list[tuple[str, Any]]:
        """Labels layers the user can paint in (not the widget's own result layers)."""
        owned = self.session.owned
        return [(layer.name, layer) for layer in layers_of_type(self.session.viewer, "Labels") if not owned.owns(layer)]

    def _chosen(self, layer: Any) -> None:
        self.session.annotations = layer

    def model_changed(self, info: ModelInfo | None) -> None:
        self.convention.value = convention_text(info)

    def _add_annotations(self, source: ImageSource, data: np.ndarray, first_label: int) -> napari.layers.Labels:
        viewer = self.session.viewer
        layer = viewer.add_labels(
            data,
            name=f"{source.name} annotations",
            **source.geometry,
            metadata={METADATA_KEY: {"role": "annotations", "image": source.name}},
        )
        layer.brush_size = 6
        layer.selected_label = first_label
        layer.mode = "paint"
        viewer.layers.selection.active = layer
        self.annotations.reset_choices()
        self.annotations.value = layer
        return layer

    def _source_and_mode(self) -> tuple[ImageSource, str] | None:
        """The chosen image and the chosen model's mode; None (after a notification) if either is missing."""
        try:
            source = self.session.source()
            info = self.session.models.current_info()
        except (UserError, CheckpointError) as exc:
            notify("warning", str(exc))
            return None
        return source, info.mode if info is not None else "instance"

    def new_annotations(self, *_: object) -> None:
        """Add an empty "<image> annotations" layer matching the image, with the brush ready."""
        chosen = self._source_and_mode()
        if chosen is not None:
            source, mode = chosen
            first = 2 if mode == "instance" else 1
            self._add_annotations(source, np.zeros(source.spatial_shape, labels_dtype(mode)), first)

    def from_result(self, *_: object) -> None:
        """Start annotations from the segmentation result so only mistakes need painting.

        See :func:`~.targets.result_as_annotation`; planes that were not segmented (the session's
        ``segmented``) stay 0 (not annotated).
        """
        chosen = self._source_and_mode()
        if chosen is None:
            return
        source, mode = chosen
        result = self.session.owned.get("labels", source)
        if result is None:
            notify("warning", f"There is no result for '{source.name}' yet: click Segment first.")
            return
        data = result_as_annotation(result.data, mode)
        done = self.session.segmented.get(result.unique_id)
        if source.plane_shape and done is not None:
            for index in np.ndindex(*source.plane_shape):
                if index not in done:
                    data[index] = 0
        self._add_annotations(source, data, int(data.max()) + 1 if mode == "instance" else 1)

    # -- where to annotate next

    def where_to_annotate(self, *_: object) -> None:
        """Add "<image> uncertainty": where the model hesitates (entropy), the best places to paint next."""
        session = self.session
        inputs = session.job_inputs()
        if inputs is None:
            return
        layer, source, checkpoint = inputs
        target = session.owned.uncertainty(source)
        order = source.all_planes(first=current_plane(session.viewer, source, layer))
        self._uncertainty = (target.unique_id, source)
        job = entropy_job(source.data, checkpoint, session.settings.engine, axes=source.axes, order=order)
        self.progress.visible = True
        self.runner.start(
            job,
            total=len(order),
            description=f"Uncertainty of {source.name}",
            on_yield=self._on_entropy,
            on_return=self._on_entropy_done,
            on_finish=self._on_entropy_finished,
        )

    def _on_entropy(self, update: UncertaintyProgress) -> None:
        if update.note:
            notify("warning", update.note)
        layer = find_layer(self.session.viewer, self._uncertainty[0]) if self._uncertainty else None
        if layer is not None:
            write_planes(layer, update.planes)
        self.runner.advance(update.done, update.total, f"uncertainty: {update.done} / {update.total} slices")

    def _on_entropy_done(self, outcome: int | JobFailed) -> None:
        if isinstance(outcome, JobFailed):
            self.status.value = "The uncertainty could not be computed."
            notify("error", outcome.message)
            return
        self.status.value = "Bright = the model hesitates: paint corrections there first."

    def _on_entropy_finished(self) -> None:
        self._uncertainty = None
        self.progress.visible = False

    def layer_removed(self, layer_id: object) -> None:
        """Stop the uncertainty job if its image or its layer was just deleted."""
        if self._uncertainty is None or not self.runner.running:
            return
        target, source = self._uncertainty
        if layer_id in (target, source.layer_id):
            notify("warning", f"A layer of '{source.name}' was removed, so the uncertainty computation stopped.")
            self.runner.stop()
