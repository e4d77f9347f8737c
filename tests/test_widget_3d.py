"""The widget's "3D objects" on Z stacks, and Z-linking into a result kept on disk (zarr).

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
    text,
    threshold_model,
    versions_root,
    viewer_widget,
    wait_idle,
)

from napari_unetseg._widget import _layers  # noqa: E402
from napari_unetseg._widget._layers import METADATA_KEY  # noqa: E402

pytestmark = pytest.mark.gui


def touching_spheres(z_step: float) -> tuple[np.ndarray, np.ndarray]:
    """Two spheres of radius 9 (in XY pixels) touching at one point, in slices ``z_step`` pixels apart:
    the image (bright objects) and the truth."""
    shape = (int(32 / z_step), 40, 56)
    z, y, x = np.indices(shape).astype(np.float32)
    truth = np.zeros(shape, np.uint32)
    for label, cx in ((1, 19), (2, 37)):
        truth[np.sqrt(((z - 16 / z_step) * z_step) ** 2 + (y - 20) ** 2 + (x - cx) ** 2) <= 9] = label
    return np.where(truth > 0, 1000, 100).astype(np.float32), truth


@pytest.mark.parametrize("z_step", [1.0, 2.0])
def test_3d_objects_give_one_id_per_sphere_in_the_image_place(qtbot, viewer_widget, monkeypatch, z_step):
    viewer, widget = viewer_widget
    image, truth = touching_spheres(z_step)
    viewer.add_image(image, name="stack", scale=(z_step, 0.5, 0.5), translate=(3, 10, 20))
    threshold_model(widget, monkeypatch)
    assert not widget.segment.objects_3d.native.isHidden() and widget.segment.objects_3d.value  # offered, on
    widget.segment.run()
    wait_idle(qtbot, widget)
    layer = viewer.layers["stack labels (tiny-instance)"]
    labels = np.asarray(layer.data)
    assert np.unique(labels).tolist() == [0, 1, 2]  # two 3D objects, ids 1..N
    for label in (1, 2):  # each sphere is one of them, nearly whole
        ids, counts = np.unique(labels[truth == label], return_counts=True)
        assert ids[np.argmax(counts)] > 0 and counts.max() >= 0.95 * np.count_nonzero(truth == label)
    assert tuple(layer.scale) == (z_step, 0.5, 0.5) and tuple(layer.translate) == (3, 10, 20)
    assert "2 3D objects" in text(widget.segment.status)
    parameters = layer.metadata[METADATA_KEY]["parameters"]
    assert parameters["z_method"] == "consensus" and parameters["diameter"] == "auto"
    assert parameters["voxel_size"] == [z_step, 0.5, 0.5]
    assert f"--stitch-z --z-method consensus --voxel-size {z_step:g},0.5,0.5 --diameter auto" in (
        layer.metadata[METADATA_KEY]["command"]
    )

    widget.segment.objects_3d.value = False  # slice by slice: every slice's objects have their own ids
    widget.segment.run()
    wait_idle(qtbot, widget)
    labels = np.asarray(layer.data)
    assert len(np.unique(labels[labels > 0])) == sum(len(np.unique(p[p > 0])) for p in labels) > 2


def test_3d_objects_are_offered_for_z_stacks_only(viewer_widget):
    viewer, widget = viewer_widget
    viewer.add_image(np.zeros((32, 32), np.float32), name="flat")
    widget.image.value = viewer.layers["flat"]
    assert widget.segment.objects_3d.native.isHidden()
    assert not widget.segment.diameter.native.isHidden()  # the objects' size matters in 2D too
    viewer.add_image(np.zeros((4, 32, 32), np.float32), name="stack")
    widget.image.value = viewer.layers["stack"]
    assert not widget.segment.objects_3d.native.isHidden()


def test_a_given_diameter_is_used_and_recorded(qtbot, viewer_widget, monkeypatch):
    viewer, widget = viewer_widget
    image, _ = touching_spheres(1.0)
    viewer.add_image(image, name="stack")
    threshold_model(widget, monkeypatch)
    widget.segment.diameter.value = 60.0  # objects 3x the model's size: the stack is shrunk before the network
    widget.segment.run()
    wait_idle(qtbot, widget)
    layer = viewer.layers["stack labels (tiny-instance)"]
    assert layer.metadata[METADATA_KEY]["parameters"]["diameter"] == 60.0
    assert np.asarray(layer.data).shape == image.shape


def test_cancel_stops_3d_objects(qtbot, viewer_widget):
    viewer, widget = viewer_widget
    viewer.add_image(np.random.default_rng(0).normal(100, 20, (40, 96, 96)).astype(np.float32), name="long")
    widget.segment.run()
    assert widget.busy()
    widget.segment.cancel_button.clicked.emit()
    wait_idle(qtbot, widget)
    assert text(widget.segment.status).startswith("Cancelled after")
    done, total = widget.segment._done
    assert done < total and not np.asarray(viewer.layers["long labels (tiny-instance)"].data).any()


def test_z_linking_into_a_result_on_disk(qtbot, viewer_widget, notes, monkeypatch):
    zarr = pytest.importorskip("zarr")
    viewer, widget = viewer_widget
    image, truth = touching_spheres(1.0)
    store = zarr.zeros(image.shape, chunks=(1, 40, 56), dtype=image.dtype)
    store[:] = image
    viewer.add_image(store, name="on disk", contrast_limits=(0, 1000))
    viewer.dims.set_current_step(0, 20)  # the slice on screen goes first, before the slices it links to
    monkeypatch.setattr(_layers, "LARGE_RESULT_BYTES", 1000)  # so the result is a zarr array on disk too
    threshold_model(widget, monkeypatch)
    widget.segment.run()  # "3D objects" with the default method: a result on disk is linked slice to slice
    wait_idle(qtbot, widget)
    assert any("linked slice to slice" in m for kind, m in notes if kind == "info")
    layer = viewer.layers["on disk labels (tiny-instance)"]
    assert layer.metadata[METADATA_KEY]["parameters"]["z_method"] == "linking"
    assert not isinstance(layer.data, np.ndarray)
    labels = np.asarray(layer.data[:])
    assert text(widget.segment.status).startswith("Done: 32 slices")
    per_slice = sum(len(np.unique(p[p > 0])) for p in labels)
    assert len(np.unique(labels[labels > 0])) == 2 < per_slice  # linked: one id per sphere across slices
    assert set(np.unique(labels[truth == 1])) - {0} != set(np.unique(labels[truth == 2])) - {0}
