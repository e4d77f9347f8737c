"""The widget's jobs (``_widget/_jobs.py``) are plain generators: they run and are tested without Qt or napari."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unetseg._widget._jobs import FineTuneJob
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
