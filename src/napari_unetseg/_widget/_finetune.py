"""The Fine-tune panel: train the chosen model on the painted annotations, save a new version, revert."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    Container,
    FileEdit,
    ProgressBar,
    PushButton,
    SpinBox,
)
from qtpy.QtCore import QTimer

from .. import versions
from ..checkpoint import CheckpointError, save_checkpoint
from ..predictor import PlaneResult
from ..options import labels_dtype
from ..targets import painting_advice
from ..training_types import TrainResult
from ._jobs import FineTuneJob, FineTuneUpdate, JobFailed, PreviewSource
from ._layers import (
    ImageSource,
    Note,
    UserError,
    current_plane,
    find_layer,
    notify,
    row,
    write_planes,
)
from ._models import ModelEntry
from ._plot import LossPlot

if TYPE_CHECKING:
    from ._session import Session

PREVIEW_PAUSE_MS = 15  # between the steps of showing a preview: time for napari to draw and answer input


def annotated_planes(source: ImageSource, annotation: Any) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Copies of every image plane with painted pixels and of its annotation (a snapshot to train on)."""
    indices = [index for index in np.ndindex(*source.plane_shape) if np.any(annotation[index])]
    return [np.array(source.data[i]) for i in indices], [np.array(annotation[i]) for i in indices]


class FineTunePanel(Container):
    """Fine-tune on ``session.annotations`` with a live loss curve and preview, Stop, and Revert."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self.iterations = SpinBox(label="iterations", value=200, min=1, max=100_000)
        self.live_preview = CheckBox(text="Live preview of the slice in view", value=True)
        self.save_to = FileEdit(
            label="save as",
            mode="w",
            filter="*.pt",
            nullable=True,
            tooltip="Leave empty to save as the next version (e.g. nuclei-ft1) in your model folder.",
        )
        self.train_button = PushButton(text="Fine-tune")
        self.stop_button = PushButton(text="Stop")
        self.plot = LossPlot()
        plot_box = Container(labels=False)
        plot_box.margins = (0, 0, 0, 0)
        plot_box.native.layout().addWidget(self.plot)
        self.progress = ProgressBar(value=0, min=0, max=1, label=" ")
        self.status = Note()
        self.revert_button = PushButton(text="Revert to previous version", enabled=False)
        super().__init__(
            widgets=[
                self.iterations,
                self.live_preview,
                self.save_to,
                row(self.train_button, self.stop_button),
                plot_box,
                self.progress,
                self.status,
                self.revert_button,
            ]
        )
        self.margins = (0, 0, 0, 0)
        self.runner = session.runner(self.progress, self.status, [self.train_button], self.stop_button)
        self.job: FineTuneJob | None = None
        self._context: dict[str, Any] = {}
        self.train_button.changed.connect(self.fine_tune)
        self.revert_button.changed.connect(self.revert)

    def model_changed(self) -> None:
        """Offer Revert when the chosen model records the one it was fine-tuned from."""
        self.revert_button.enabled = self._parent() is not None

    def fine_tune(self, *_: object) -> None:
        """Fine-tune the chosen model on every annotated plane (a snapshot), in a worker."""
        session = self.session
        inputs = session.job_inputs()
        if inputs is None:
            return
        layer, source, checkpoint = inputs
        try:
            annotation = session.annotations
            if annotation is None:
                raise UserError("There is no annotation layer: click New annotations (or From result) and paint.")
            if tuple(annotation.data.shape) != source.spatial_shape:
                raise UserError(
                    f"The annotations '{annotation.name}' have shape {tuple(annotation.data.shape)} but the image "
                    f"'{source.name}' has shape {source.spatial_shape}: use New annotations to make a matching layer."
                )
            images, annotations = annotated_planes(source, annotation.data)
            if not annotations:
                raise UserError(
                    f"Nothing is painted in '{annotation.name}' yet: paint some background (1) and objects or classes."
                )
        except UserError as exc:
            notify("warning", str(exc))
            return
        entry = session.models.current()
        for advice in painting_advice(annotations, checkpoint.info.mode, fine_tuning=True):
            notify("info", advice)
        here = current_plane(session.viewer, source, layer)
        preview = PreviewSource(source.data, source.axes, here) if self.live_preview.value else None
        self.job = FineTuneJob(
            images, annotations, checkpoint, iterations=self.iterations.value, device=session.settings.engine.device,
            preview=preview,
        )
        self._context = {
            "source": source,
            "annotation_id": annotation.unique_id,
            "annotation": annotation.name,
            "entry": entry,
            "instance": checkpoint.info.mode == "instance",
        }
        self.plot.reset(self.iterations.value)
        self.runner.start(
            self.job.run(),
            total=self.iterations.value,
            description=f"Fine-tuning {entry.name}",
            on_yield=self._on_step,
            on_return=self._on_trained,
            on_finish=self._on_finished,
            stop=self.job.stop,
        )

    def follow_dims(self) -> None:
        """Keep the live preview on the slice in view."""
        job, source = self.job, self._context.get("source")
        if job is None or job.preview is None or source is None:
            return
        viewer = self.session.viewer
        layer = find_layer(viewer, source.layer_id)
        if layer is not None:
            job.preview.index = current_plane(viewer, source, layer)

    def _on_step(self, update: FineTuneUpdate) -> None:
        job = self.job
        if update.note:
            notify("warning", update.note)
        if update.preview is not None and self._context["instance"]:
            self._context["changes"] = (
                f" · preview: {update.added} object(s) added, {update.removed} removed "
                f"against {self._context['entry'].name}"
            )
        step = update.progress
        if step is not None:
            self.plot.add(step.iteration, step.loss, step.val_score, step.validated, step.best_so_far)
            score = "–" if step.val_score is None else f"{step.val_score:.2f}"
            text = (
                f"iteration {step.iteration} / {step.total_iterations} · loss {step.loss:.3f} · "
                f"held-out score {score}{self._context.get('changes', '')}"
            )
            self.runner.advance(step.iteration, step.total_iterations, text)  # may run the end handlers
        if update.preview is not None:  # after the progress: napari's progress bar runs pending events
            preview = update.preview
            QTimer.singleShot(PREVIEW_PAUSE_MS, lambda: self._show_preview(preview, job))

    def _show_preview(self, preview: PlaneResult, job: FineTuneJob | None) -> None:
        """Show a preview plane in a layer of its own, beside the start model's result, so the two can be
        compared; then let the waiting ``job`` go on.

        Making the layer, filling it and drawing it each take napari up to 0.1 s on this thread, so
        each step comes after a short pause in which napari draws and answers input, and training
        resumes only after the last.
        """
        dtype = labels_dtype("instance" if self._context["instance"] else "semantic")
        name = f"fine-tuning {self._context['entry'].name}"
        labels = self.session.owned.labels(self._context["source"], dtype, clear=False, model=name)

        def fill() -> None:
            write_planes(labels, [(preview.index, preview.labels)])
            QTimer.singleShot(PREVIEW_PAUSE_MS, resume)

        def resume() -> None:
            if job is not None:
                job.preview_shown()

        QTimer.singleShot(PREVIEW_PAUSE_MS, fill)

    def _on_trained(self, outcome: TrainResult | JobFailed) -> None:
        if isinstance(outcome, JobFailed):
            self.status.value = "Fine-tuning failed."
            notify("error", outcome.message)
            return
        if not outcome.history:
            self.status.value = "Stopped before the first iteration: nothing was saved."
            notify("info", self.status.value)
            return
        entry = self._context["entry"]
        what = outcome.outcome(entry.name) + self._context.get("changes", "")
        if outcome.improved is False:  # the kept weights are the parent's: no new version to offer
            self.status.value = f"{what[0].upper()}{what[1:]}. Nothing was saved."
            notify("info", self.status.value)
            return
        try:
            key, name = self._save(outcome, entry)
        except (OSError, CheckpointError) as exc:
            self.status.value = "The fine-tuned model could not be saved."
            notify("error", f"Saving the fine-tuned model failed: {exc}")
            return
        self.session.models.select(key)
        self.status.value = f"Saved {name}: {what}. It is now the selected model: Segment to apply it."
        notify("info", f"Saved the fine-tuned model as {name}: {what}.")

    def _save(self, result: TrainResult, parent: ModelEntry) -> tuple[str, str]:
        """Save to the chosen file, else as the next version of ``parent``; returns (model list key, name).

        The checkpoint records its parent's name (and file) so Revert works in a later session too.
        """
        target = self.save_to.value
        result.info.training["parent"] = parent.name
        if parent.kind != "built-in":
            result.info.training["parent_file"] = parent.key
        if target is None or not str(target).strip() or Path(target).is_dir():
            version = versions.save_version(result.model, result.info, parent.name)
            return str(version.path), version.name
        path = Path(target).with_suffix(".pt")
        result.info.name = path.stem
        save_checkpoint(path, result.model, result.info, overwrite=False)
        self.save_to.value = None
        entry = self.session.models.add_file(path)
        return entry.key, entry.name

    def _on_finished(self) -> None:
        self.job = None

    def revert(self, *_: object) -> None:
        """Go back to the model the chosen one was fine-tuned from (the newer version stays saved)."""
        models = self.session.models
        current = models.current()
        parent = self._parent()
        if current is None or parent is None:
            notify("warning", "There is no earlier version to go back to.")
            return
        if parent.kind == "file" and models.find(parent.key) is None:
            try:
                models.add_file(parent.key)
            except CheckpointError as exc:
                notify("error", str(exc))
                return
        models.select(parent.key)
        notify("info", f"Back to {parent.name}. {current.name} stays saved: pick it in the model list to use it again.")

    def _parent(self) -> ModelEntry | None:
        """The model the chosen one was fine-tuned from, as recorded in its checkpoint, if it can be found."""
        try:
            info = self.session.models.current_info()
        except CheckpointError:
            return None
        training = info.training if info is not None else {}
        parent_file, parent = training.get("parent_file"), training.get("parent")
        for key in (parent_file, parent):
            entry = self.session.models.find(key) if key else None
            if entry is not None:
                return entry
        if parent_file and Path(parent_file).is_file():
            return ModelEntry(parent_file, Path(parent_file).stem, "file")
        return None

    def layer_removed(self, layer_id: object) -> None:
        """Say what happens to a running fine-tuning when one of its layers goes away."""
        context = self._context
        if self.job is None or not self.runner.running:
            return
        if layer_id in (context["source"].layer_id, context["annotation_id"]):
            notify(
                "info", "A layer used for fine-tuning was removed: training goes on with the copy taken at the start."
            )
