"""The widget's measurements: the result layer's features, the object count, and "Save measurements (CSV)".

Runs under Xvfb (pytest-xvfb) with the viewer fixtures of test_widget.py.
"""

from __future__ import annotations

import csv

import numpy as np
import pytest

napari = pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from conftest import disc_image, two_touching_discs  # noqa: E402
from test_widget import (  # noqa: E402, F401  (fixtures used by name)
    notes,
    one_torch_thread,
    private_settings,
    text,
    threshold_model,
    versions_root,
    viewer_widget,
    wait_idle,
)

pytestmark = pytest.mark.gui


def segment_discs(qtbot, viewer_widget, monkeypatch):
    """Segment an image of two bright discs (pixel size 0.5 x 0.25 um) with the stand-in model."""
    viewer, widget = viewer_widget
    viewer.add_image(disc_image(two_touching_discs(64, 12)), name="cells", scale=(0.5, 0.25), units=("µm", "µm"))
    threshold_model(widget, monkeypatch)
    widget.segment.run_button.clicked.emit()
    wait_idle(qtbot, widget)
    return viewer.layers["cells labels (tiny-instance)"], widget


def test_segment_puts_the_measurements_into_the_layer_features(qtbot, viewer_widget, monkeypatch):
    labels, widget = segment_discs(qtbot, viewer_widget, monkeypatch)
    features = labels.features
    ids = np.unique(labels.data[labels.data > 0])
    assert len(ids) == 2 and features["index"].tolist() == ids.tolist() == features["label"].tolist()
    assert features["area"].tolist() == [int(np.sum(labels.data == i)) for i in ids]
    assert np.allclose(features["area_um2"], features["area"] * 0.125)
    assert features["mean_intensity"].tolist() == [1000.0, 1000.0]
    assert text(widget.measure.count) == "2 objects in 'cells labels (tiny-instance)'."
    assert widget.measure.save_button.enabled
    # napari matches rows to labels by the index column: the status bar shows the object's row
    y, x = np.argwhere(labels.data == ids[1])[0]
    assert f"area: {features['area'][1]}" in labels._get_properties((y, x))


def test_save_measurements_writes_the_result_as_it_is_now(qtbot, viewer_widget, monkeypatch, tmp_path, notes):
    labels, widget = segment_discs(qtbot, viewer_widget, monkeypatch)
    first, second = np.unique(labels.data[labels.data > 0])
    labels.data = np.where(labels.data == second, 0, labels.data)  # the user deletes an object
    path = tmp_path / "cells.csv"
    asked = []
    monkeypatch.setattr(type(widget.measure), "ask_csv_path", lambda self, name: asked.append(name) or str(path))
    widget.measure.save_button.clicked.emit()
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert asked == ["cells labels (tiny-instance).csv"]
    assert [row["label"] for row in rows] == [str(first)]
    assert rows[0]["area"] == str(int(np.sum(labels.data == first))) and rows[0]["mean_intensity"] == "1000.0"
    assert labels.features["label"].tolist() == [first]
    assert text(widget.measure.count).startswith("1 object in")
    assert ("info", f"Saved the measurements of 1 object to {path}.") in notes


def test_cancelled_save_writes_nothing_and_a_new_run_clears_the_table(qtbot, viewer_widget, monkeypatch, tmp_path):
    labels, widget = segment_discs(qtbot, viewer_widget, monkeypatch)
    monkeypatch.setattr(type(widget.measure), "ask_csv_path", lambda self, name: "")
    widget.measure.save_button.clicked.emit()
    assert list(tmp_path.glob("*.csv")) == []
    widget.measure.forget(labels)
    assert labels.features.shape[1] == 0 and not widget.measure.save_button.enabled and text(widget.measure.count) == ""


def test_a_lazy_image_is_read_for_intensities_only_when_saving(qtbot, viewer_widget, monkeypatch, tmp_path):
    da = pytest.importorskip("dask.array")
    viewer, widget = viewer_widget
    viewer.add_image(da.from_array(disc_image(two_touching_discs(64, 12)), chunks=32), name="lazy")
    threshold_model(widget, monkeypatch)
    widget.segment.run_button.clicked.emit()
    wait_idle(qtbot, widget)
    labels = viewer.layers["lazy labels (tiny-instance)"]
    assert len(labels.features) == 2 and "mean_intensity" not in labels.features
    assert text(widget.measure.count).endswith("Intensities are measured when you save (the image is on disk).")
    path = tmp_path / "lazy.csv"
    monkeypatch.setattr(type(widget.measure), "ask_csv_path", lambda self, name: str(path))
    widget.measure.save_button.clicked.emit()
    with open(path, newline="") as handle:
        assert [row["mean_intensity"] for row in csv.DictReader(handle)] == ["1000.0", "1000.0"]
    assert labels.features["mean_intensity"].tolist() == [1000.0, 1000.0]


def test_3d_result_has_volumes_in_the_layer_scale_and_slices(qtbot, viewer_widget, monkeypatch):
    viewer, widget = viewer_widget
    stack = np.stack([two_touching_discs(64, 12)] * 3 + [np.zeros((64, 64), np.uint32)])
    viewer.add_image(disc_image(stack), name="stack", scale=(2.0, 1.0, 1.0))
    threshold_model(widget, monkeypatch)
    widget.segment.z_method.value = "linking"  # 3D objects exactly the discs of each slice (consensus resamples Z)
    widget.segment.run_button.clicked.emit()
    wait_idle(qtbot, widget)
    labels = viewer.layers["stack labels (tiny-instance)"]
    features = labels.features
    assert len(features) == 2 and features["slices"].tolist() == [3, 3]
    assert features["volume"].tolist() == [int(np.sum(labels.data == i)) for i in features["label"]]
    assert features["volume_px3"].tolist() == (2 * features["volume"]).tolist()
    assert features["centroid_z"].tolist() == [1.0, 1.0]
