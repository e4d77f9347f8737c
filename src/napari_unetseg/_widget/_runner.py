"""Runs one job at a time in a napari worker thread, with progress in the widget and napari's activity panel."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator
from enum import Enum
from typing import Any

from magicgui.widgets import Label, ProgressBar, PushButton

from ._jobs import JobFailed
from ._settings import job_threads


_PRELOADS: list[threading.Thread] = []


def preload_first_jobs() -> None:
    """Do the first jobs' one-time imports as the widget opens, not in a click or a job, where they hold
    Python's lock and stall napari: pandas, which napari's first Labels layer imports (0.4 s), here while
    the plugin loads; ``torch._dynamo``, which PyTorch's first optimizer imports (0.9 s), in a daemon
    thread started first, so that most of it overlaps the widget's own building. Jobs wait for that
    thread (:func:`wait_for_preloads`): two threads importing parts of PyTorch at once could meet in its
    circular imports. A failure is left for the job that needs the module to report."""

    def preload_training() -> None:
        try:
            from ..training import preload

            preload()
        except Exception:  # the job that needs it fails with a message of its own
            pass

    thread = threading.Thread(target=preload_training, name="unetseg-preload", daemon=True)
    _PRELOADS[:] = [*(t for t in _PRELOADS if t.is_alive()), thread]
    thread.start()
    import pandas  # noqa: F401


def wait_for_preloads() -> None:
    """Wait until the imports started by :func:`preload_first_jobs` are done (at once after the first second)."""
    for thread in list(_PRELOADS):
        thread.join()


class JobStatus(Enum):
    """How a job stands; the runner sets it, panels read it (a stopped job ends ``CANCELLED``)."""

    IDLE = "idle"
    RUNNING = "running"
    DONE = "done"
    CANCELLED = "cancelled"
    FAILED = "failed"


def end_status(outcome: Any, stopped: bool) -> JobStatus:
    """How a job ended: ``FAILED`` if it returned a failure (a ``JobFailed``), ``CANCELLED`` if it was
    stopped or returned nothing, else ``DONE``."""
    if isinstance(outcome, JobFailed):
        return JobStatus.FAILED
    return JobStatus.CANCELLED if stopped or outcome is None else JobStatus.DONE


class JobRunner:
    """Owns a worker: starts it, relays its updates on the GUI thread, and stops it on request.

    ``start_buttons`` are disabled while a job runs and ``stop_button`` enabled. Stopping calls the
    job's own ``stop`` if one was given (e.g. training, which then returns its best weights), else
    ``worker.quit()``, which takes effect at the job's next yield. ``on_status`` hears the job's
    :class:`JobStatus`: ``RUNNING`` at the start, then how it ended, before the panel's ``on_finish``.
    """

    def __init__(
        self,
        progress: ProgressBar,
        status: Label,
        start_buttons: list[PushButton],
        stop_button: PushButton,
        on_status: Callable[[JobStatus], None] = lambda _: None,
    ) -> None:
        self.progress = progress
        self.status = status
        self.start_buttons = start_buttons
        self.stop_button = stop_button
        self.worker: Any = None
        self.stopped = False
        self.on_status = on_status
        self._outcome: Any = None
        self._pbar: Any = None
        self._started = 0.0
        self._stop: Callable[[], None] | None = None
        self._on_return: Callable[[Any], None] = lambda _: None
        self._on_finish: Callable[[], None] = lambda: None
        stop_button.enabled = False
        stop_button.changed.connect(self.stop)

    @property
    def running(self) -> bool:
        return self.worker is not None

    def start(
        self,
        job: Generator[Any, None, Any],
        *,
        total: int,
        description: str,
        on_yield: Callable[[Any], None],
        on_return: Callable[[Any], None],
        on_finish: Callable[[], None] = lambda: None,
        stop: Callable[[], None] | None = None,
    ) -> None:
        """Run ``job`` in a thread; ``on_yield``/``on_return`` get its updates and outcome on the GUI thread."""
        from napari.qt.threading import create_worker
        from napari.utils import progress

        def drive() -> Generator[Any, None, Any]:
            import torch

            wait_for_preloads()
            # set as each job starts, so a changed setting applies to the next job
            torch.set_num_threads(job_threads())
            return (yield from job)

        self.stopped = False
        self._outcome = None
        self._stop = stop
        self._on_return, self._on_finish = on_return, on_finish
        self._started = time.monotonic()
        self._pbar = progress(total=total, desc=description)
        self.progress.max = max(total, 1)
        self.progress.value = 0
        self.status.value = f"{description}…"
        worker = create_worker(drive, _start_thread=False)
        worker.yielded.connect(on_yield)
        worker.returned.connect(self._returned)
        worker.finished.connect(self._finished)
        self.worker = worker
        for button in self.start_buttons:
            button.enabled = False
        self.stop_button.enabled = True
        self.on_status(JobStatus.RUNNING)
        worker.start()

    def advance(self, done: int, total: int, text: str) -> None:
        """Show ``done`` of ``total`` with ``text`` and the time left, here and in the activity panel."""
        if self.worker is None:  # a late update after the job ended
            return
        self.progress.max = max(total, 1)
        self.progress.value = min(done, total)
        self.status.value = f"{text} · {self.time_left(done, total)}" if 0 < done < total else text
        if self._pbar is not None:  # last: napari's progress may handle pending events (even our end)
            self._pbar.total = total
            self._pbar.update(done - self._pbar.n)

    def time_left(self, done: int, total: int) -> str:
        """A plain estimate of the remaining time from the pace so far."""
        seconds = (time.monotonic() - self._started) / max(done, 1) * (total - done)
        return f"about {seconds:.0f} s left" if seconds < 120 else f"about {seconds / 60:.0f} min left"

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._started

    def stop(self, *_: object) -> None:
        """Ask the running job to stop (within one batch or iteration)."""
        if self.worker is None or self.stopped:
            return
        self.stopped = True
        self.stop_button.enabled = False
        self.status.value = "Stopping…"
        if self._stop is not None:
            self._stop()
        else:
            self.worker.quit()

    def _returned(self, outcome: Any) -> None:
        self._outcome = outcome
        self._on_return(outcome)

    def _finished(self) -> None:
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
        self.worker = None
        for button in self.start_buttons:
            button.enabled = True
        self.stop_button.enabled = False
        self.on_status(end_status(self._outcome, self.stopped))
        self._on_finish()
