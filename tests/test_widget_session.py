"""The session the widget's panels share: the job status each job ends with, the engine settings the
boxes write and the jobs read, and the segmented planes that Segment leaves for "From result".

Runs under Xvfb like test_widget.py; a stand-in network (ThresholdNet) makes the objects exact.
"""

from __future__ import annotations

import numpy as np
import pytest

napari = pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from test_widget import (  # noqa: E402, F401  (fixtures used by name)
    notes,
    one_torch_thread,
    private_settings,
    small_2d,
    small_3d,
    text,
    threshold_model,
    versions_root,
    viewer_widget,
    wait_idle,
)

from napari_unetseg._widget import _jobs  # noqa: E402
from napari_unetseg._widget._runner import JobStatus  # noqa: E402

pytestmark = pytest.mark.gui


def statuses(widget) -> list[JobStatus]:
    """Every status the session announces from now on."""
    seen: list[JobStatus] = []
    widget.session.status_changed.connect(seen.append)
    return seen


def test_a_finished_job_ends_done(qtbot, viewer_widget, monkeypatch):
    viewer, widget = viewer_widget
    viewer.add_image(small_2d()[0], name="cells")
    threshold_model(widget, monkeypatch)
    seen = statuses(widget)
    assert widget.session.status is JobStatus.IDLE
    widget.segment.run()
    wait_idle(qtbot, widget)
    assert seen == [JobStatus.RUNNING, JobStatus.DONE]
    assert text(widget.segment.status).startswith("Done: 1 slice")


def test_a_cancelled_job_ends_cancelled(qtbot, viewer_widget):
    viewer, widget = viewer_widget
    viewer.add_image(np.random.default_rng(0).normal(100, 20, (40, 64, 64)).astype(np.float32), name="long")
    widget.segment.batch_size.value = 1
    widget.segment.objects_3d.value = False
    seen = statuses(widget)
    widget.segment.run()
    widget.segment.cancel_button.clicked.emit()
    wait_idle(qtbot, widget)
    assert seen == [JobStatus.RUNNING, JobStatus.CANCELLED]
    assert text(widget.segment.status).startswith("Cancelled after")


def test_a_failing_job_ends_failed_with_a_notification(qtbot, viewer_widget, notes, monkeypatch):
    viewer, widget = viewer_widget
    viewer.add_image(small_2d()[0], name="cells")

    def broken(*_, **__):
        raise RuntimeError("simulated engine failure")

    monkeypatch.setattr(_jobs, "iter_segment", broken)
    seen = statuses(widget)
    widget.segment.run()
    wait_idle(qtbot, widget)
    assert seen == [JobStatus.RUNNING, JobStatus.FAILED]
    assert text(widget.segment.status) == "Segmentation failed."
    assert ("error", "Segmentation failed: simulated engine failure") in notes
    assert widget.segment.run_button.enabled  # the user can try again


def test_the_boxes_write_the_engine_settings_that_jobs_read(qtbot, viewer_widget, monkeypatch):
    viewer, widget = viewer_widget
    viewer.add_image(small_2d()[0], name="cells")
    threshold_model(widget, monkeypatch)
    changes = []
    widget.session.settings.events.engine.connect(changes.append)
    widget.segment.batch_size.value = 3
    widget.segment.tile_size.value = 512
    engine = widget.session.settings.engine
    assert (engine.batch_size, engine.tile_size, engine.device) == (3, 512, widget.device.value)
    assert len(changes) == 2
    widget.session.settings.change_engine(batch_size=7)  # from a script: the box follows
    assert widget.segment.batch_size.value == 7
    widget.segment.run()
    wait_idle(qtbot, widget)
    record = viewer.layers["cells labels (tiny-instance)"].metadata["napari_unetseg"]
    assert "--batch-size 7" in record["command"] and "--tile-size 512" in record["command"]


def test_segment_then_from_result_reads_the_segmented_planes_through_the_session(qtbot, viewer_widget, monkeypatch):
    viewer, widget = viewer_widget
    viewer.add_image(small_3d()[0], name="stack")
    viewer.dims.set_current_step(0, 5)
    widget.segment.this_slice.value = True
    with monkeypatch.context() as patch:  # segment with a network that finds the nuclei; fine-tune the tiny one
        threshold_model(widget, patch)
        widget.segment.run()
        wait_idle(qtbot, widget)
    result = viewer.layers["stack labels (tiny-instance)"]
    assert widget.session.segmented == {result.unique_id: {(5,)}}
    assert result.data[5].any()
    widget.annotate.from_result()
    annotation = viewer.layers["stack annotations"]
    assert widget.session.annotations.unique_id == annotation.unique_id  # what Fine-tune trains on
    painted = [z for z in range(annotation.data.shape[0]) if annotation.data[z].any()]
    assert painted == [5]
    widget.finetune.iterations.value = 2
    widget.finetune.live_preview.value = False
    widget.finetune.fine_tune()
    assert widget.session.status is JobStatus.RUNNING
    wait_idle(qtbot, widget)
    assert widget.session.status is JobStatus.DONE
    assert len(widget.finetune.plot.losses) == 2  # it trained on the one segmented plane


def test_jobs_wait_for_the_imports_the_panel_preloads(monkeypatch):
    # two threads importing parts of PyTorch at once could meet in its circular imports
    import threading

    from napari_unetseg import training
    from napari_unetseg._widget import _runner

    release = threading.Event()
    monkeypatch.setattr(training, "preload", lambda: release.wait(60))
    monkeypatch.setattr(_runner, "_PRELOADS", [])
    _runner.preload_first_jobs()
    waiting = threading.Thread(target=_runner.wait_for_preloads, daemon=True)
    waiting.start()
    waiting.join(0.5)
    assert waiting.is_alive()  # the job would still wait
    release.set()
    waiting.join(60)
    assert not waiting.is_alive()
