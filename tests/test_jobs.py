"""The widget's jobs (``_widget/_jobs.py``) are plain generators: they run and are tested without Qt or napari."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from napari_unetseg._widget import _jobs
from napari_unetseg._widget._jobs import FineTuneJob, PreviewSource
from napari_unetseg.checkpoint import load_checkpoint
from napari_unetseg.synthetic import synthetic_nuclei_2d
from napari_unetseg.training import Trainer


def test_fine_tuning_out_of_memory_halves_the_batch(monkeypatch, tiny_instance_checkpoint):
    real_step = Trainer._step

    def step(self):
        if self.config.batch_size > 1:
            raise RuntimeError("CUDA out of memory")
        return real_step(self)

    monkeypatch.setattr(Trainer, "_step", step)
    image, truth = synthetic_nuclei_2d((96, 96), seed=3, radius=9.0, coverage=0.3, photons=500.0, blur=1.0)
    image = image.astype(np.float32)
    job = FineTuneJob([image], [np.where(truth > 0, truth + 1, 1)], load_checkpoint(tiny_instance_checkpoint), 3, "cpu")
    updates = []
    run = job.run()
    with pytest.raises(StopIteration) as end:
        while True:
            updates.append(next(run))
    assert [u.note for u in updates if u.note] == [
        "Out of memory on cpu: continuing with batch size 2.",
        "Out of memory on cpu: continuing with batch size 1.",
    ]
    assert end.value.value.history[-1].iteration == 3


def _preview_job(tiny_instance_checkpoint) -> FineTuneJob:
    image, truth = synthetic_nuclei_2d((96, 96), seed=3, radius=9.0, coverage=0.3, photons=500.0, blur=1.0)
    image = image.astype(np.float32)
    return FineTuneJob(
        [image], [np.where(truth > 0, truth + 1, 1)], load_checkpoint(tiny_instance_checkpoint), 2, "cpu",
        preview=PreviewSource(image, "YX", ()), preview_every=0.0,
    )


def _next_in_thread(run) -> tuple[threading.Thread, list]:
    got: list = []
    thread = threading.Thread(target=lambda: got.append(next(run, None)), daemon=True)
    thread.start()
    return thread, got


def test_fine_tuning_waits_until_the_gui_has_shown_a_preview(monkeypatch, tiny_instance_checkpoint):
    # napari makes and draws the preview layer on its own thread; training beside it would stall napari
    monkeypatch.setattr(_jobs, "PREVIEW_HANDOFF_S", 60.0)
    job = _preview_job(tiny_instance_checkpoint)
    run = job.run()
    first = next(run)
    assert first.preview is not None and first.preview.labels.shape == (96, 96)
    thread, got = _next_in_thread(run)
    thread.join(0.5)
    assert thread.is_alive() and not got  # still waiting for the GUI
    job.preview_shown()
    thread.join(60)
    assert not thread.is_alive()
    assert got[0].progress is not None and got[0].progress.iteration == 2  # training went on


def test_stopping_does_not_wait_for_a_preview_to_show(monkeypatch, tiny_instance_checkpoint):
    monkeypatch.setattr(_jobs, "PREVIEW_HANDOFF_S", 60.0)
    job = _preview_job(tiny_instance_checkpoint)
    run = job.run()
    assert next(run).preview is not None
    thread, got = _next_in_thread(run)
    thread.join(0.5)
    assert thread.is_alive()
    job.stop()
    thread.join(60)
    assert not thread.is_alive() and got  # stopped: the job moved on without the GUI
