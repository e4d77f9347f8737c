"""What the widget's panels share, and nothing more: the viewer, the layers the widget owns, evented
settings and the status of the job that runs (one at a time).

Panels take a :class:`Session`, never the whole widget or each other (as careamics-napari keeps its
settings and run status as data that widgets listen to). A panel that finishes something another one
uses says so through the session's signals (``result_started``, ``result_ready``), and reads what another
one made through the session's data (``segmented``, ``annotations``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from magicgui.widgets import Label, ProgressBar, PushButton
from psygnal import Signal, evented

from ..checkpoint import Checkpoint, CheckpointError
from ..engine_settings import EngineSettings
from ._layers import ImageSource, OwnedLayers, UserError, image_source, notify
from ._runner import JobRunner, JobStatus

if TYPE_CHECKING:
    import napari

    from ._models import ModelPicker


@evented
@dataclass
class PanelSettings:
    """The settings the panels share; ``events.engine`` fires when the engine settings change.

    ``engine`` is replaced whole (it is frozen): the top device box and the Segment panel's batch
    and tile boxes write it, and every job reads it.
    """

    engine: EngineSettings = field(default_factory=EngineSettings)

    def change_engine(self, **changes: Any) -> None:
        """Replace ``engine`` by a copy with ``changes`` (no event when nothing changes)."""
        engine = self.engine.with_changes(**changes)
        if engine != self.engine:
            self.engine = engine


class Session:
    """The viewer, the widget's own layers, the shared choices and settings, and the job status.

    ``segmented`` maps a result layer's ``unique_id`` to the planes segmented into it (Segment
    writes it, "From result" reads it); ``annotations`` is the Labels layer chosen to paint in.
    ``status_changed`` fires with each new :class:`JobStatus`.
    """

    status_changed = Signal(JobStatus)
    result_started = Signal(object)  # labels layer: a new segmentation starts writing it
    result_ready = Signal(object, object)  # labels layer, image layer (or None): a segmentation finished

    def __init__(
        self,
        viewer: napari.viewer.Viewer,
        owned: OwnedLayers,
        models: ModelPicker,
        chosen_image: Callable[[], Any],
        settings: PanelSettings | None = None,
    ) -> None:
        self.viewer = viewer
        self.owned = owned
        self.models = models
        self.settings = settings if settings is not None else PanelSettings()
        self.segmented: dict[Any, set[tuple[int, ...]]] = {}
        self.annotations: Any = None
        self._chosen_image = chosen_image
        self._status = JobStatus.IDLE
        self._runners: list[JobRunner] = []

    @property
    def status(self) -> JobStatus:
        return self._status

    @status.setter
    def status(self, value: JobStatus) -> None:
        if value is not self._status:
            self._status = value
            self.status_changed.emit(value)

    def busy(self) -> bool:
        """Whether a segmentation, fine-tuning or uncertainty job is running."""
        return self._status is JobStatus.RUNNING

    @property
    def image(self) -> Any:
        """The image layer chosen at the top of the widget (None if there is none)."""
        return self._chosen_image()

    def source(self) -> ImageSource:
        """The chosen image as a job's input; :class:`UserError` when there is none or it cannot be used."""
        return image_source(self.image)

    def runner(self, progress: ProgressBar, status: Label, start: list[PushButton], stop: PushButton) -> JobRunner:
        """A job runner for a panel, setting this session's status; the session stops them all on close."""
        runner = JobRunner(progress, status, start, stop, on_status=self._set_status)
        self._runners.append(runner)
        return runner

    def _set_status(self, value: JobStatus) -> None:
        self.status = value

    def job_inputs(self) -> tuple[Any, ImageSource, Checkpoint] | None:
        """The chosen image layer, its planes and the chosen model for a new job.

        ``None`` (after a notification saying why) when a job is running, no image is chosen or
        the model does not load.
        """
        if self.busy():
            notify("info", "Another job is running: wait for it or stop it first.")
            return None
        try:
            layer = self.image
            return layer, image_source(layer), self.models.checkpoint()
        except UserError as exc:
            notify("warning", str(exc))
        except CheckpointError as exc:
            notify("error", str(exc))
        return None

    def close(self) -> None:
        """Stop every running job (the dock widget was closed)."""
        for runner in self._runners:
            if runner.worker is not None:
                runner.worker.quit()
