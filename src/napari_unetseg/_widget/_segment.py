"""The Segment panel: run the chosen model over an image layer into its "<image> labels (<model>)" layer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FloatSpinBox,
    ProgressBar,
    PushButton,
    SpinBox,
)

from ..engine_settings import EngineSettings
from ..inference import Z_METHODS
from ..predictor import BatchProgress
from ..provenance import make_record
from ._jobs import JobFailed, SegmentOutcome, objects_3d_job, segment_job
from ._keys import SEGMENT_KEY_LABEL
from ._layers import (
    METADATA_KEY,
    ImageSource,
    Note,
    current_plane,
    find_layer,
    largest_label,
    notify,
)
from ._runner import JobStatus
from ._settings import remember_model

if TYPE_CHECKING:
    from ._session import Session


class SegmentPanel(Container):
    """Segment button, "this slice only", "3D objects" and the objects' diameter (images with a Z axis),
    advanced options (batch, tile, 3D method), progress, Cancel and Copy command (the ``unetseg
    segment`` call that makes the selected result again).

    The batch and tile boxes write the session's engine settings, which every job reads.
    """

    def __init__(self, session: Session) -> None:
        self.session = session
        engine = session.settings.engine
        self.this_slice = CheckBox(text="This slice only", value=False)
        self.show_advanced = CheckBox(text="Advanced options", value=False)
        self.batch_size = SpinBox(
            label="batch size",
            value=engine.batch_size or EngineSettings().batch_size,
            min=1,
            max=256,
            tooltip="Planes or tiles per step; lower it if memory runs out.",
        )
        self.tile_size = SpinBox(
            label="tile size",
            value=engine.tile_size,
            min=64,
            max=16384,
            step=64,
            tooltip="Larger planes are cut into tiles of this many pixels (with overlap).",
        )
        self.objects_3d = CheckBox(
            text="3D objects",
            value=True,
            tooltip="Instance models on Z stacks: one id per object in 3D (the voxel size is the layer's scale). "
            "Off: objects of each slice on their own.",
        )
        self.diameter = FloatSpinBox(
            label="diameter",
            value=0.0,
            min=0.0,
            max=10000.0,
            step=1.0,
            tooltip="The objects' diameter in XY pixels (instance models): images whose objects are much larger "
            "than the model's are shrunk to its size, and the labels resized back; auto measures it from a first "
            "pass over a few planes.",
        )
        self.diameter.native.setSpecialValueText("auto")  # shown for 0
        self.objects_3d.visible = False
        self.size_options = Container(widgets=[self.objects_3d, self.diameter], layout="horizontal")
        self.size_options.margins = (0, 0, 0, 0)
        self.z_method = ComboBox(
            label="3D method",
            choices=Z_METHODS,
            value=Z_METHODS[0],
            tooltip="consensus: XY, XZ and YZ planes through the network, then 3D instances (best on near-cubic "
            "voxels); linking: each slice's objects take the id of the object they overlap in the slice before.",
        )
        self.advanced = Container(widgets=[self.batch_size, self.tile_size, self.z_method], visible=False)
        self.run_button = PushButton(
            text="Segment", tooltip=f"Segment the image with the model ({SEGMENT_KEY_LABEL} in the viewer)"
        )
        self.cancel_button = PushButton(text="Cancel")
        self.copy_button = PushButton(
            text="Copy command", tooltip="Copy the 'unetseg segment' command that makes the selected result again"
        )
        self.progress = ProgressBar(value=0, min=0, max=1)
        self.status = Note()
        buttons = Container(
            widgets=[self.run_button, self.cancel_button, self.copy_button], layout="horizontal", labels=False
        )
        buttons.margins = (0, 0, 0, 0)
        super().__init__(
            widgets=[
                self.this_slice, self.size_options, self.show_advanced, self.advanced, buttons, self.progress,
                self.status,
            ],
            labels=False,
        )
        self.margins = (0, 0, 0, 0)
        self.runner = session.runner(self.progress, self.status, [self.run_button], self.cancel_button)
        self.batch_size.changed.connect(lambda value: session.settings.change_engine(batch_size=int(value)))
        self.tile_size.changed.connect(lambda value: session.settings.change_engine(tile_size=int(value)))
        session.settings.events.engine.connect(self._engine_changed)
        self.show_advanced.changed.connect(self._toggle_advanced)
        self.run_button.changed.connect(self.run)
        self.copy_button.changed.connect(self.copy_command)
        self._target: tuple[Any, Any, str] | None = None  # labels layer id, image layer id, image name
        self._done = (0, 0)  # planes done, total of the running job
        self._three_d = False  # whether the running (or last) job makes 3D objects by consensus

    def _engine_changed(self, engine: Any) -> None:
        """Show engine settings changed elsewhere (a script, the session) in the boxes."""
        if engine.batch_size is not None:
            self.batch_size.value = engine.batch_size
        self.tile_size.value = engine.tile_size

    def _toggle_advanced(self, shown: bool) -> None:
        self.advanced.visible = bool(shown)

    def image_changed(self, source: ImageSource | None) -> None:
        """Offer "3D objects" only for images with a Z axis."""
        self.objects_3d.visible = source is not None and "Z" in source.axes

    def run(self, *_: object) -> None:
        """Start segmenting the chosen image (or its plane on screen) with the chosen model."""
        session = self.session
        inputs = session.job_inputs()
        if inputs is None:
            return
        layer, source, checkpoint = inputs
        entry = session.models.current()
        if entry is not None:
            remember_model(entry.key)
        instance = checkpoint.info.mode == "instance"
        here = current_plane(session.viewer, source, layer)
        single = self.this_slice.value and bool(source.plane_shape)
        order = [here] if single else source.all_planes(first=here)
        dtype = np.dtype(np.uint32 if instance else np.uint8)
        labels = session.owned.labels(source, dtype, clear=not single, model=entry.name if entry is not None else None)
        done = session.segmented.setdefault(labels.unique_id, set())
        session.result_started.emit(labels)
        id_offset = 0
        if single:
            labels.data[here] = 0
            id_offset = largest_label(labels.data) if instance else 0
        else:
            done.clear()
        three_d = self.objects_3d.value and instance and not single and "Z" in source.axes
        z_method = self.z_method.value if three_d else None
        if z_method == "consensus" and not isinstance(labels.data, np.ndarray):  # a result kept on disk
            z_method = "linking"
            notify("info", "This stack is too large to hold in memory for the consensus method, so its objects are "
                   "linked slice to slice instead.")
        engine = session.settings.engine
        diameter = self.diameter.value or "auto"
        parameters = {
            **engine.as_record(), "axes": source.axes, "stitch_z": three_d, "shape": list(source.data.shape),
            "diameter": diameter, **({"slice": list(here)} if single else {}),
        }
        out = session.owned.output(labels)
        if z_method == "consensus":
            voxels = voxel_size(source)
            parameters.update(z_method=z_method, voxel_size=voxels)
            job = objects_3d_job(source.data, checkpoint, out, engine, axes=source.axes, voxel_size=voxels,
                                 diameter=diameter)
        else:
            parameters.update({"z_method": z_method} if three_d else {})
            job = segment_job(
                source.data, checkpoint, out, engine, axes=source.axes, order=order, id_offset=id_offset,
                link_z=three_d, diameter=diameter,
            )
        record = make_record(checkpoint, parameters, getattr(layer.source, "path", None))
        labels.metadata[METADATA_KEY] = {**labels.metadata.get(METADATA_KEY, {}), **record}
        self._target = (labels.unique_id, source.layer_id, source.name)
        self._done = (0, len(order))
        self._three_d = z_method == "consensus"
        session.viewer.layers.selection.active = labels
        self.runner.start(
            job,
            total=len(order),
            description=f"Segmenting {source.name}",
            on_yield=self._on_update,
            on_return=self._on_outcome,
            on_finish=self._on_finished,
        )

    def copy_command(self, *_: object) -> None:
        """Put the command recorded in the selected result layer on the clipboard."""
        from qtpy.QtWidgets import QApplication

        layer = self.session.viewer.layers.selection.active
        command = (getattr(layer, "metadata", None) or {}).get(METADATA_KEY, {}).get("command")
        if command is None:
            notify("info", "Select a layer made by Segment to copy the command that makes it again.")
            return
        QApplication.clipboard().setText(command)
        notify("info", f"Copied to the clipboard: {command}")

    def _on_update(self, update: BatchProgress) -> None:
        if self._target is None:
            return
        layer = find_layer(self.session.viewer, self._target[0])
        if layer is None:
            return
        if self.session.owned.edited(layer):  # painted in while the job ran: the layer is the user's now
            if not self.runner.stopped:
                notify("warning", f"You painted in '{layer.name}' while it was being segmented, so the "
                       "segmentation stopped and left your strokes as they are.")
                self.runner.stop()
            return
        self.session.segmented.setdefault(layer.unique_id, set()).update(p.index for p in update.planes)
        if update.planes:  # the job wrote them into the layer's data
            layer.refresh()
        self._done = (update.done, update.total)
        if update.note:
            notify("warning", update.note)
        unit = "network planes" if self._three_d else "slices"
        # last: napari's progress bar may deliver the job's end (outcome, finished) from inside this call
        self.runner.advance(update.done, update.total, f"{update.done} / {update.total} {unit}")

    def _on_outcome(self, outcome: SegmentOutcome | JobFailed) -> None:
        target = self._target
        if isinstance(outcome, JobFailed):
            self.status.value = "Segmentation failed."
            notify("error", outcome.message)
            return
        viewer = self.session.viewer
        layer = find_layer(viewer, target[0]) if target else None
        if layer is not None:
            layer.refresh()
            self.session.result_ready.emit(layer, find_layer(viewer, target[1]))
        seconds = self.runner.elapsed
        found = f", {largest_label(layer.data)} 3D objects" if self._three_d and layer is not None else ""
        self.status.value = f"Done: {outcome.total} slice{'s' * (outcome.total != 1)}{found} in {seconds:.1f} s."

    def _on_finished(self) -> None:
        self._target = None
        if self.session.status is JobStatus.CANCELLED:
            unit = "network planes" if self._three_d else "slices"
            self.status.value = f"Cancelled after {self._done[0]} of {self._done[1]} {unit}."

    def layer_removed(self, layer_id: object) -> None:
        """Stop the running job if its image or labels layer was just deleted."""
        if self._target is None or layer_id not in self._target[:2] or not self.runner.running:
            return
        what = "image" if layer_id == self._target[1] else "labels layer"
        notify("warning", f"The {what} of '{self._target[2]}' was removed, so its segmentation stopped.")
        self.runner.stop()


def voxel_size(source: ImageSource) -> tuple[float, float, float]:
    """The (Z, Y, X) voxel size of an image with a Z axis, from its layer's scale."""
    spatial = source.axes.replace("C", "")
    scale = source.geometry["scale"]
    return tuple(float(scale[spatial.index(axis)]) for axis in "ZYX")  # type: ignore[return-value]
