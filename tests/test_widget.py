"""The napari dock widget, driven as a user would: segment, cancel, paint, fine-tune, and every error path.

Runs under Xvfb (pytest-xvfb) with napari's viewer fixtures; skipped when napari is not installed.
"""

from __future__ import annotations

import copy
import os
import pickle
import zipfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import tifffile
import pytest

napari = pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from conftest import ThresholdNet, tiny_unet, two_touching_discs, write_raw_checkpoint  # noqa: E402

from napari_unetseg import versions  # noqa: E402
from napari_unetseg._sample_data import nuclei_2d, nuclei_3d  # noqa: E402
from napari_unetseg._widget import _jobs, _segment, _settings  # noqa: E402
from napari_unetseg._widget._annotate import convention_text  # noqa: E402
from napari_unetseg._widget._layers import METADATA_KEY, image_source  # noqa: E402
from napari_unetseg._widget._main import UNetSegWidget  # noqa: E402
from napari_unetseg.checkpoint import Checkpoint, ModelInfo, load_checkpoint  # noqa: E402
from napari_unetseg.device import available_devices  # noqa: E402
from napari_unetseg.inference import PlanePredictor  # noqa: E402
from napari_unetseg.synthetic import synthetic_nuclei_2d, synthetic_nuclei_3d  # noqa: E402

pytestmark = pytest.mark.gui
WAIT_MS = 90_000


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One PyTorch thread: tiny models gain nothing from more, and on a busy machine OpenMP threads
    waiting for each other make training many times slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def notes(monkeypatch) -> list[tuple[str, str]]:
    """Every napari notification shown, as (kind, message)."""
    from napari.utils import notifications

    shown: list[tuple[str, str]] = []
    for kind in ("info", "warning", "error"):
        monkeypatch.setattr(
            notifications, f"show_{kind}", lambda message, kind=kind: shown.append((kind, str(message)))
        )
    return shown


@pytest.fixture(autouse=True)
def private_settings(tmp_path, monkeypatch) -> Path:
    """napari's plugin settings (the model last used) start fresh in a folder of the test, never the
    user's (as napari's own ``plugin_settings`` fixture does, without blocking plugin discovery)."""
    from napari import settings as napari_settings

    napari_settings._clear_plugin_settings_cache()
    monkeypatch.setattr(napari_settings, "_CFG_PATH", str(tmp_path / "napari" / "settings.yaml"))
    yield tmp_path / "napari"
    napari_settings._clear_plugin_settings_cache()


@pytest.fixture
def versions_root(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "versions"
    monkeypatch.setenv(versions.ENV_VAR, str(root))
    return root


@pytest.fixture
def viewer_widget(make_napari_viewer_proxy, versions_root, tiny_instance_checkpoint, notes):
    """A viewer (wrapped like napari wraps it for plugins) with the widget docked and a tiny model loaded."""
    viewer = make_napari_viewer_proxy()
    widget = UNetSegWidget(viewer)
    viewer.window.add_dock_widget(widget, name="U-Net Segmentation")
    widget.models.add_file(tiny_instance_checkpoint)
    return viewer, widget


def threshold_model(widget: UNetSegWidget, monkeypatch) -> None:
    """Make the widget use a stand-in network that finds bright objects (labels without training)."""
    monkeypatch.setattr(
        type(widget.models), "checkpoint", lambda self: Checkpoint(ThresholdNet(), ModelInfo(mode="instance"))
    )


def text(label) -> str:
    """What a (wrapped) label says, on one line."""
    return " ".join(label.value.split())


def wait_idle(qtbot, widget: UNetSegWidget) -> None:
    qtbot.waitUntil(lambda: not widget.busy(), timeout=WAIT_MS)


def small_2d(seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    image, labels = synthetic_nuclei_2d((96, 96), seed=seed, radius=9.0, coverage=0.3, photons=500.0, blur=1.0)
    return image.astype(np.float32), labels


def small_3d() -> tuple[np.ndarray, np.ndarray]:
    image, labels = synthetic_nuclei_3d((8, 64, 64), seed=2, radius=8.0, coverage=0.3, photons=500.0, z_spacing=1.0)
    return image.astype(np.float32), labels


# ---------------------------------------------------------------------------- building and samples


def test_widget_lists_layers_models_and_devices(viewer_widget, tiny_instance_checkpoint):
    viewer, widget = viewer_widget
    assert widget.image.value is None
    viewer.add_image(np.zeros((32, 32), np.float32), name="a")
    viewer.add_labels(np.zeros((32, 32), np.uint8), name="painted")
    assert widget.image.value.name == "a"
    assert widget.annotate.annotations.value.name == "painted"
    assert list(widget.device.choices) == available_devices()
    assert "can use" in text(widget.device_report)
    assert widget.models.current().key == str(tiny_instance_checkpoint)
    assert "instance model" in widget.models.info.value
    assert widget.annotate.convention.value.startswith("Paint: 0 = not annotated")
    assert widget.segment.advanced.native.isHidden()  # the "advanced" fold starts closed
    widget.segment.show_advanced.value = True
    assert not widget.segment.advanced.native.isHidden()


def test_sample_data_and_manifest():
    ((image2d, _, kind2d),) = nuclei_2d()
    ((image3d, meta3d, kind3d),) = nuclei_3d()
    assert kind2d == kind3d == "image" and image2d.ndim == 2 and image3d.ndim == 3
    assert meta3d["scale"] == (2.0, 1.0, 1.0)
    np.testing.assert_array_equal(nuclei_2d()[0][0], image2d)  # seeded: the same every time

    npe2 = pytest.importorskip("npe2")
    manifest = npe2.PluginManifest.from_file(Path(__file__).parents[1] / "src/napari_unetseg/napari.yaml")
    assert manifest.name == "napari-unetseg" and manifest.display_name == "U-Net Segmentation"
    assert all(command.id.startswith("napari-unetseg.") for command in manifest.contributions.commands)
    for command in manifest.contributions.commands:
        module, name = command.python_name.split(":")
        assert callable(getattr(__import__(module, fromlist=[name]), name))


# ---------------------------------------------------------------------------- segmentation


def test_segment_2d_makes_a_labels_layer_in_the_image_place(qtbot, viewer_widget, monkeypatch):
    viewer, widget = viewer_widget
    image, _ = small_2d()
    layer = viewer.add_image(image, name="cells", scale=(0.5, 0.25), translate=(10, 20), axis_labels=("y", "x"))
    original = image.copy()
    threshold_model(widget, monkeypatch)
    widget.segment.run_button.clicked.emit()
    wait_idle(qtbot, widget)
    labels = viewer.layers["cells labels (tiny-instance)"]
    assert labels.data.shape == (96, 96) and labels.data.dtype == np.uint32
    assert labels.data.max() >= 3
    assert tuple(labels.scale) == (0.5, 0.25) and tuple(labels.translate) == (10, 20)
    assert tuple(labels.axis_labels) == ("y", "x")
    assert text(widget.segment.status).startswith("Done: 1 slice")
    np.testing.assert_array_equal(layer.data, original)


def test_shift_s_in_the_viewer_segments_like_the_button(qtbot, viewer_widget, monkeypatch):
    from napari.utils.key_bindings import coerce_keybinding

    viewer, widget = viewer_widget
    image, _ = small_2d()
    viewer.add_image(image, name="cells")
    threshold_model(widget, monkeypatch)
    press = viewer.keymap[coerce_keybinding("Shift-S")]
    press(viewer)
    wait_idle(qtbot, widget)
    labels = viewer.layers["cells labels (tiny-instance)"]
    assert labels.data.max() >= 3 and text(widget.segment.status).startswith("Done: 1 slice")
    assert "Shift+S" in widget.segment.run_button.tooltip
    labels.data[:] = 0
    widget.segment.run_button.enabled = False  # as while a job runs: the key does what a click would, nothing
    press(viewer)
    assert not widget.busy() and labels.data.max() == 0
    widget.segment.run_button.enabled = True

    viewer.window.remove_dock_widget(widget.native)  # closing the panel gives the key back
    widget.native.deleteLater()
    qtbot.waitUntil(lambda: coerce_keybinding("Shift-S") not in viewer.keymap, timeout=5000)


def test_segment_3d_goes_through_the_slice_in_view_first_and_links_z(qtbot, viewer_widget, monkeypatch):
    viewer, widget = viewer_widget
    image, _ = small_3d()
    viewer.add_image(image, name="stack", scale=(2, 1, 1))
    viewer.dims.set_current_step(0, 5)
    threshold_model(widget, monkeypatch)
    orders = []
    real_job = _segment.segment_job
    monkeypatch.setattr(_segment, "segment_job", lambda *a, **k: orders.append(k["order"]) or real_job(*a, **k))
    widget.segment.z_method.value = "linking"
    widget.segment.run()
    wait_idle(qtbot, widget)
    assert orders[0][0] == (5,) and sorted(orders[0]) == [(z,) for z in range(8)]
    labels = viewer.layers["stack labels (tiny-instance)"].data
    assert labels.shape == (8, 64, 64) and tuple(viewer.layers["stack labels (tiny-instance)"].scale) == (2, 1, 1)
    per_slice = sum(len(np.unique(plane[plane > 0])) for plane in labels)
    assert 0 < len(np.unique(labels[labels > 0])) < per_slice  # objects keep one id across slices

    widget.segment.objects_3d.value = False
    widget.segment.run()
    wait_idle(qtbot, widget)
    labels = viewer.layers["stack labels (tiny-instance)"].data
    assert len(np.unique(labels[labels > 0])) == sum(len(np.unique(p[p > 0])) for p in labels)


def test_second_run_writes_into_its_own_layer_never_a_user_layer(qtbot, viewer_widget, monkeypatch):
    viewer, widget = viewer_widget
    image, _ = small_2d()
    viewer.add_image(image, name="cells")
    mine = viewer.add_labels(np.full((96, 96), 7, np.uint32), name="cells labels (tiny-instance)")
    threshold_model(widget, monkeypatch)
    widget.segment.run()
    wait_idle(qtbot, widget)
    names = ["cells", "cells labels (tiny-instance)", "cells labels (tiny-instance) [1]"]
    assert [layer.name for layer in viewer.layers] == names
    assert (mine.data == 7).all()
    viewer.layers.selection.active = mine
    widget.segment.run()
    wait_idle(qtbot, widget)
    assert [layer.name for layer in viewer.layers] == names and (mine.data == 7).all()
    assert viewer.layers["cells labels (tiny-instance) [1]"].data.max() > 0


def test_each_model_keeps_its_result_and_a_painted_result_is_never_rewritten(
    qtbot, viewer_widget, monkeypatch, notes, tiny_semantic_checkpoint
):
    viewer, widget = viewer_widget
    image, _ = small_2d()
    viewer.add_image(image, name="cells")
    threshold_model(widget, monkeypatch)
    widget.segment.run()
    wait_idle(qtbot, widget)
    first = viewer.layers["cells labels (tiny-instance)"]
    kept = first.data.copy()
    assert kept.max() >= 3

    widget.models.add_file(tiny_semantic_checkpoint)  # another model: a layer of its own
    widget.segment.run()
    wait_idle(qtbot, widget)
    names = ["cells", "cells labels (tiny-instance)", "cells labels (tiny-semantic)"]
    assert [layer.name for layer in viewer.layers] == names
    np.testing.assert_array_equal(first.data, kept)

    widget.models.select(widget.models.find("tiny-instance").key)  # the same model again: its layer is reused
    widget.segment.run()
    wait_idle(qtbot, widget)
    assert len(viewer.layers) == 3

    first.selected_label = 50  # the user corrects the result with the brush...
    first.paint((10, 10), 50)
    painted = first.data.copy()
    assert (painted == 50).any()
    widget.segment.run()  # ...and segments again: the corrected layer stays as it is
    wait_idle(qtbot, widget)
    np.testing.assert_array_equal(first.data, painted)
    again = viewer.layers["cells labels (tiny-instance) [1]"]
    np.testing.assert_array_equal(again.data, kept)
    latest = widget.owned.get("labels", image_source(viewer.layers["cells"]))
    assert latest.unique_id == again.unique_id  # what From result starts from


def test_this_slice_only(qtbot, viewer_widget, monkeypatch):
    viewer, widget = viewer_widget
    image, _ = small_3d()
    viewer.add_image(image, name="stack")
    viewer.dims.set_current_step(0, 3)
    threshold_model(widget, monkeypatch)
    widget.segment.this_slice.value = True
    widget.segment.run()
    wait_idle(qtbot, widget)
    labels = viewer.layers["stack labels (tiny-instance)"].data
    assert labels[3].max() > 0
    assert not np.delete(labels, 3, axis=0).any()
    assert text(widget.segment.status).startswith("Done: 1 slice")


@pytest.mark.parametrize(
    "shape, expected",
    [((48, 40, 3), (48, 40)), ((2, 3, 40, 48), (2, 3, 40, 48))],
    ids=["rgb", "4d"],
)
def test_rgb_and_4d_images(qtbot, viewer_widget, shape, expected):
    viewer, widget = viewer_widget
    data = np.random.default_rng(0).integers(0, 255, shape).astype(np.uint8)
    layer = viewer.add_image(data, name="img", rgb=len(shape) == 3)
    widget.segment.run()
    wait_idle(qtbot, widget)
    assert viewer.layers["img labels (tiny-instance)"].data.shape == expected
    assert np.array_equal(layer.data, data)


def test_dask_and_zarr_images_are_read_plane_by_plane(qtbot, viewer_widget, monkeypatch):
    da = pytest.importorskip("dask.array")
    viewer, widget = viewer_widget
    image, _ = small_3d()
    reads = []

    def plane(block, block_info=None):
        reads.append(block_info[None]["chunk-location"][0])
        return block

    lazy = da.from_array(image, chunks=(1, 64, 64)).map_blocks(plane, dtype=image.dtype)
    viewer.add_image(lazy, name="lazy", contrast_limits=(0, float(image.max())))
    threshold_model(widget, monkeypatch)
    widget.segment.this_slice.value = True
    viewer.dims.set_current_step(0, 6)
    reads.clear()
    widget.segment.run()
    wait_idle(qtbot, widget)
    assert set(reads) == {6}  # only the plane segmented was computed (and it was)
    assert viewer.layers["lazy labels (tiny-instance)"].data[6].max() > 0

    zarr = pytest.importorskip("zarr")
    store = zarr.zeros(image.shape, chunks=(1, 64, 64), dtype=image.dtype)
    store[:] = image
    viewer.add_image(store, name="zarr")
    widget.image.value = viewer.layers["zarr"]
    widget.segment.this_slice.value = False
    widget.segment.run()
    wait_idle(qtbot, widget)
    assert viewer.layers["zarr labels (tiny-instance)"].data.shape == image.shape


def test_cancel_stops_within_a_batch(qtbot, viewer_widget, monkeypatch):
    viewer, widget = viewer_widget
    viewer.add_image(np.random.default_rng(0).normal(100, 20, (40, 64, 64)).astype(np.float32), name="long")
    widget.segment.batch_size.value = 1
    widget.segment.objects_3d.value = False  # slice by slice (3D objects: test_widget_3d.py)
    widget.segment.run()
    assert widget.busy() and widget.segment.cancel_button.enabled
    widget.segment.cancel_button.clicked.emit()
    wait_idle(qtbot, widget)
    done, total = widget.segment._done
    assert done < total == 40
    assert text(widget.segment.status).startswith("Cancelled after")
    assert widget.segment.run_button.enabled and not widget.segment.cancel_button.enabled


@pytest.mark.parametrize("objects_3d", [True, False])
def test_out_of_memory_retries_with_half_the_batch(qtbot, viewer_widget, notes, monkeypatch, objects_3d):
    viewer, widget = viewer_widget
    image, _ = small_3d()
    viewer.add_image(image, name="stack")
    widget.segment.objects_3d.value = objects_3d
    real = PlanePredictor.probabilities

    def probabilities(self, planes, should_stop=None):
        if self.batch_size > 1:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, planes, should_stop)

    monkeypatch.setattr(PlanePredictor, "probabilities", probabilities)
    widget.segment.batch_size.value = 4
    widget.segment.run()
    wait_idle(qtbot, widget)
    warnings = [m for kind, m in notes if kind == "warning"]
    assert any("batch size 2" in m for m in warnings) and any("batch size 1" in m for m in warnings)
    assert text(widget.segment.status).startswith("Done: 8 slices")

    def always_out_of_memory(self, planes, should_stop=None):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(PlanePredictor, "probabilities", always_out_of_memory)
    widget.segment.run()
    wait_idle(qtbot, widget)
    assert notes[-1][0] == "error" and "even with batch size 1" in notes[-1][1]
    assert widget.segment.run_button.enabled


# ---------------------------------------------------------------------------- errors


def test_user_mistakes_give_plain_notifications(qtbot, viewer_widget, notes, tmp_path):
    viewer, widget = viewer_widget
    widget.segment.run()
    assert notes[-1][0] == "warning" and "no image" in notes[-1][1]
    widget.finetune.fine_tune()
    assert notes[-1][0] == "warning" and "no image" in notes[-1][1]

    viewer.add_image(np.ones((40, 40), np.float32), name="img")
    viewer.add_labels(np.zeros((30, 30), np.uint8), name="wrong")
    widget.annotate.annotations.value = viewer.layers["wrong"]
    widget.finetune.fine_tune()
    assert notes[-1][0] == "warning" and "shape (30, 30)" in notes[-1][1] and "(40, 40)" in notes[-1][1]

    widget.annotate.new_annotations()
    assert widget.annotate.annotations.value.name == "img annotations"
    widget.finetune.fine_tune()
    assert notes[-1][0] == "warning" and "Nothing is painted" in notes[-1][1]

    widget.annotate.from_result()
    assert notes[-1][0] == "warning" and "Segment first" in notes[-1][1]

    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    before = widget.models.current()
    widget.models.ask_checkpoint_path = lambda: str(bad)
    widget.models.load_button.clicked.emit()
    assert notes[-1][0] == "error" and "broken.pt" in notes[-1][1]
    assert widget.models.current() == before

    widget.finetune.revert()
    assert notes[-1][0] == "warning" and "no earlier version" in notes[-1][1]
    assert not any(kind == "error" and "Traceback" in m for kind, m in notes)


def test_one_class_only_is_refused_with_a_message(qtbot, viewer_widget, notes):
    viewer, widget = viewer_widget
    viewer.add_image(np.random.default_rng(0).normal(100, 20, (48, 48)).astype(np.float32), name="img")
    widget.annotate.new_annotations()
    widget.annotate.annotations.value.data[5:20, 5:20] = 1  # background only
    widget.finetune.fine_tune()
    wait_idle(qtbot, widget)
    assert notes[-1][0] == "error" and "object" in notes[-1][1]
    assert widget.finetune.train_button.enabled


def test_deleting_a_layer_while_segmenting_stops_with_a_message(qtbot, viewer_widget, notes):
    viewer, widget = viewer_widget
    viewer.add_image(np.random.default_rng(0).normal(100, 20, (40, 64, 64)).astype(np.float32), name="long")
    widget.segment.batch_size.value = 1
    widget.segment.run()
    viewer.layers.remove("long")
    wait_idle(qtbot, widget)
    assert any(kind == "warning" and "was removed" in m for kind, m in notes)
    assert widget.segment.run_button.enabled

    viewer.add_image(np.random.default_rng(0).normal(100, 20, (40, 64, 64)).astype(np.float32), name="again")
    widget.segment.run()
    viewer.layers.remove("again labels (tiny-instance)")
    wait_idle(qtbot, widget)
    assert "labels layer" in notes[-1][1]
    assert [layer.name for layer in viewer.layers] == ["long labels (tiny-instance)", "again"]  # results are kept


@pytest.mark.parametrize("objects_3d", [True, False])
def test_painting_in_the_result_while_it_is_segmented_stops_and_keeps_the_strokes(
    qtbot, viewer_widget, notes, objects_3d
):
    viewer, widget = viewer_widget
    viewer.add_image(np.random.default_rng(0).normal(100, 20, (40, 64, 64)).astype(np.float32), name="long")
    widget.segment.batch_size.value = 1
    widget.segment.objects_3d.value = objects_3d
    widget.segment.run()
    result = viewer.layers["long labels (tiny-instance)"]
    result.paint((0, 5, 5), 9)  # the user starts correcting before the job is done
    painted = result.data.copy()
    wait_idle(qtbot, widget)
    assert any(kind == "warning" and "You painted in 'long labels (tiny-instance)'" in m for kind, m in notes)
    np.testing.assert_array_equal(result.data, painted)
    assert text(widget.segment.status).startswith("Cancelled after")


def test_a_checkpoint_that_stops_loading_is_reported(qtbot, viewer_widget, notes, tmp_path):
    viewer, widget = viewer_widget
    viewer.add_image(np.ones((40, 40), np.float32), name="img")
    path = Path(widget.models.current().key)
    path.write_bytes(b"truncated")
    widget.segment.run()
    assert notes[-1][0] == "error" and path.name in notes[-1][1]
    assert widget.segment.run_button.enabled and not widget.busy()


# ---------------------------------------------------------------------------- annotate and fine-tune


def test_from_result_shifts_ids_and_marks_background(qtbot, viewer_widget, monkeypatch):
    viewer, widget = viewer_widget
    image, _ = small_3d()
    viewer.add_image(image, name="stack")
    viewer.dims.set_current_step(0, 2)
    threshold_model(widget, monkeypatch)
    widget.segment.this_slice.value = True
    widget.segment.run()
    wait_idle(qtbot, widget)
    result = viewer.layers["stack labels (tiny-instance)"].data.copy()
    widget.annotate.from_result()
    annotation = viewer.layers["stack annotations"]
    assert annotation.mode == "paint" and annotation.selected_label == annotation.data.max() + 1
    np.testing.assert_array_equal(annotation.data[2], np.where(result[2] > 0, result[2] + 1, 1))
    assert not np.delete(annotation.data, 2, axis=0).any()  # slices never segmented stay unannotated


def held_out_scores(monkeypatch, parent: float, fine_tuned: float) -> None:
    """Make every fine-tune score the parent and the trained weights on held-out objects as given."""
    from napari_unetseg.training import Trainer

    monkeypatch.setattr(Trainer, "validate", lambda self: parent if self.done == 0 else fine_tuned)


def test_fine_tune_saves_a_version_selects_it_and_revert_goes_back(
    qtbot, viewer_widget, versions_root, notes, monkeypatch
):
    viewer, widget = viewer_widget
    held_out_scores(monkeypatch, parent=0.5, fine_tuned=0.8)
    # the job waits for the panel to show each preview: without the panel's word it would not end within WAIT_MS
    monkeypatch.setattr(_jobs, "PREVIEW_HANDOFF_S", 600.0)
    image, truth = small_2d()
    image_layer = viewer.add_image(image, name="cells")
    widget.annotate.new_annotations()
    annotation = widget.annotate.annotations.value
    annotation.data[:] = np.where(truth > 0, truth + 1, 1)
    annotation.data[:, 80:] = 0  # a part left unannotated
    painted = annotation.data.copy()
    widget.finetune.iterations.value = 3
    widget.finetune.train_button.clicked.emit()
    assert widget.busy() and not widget.finetune.train_button.enabled
    annotation.data[0:4, 0:4] = 9  # the user keeps painting: training uses the snapshot
    wait_idle(qtbot, widget)

    saved = versions_root / "tiny-instance-ft1.pt"
    assert saved.is_file(), notes
    info = load_checkpoint(saved).info
    assert (
        info.name == "tiny-instance-ft1"
        and info.training["parent"] == "tiny-instance"
        and info.training["iterations"] == 3
    )
    assert widget.models.current().name == "tiny-instance-ft1" and widget.models.current().kind == "fine-tuned"
    status = text(widget.finetune.status)
    assert "Saved tiny-instance-ft1" in status and "improved on your held-out annotations: 0.50 -> 0.80" in status
    assert "object(s) added" in status and "against tiny-instance" in status  # what the preview changed
    assert len(widget.finetune.plot.losses) == 3
    assert viewer.layers["cells labels (fine-tuning tiny-instance)"].data.shape == (96, 96)  # the live preview
    np.testing.assert_array_equal(image_layer.data, image)
    painted[0:4, 0:4] = 9
    np.testing.assert_array_equal(annotation.data, painted)

    assert widget.finetune.revert_button.enabled
    widget.finetune.revert_button.clicked.emit()
    assert widget.models.current().name == "tiny-instance"
    assert saved.is_file()

    widget.finetune.iterations.value = 10_000  # Stop keeps the best weights so far
    widget.finetune.live_preview.value = False
    widget.finetune.fine_tune()
    qtbot.waitUntil(lambda: len(widget.finetune.plot.losses) >= 1, timeout=WAIT_MS)
    widget.finetune.stop_button.clicked.emit()
    wait_idle(qtbot, widget)
    second = load_checkpoint(versions_root / "tiny-instance-ft2.pt").info
    assert second.training["stopped"] is True and second.training["iterations"] < 10_000
    assert (versions_root / "tiny-instance-ft1.pt").read_bytes() == saved.read_bytes()
    assert widget.models.current().name == "tiny-instance-ft2"


def test_a_fine_tune_that_does_not_improve_keeps_the_parent_and_says_so(
    qtbot, viewer_widget, versions_root, notes, monkeypatch
):
    viewer, widget = viewer_widget
    held_out_scores(monkeypatch, parent=0.9, fine_tuned=0.4)
    image, truth = small_2d()
    viewer.add_image(image, name="cells")
    widget.annotate.new_annotations()
    annotation = widget.annotate.annotations.value
    annotation.data[:] = np.where(truth > 0, truth + 1, 0)  # whole objects, no background painted
    painted = annotation.data.copy()
    widget.finetune.iterations.value = 3
    widget.finetune.fine_tune()
    assert any(kind == "info" and "No background" in message for kind, message in notes)  # said before training
    wait_idle(qtbot, widget)
    status = text(widget.finetune.status)
    assert "did not improve on your held-out annotations" in status and "tiny-instance kept as it was" in status
    assert "Nothing was saved" in status and "(best 0.40 against 0.90)" in status
    assert notes[-1][0] == "info" and " ".join(notes[-1][1].split()) == status
    assert not versions_root.exists() or not list(versions_root.glob("*.pt"))
    assert widget.models.current().name == "tiny-instance"
    np.testing.assert_array_equal(annotation.data, painted)


def test_fine_tune_to_a_chosen_file(qtbot, viewer_widget, tmp_path):
    viewer, widget = viewer_widget
    image, truth = small_2d()
    viewer.add_image(image, name="cells")
    widget.annotate.new_annotations()
    widget.annotate.annotations.value.data[:] = np.where(truth > 0, truth + 1, 1)
    widget.finetune.iterations.value = 3
    widget.finetune.live_preview.value = False
    widget.finetune.save_to.value = tmp_path / "mine.pt"
    widget.finetune.fine_tune()
    wait_idle(qtbot, widget)
    assert load_checkpoint(tmp_path / "mine.pt").info.name == "mine"
    assert widget.models.current().name == "mine" and widget.models.current().kind == "file"
    assert "cells labels" not in [layer.name for layer in viewer.layers]


def test_where_to_annotate_next_adds_an_uncertainty_layer(qtbot, viewer_widget):
    viewer, widget = viewer_widget
    image, _ = small_3d()
    viewer.add_image(image, name="stack", scale=(2, 1, 1))
    widget.annotate.uncertainty_button.clicked.emit()
    wait_idle(qtbot, widget)
    entropy = viewer.layers["stack uncertainty"]
    assert entropy.data.shape == image.shape and entropy.data.dtype == np.float32
    assert entropy.data.min() >= 0 and entropy.data.max() <= 1 and entropy.data.max() > 0
    assert tuple(entropy.scale) == (2, 1, 1)
    assert [layer.name for layer in widget.image.choices] == ["stack"]


def test_semantic_models_show_their_classes(viewer_widget, tiny_semantic_checkpoint):
    viewer, widget = viewer_widget
    widget.models.add_file(tiny_semantic_checkpoint)
    assert text(widget.annotate.convention) == "Paint: 0 = not annotated (ignored) · 1 = membrane · 2 = cell"
    assert convention_text(copy.deepcopy(ModelInfo())).endswith("2, 3, … = one id per object")
    viewer.add_image(np.ones((16, 16), np.float32), name="img")
    widget.annotate.new_annotations()
    layer = viewer.layers["img annotations"]
    assert layer.data.dtype == np.uint8 and layer.selected_label == 1


# ---------------------------------------------------------------------------- napari plugin machinery


@pytest.fixture
def registered(npe2pm):
    """Our manifest registered with a test plugin manager (as the installed entry point would)."""
    with npe2pm.tmp_plugin(manifest=str(Path(__file__).parents[1] / "src/napari_unetseg/napari.yaml")):
        yield npe2pm


def test_layers_segment_menu_opens_the_widget_and_save_keeps_the_provenance(registered, make_napari_viewer, tmp_path):
    from napari._app_model import get_app_model

    from napari_unetseg.provenance import read_record

    viewer = make_napari_viewer()
    entries = [item.command.id for item in get_app_model().menus.get_menu("napari/layers/segment")]
    assert "napari-unetseg.make_widget" in entries  # Layers > Segment > U-Net Segmentation
    record = {"model": "nuclei", "command": "unetseg segment cells.tif -o cells_labels.tif --model nuclei"}
    data = np.zeros((2, 16, 16), np.uint32)
    data[:, 4:9, 4:9] = 3
    layer = viewer.add_labels(data, name="cells labels (nuclei)", metadata={METADATA_KEY: dict(record)})
    (written,) = layer.save(str(tmp_path / "cells_labels.tif"), plugin="napari-unetseg")
    assert read_record(written) == record
    np.testing.assert_array_equal(tifffile.imread(written), data)
    assert layer.metadata[METADATA_KEY] == record and sorted(p.name for p in tmp_path.iterdir()) == ["cells_labels.tif"]


def test_plugin_samples_widget_and_checkpoint_reader(
    registered, make_napari_viewer, versions_root, notes, tiny_instance_checkpoint, tmp_path
):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-unetseg", "nuclei-3d")
    assert viewer.layers["nuclei 3D"].data.shape == (24, 192, 192)
    assert tuple(viewer.layers["nuclei 3D"].scale) == (2, 1, 1)
    viewer.open(str(tiny_instance_checkpoint), plugin="napari-unetseg")
    assert len(viewer.layers) == 1  # opening a model adds no layer
    _, widget = viewer.window.add_plugin_dock_widget("napari-unetseg", "U-Net Segmentation")
    assert isinstance(widget, UNetSegWidget)
    assert widget.models.current().key == str(tiny_instance_checkpoint)
    assert widget.image.value.name == "nuclei 3D"
    assert notes[-1][0] == "info" and "tiny-instance" in notes[-1][1]

    broken = tmp_path / "broken.pt"
    with zipfile.ZipFile(broken, "w") as archive:
        archive.writestr("data.pkl", b"junk")
    viewer.open(str(broken), plugin="napari-unetseg")
    assert notes[-1][0] == "error" and "broken.pt" in notes[-1][1]


def _launched_widget(viewer) -> UNetSegWidget:
    return next(w for w in viewer.window.dock_widgets.values() if isinstance(w, UNetSegWidget))


@pytest.mark.parametrize("size", [(1280, 800), (1800, 1100)])
def test_unetseg_gui_opens_the_sample_fitted_to_the_canvas_with_the_widget_docked(qtbot, make_napari_viewer, size):
    from napari_unetseg._widget._launch import WIDGET, set_up_viewer

    viewer = set_up_viewer(make_napari_viewer(title="napari-unetseg", show=True), size=size)
    qtbot.wait(300)  # the event loop shows the window at its size
    assert [layer.name for layer in viewer.layers] == ["nuclei 2D"]
    docked = [name for name in viewer.window._dock_widgets]
    assert any(WIDGET in name for name in docked), docked
    canvas = np.asarray(viewer.canvas.size, float)  # (height, width)
    shown = viewer.camera.zoom * np.asarray(viewer.layers["nuclei 2D"].data.shape, float)
    assert (shown <= canvas).all() and shown.min() >= 0.85 * canvas.min(), (shown, canvas)  # whole, and large
    np.testing.assert_allclose(viewer.camera.center[-2:], (127.5, 127.5), atol=1.0)


# ---------------------------------------------------------------------------- bad input and faults (issue 13)


def test_a_mask_opened_as_an_image_is_segmented_as_0_1_and_kept(qtbot, viewer_widget, monkeypatch, notes):
    viewer, widget = viewer_widget
    _, truth = small_2d()
    mask = truth > 0
    layer = viewer.add_image(mask, name="mask")
    threshold_model(widget, monkeypatch)
    widget.segment.run()
    wait_idle(qtbot, widget)
    assert not [note for note in notes if note[0] == "error"], notes
    labels = viewer.layers["mask labels (tiny-instance)"].data
    assert labels.max() >= 3 and ((labels > 0) == mask).mean() > 0.9
    np.testing.assert_array_equal(layer.data, mask)


def test_hot_pixels_leave_the_widget_result_unchanged(qtbot, viewer_widget, monkeypatch):
    viewer, widget = viewer_widget
    image = np.where(two_touching_discs(40, 8) > 0, 1000, 100).astype(np.uint32)
    hot = image.copy()
    hot[[1, 3, 20, 38, 39], [1, 30, 2, 38, 10]] = np.iinfo(np.uint32).max  # above the 99.8th percentile
    threshold_model(widget, monkeypatch)
    results = []
    for data, name in ((image, "clean"), (hot, "hot")):
        widget.image.value = viewer.add_image(data, name=name)
        widget.segment.run()
        wait_idle(qtbot, widget)
        results.append(viewer.layers[f"{name} labels (tiny-instance)"].data > 0)
    assert results[0].any() and (results[0] == results[1]).mean() >= 0.99


def test_a_fine_tune_that_fails_midway_keeps_the_parent_model_and_every_annotation(
    qtbot, viewer_widget, versions_root, notes, monkeypatch
):
    from napari_unetseg.training import Trainer

    viewer, widget = viewer_widget
    image, truth = small_2d()
    image_layer = viewer.add_image(image, name="cells")
    widget.annotate.new_annotations()
    annotation = widget.annotate.annotations.value
    annotation.data[:] = np.where(truth > 0, truth + 1, 1)
    painted = annotation.data.copy()
    real_step, calls = Trainer._step, []

    def failing_step(self):  # the second iteration fails, as a driver or a disk might
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated failure in the training worker")
        return real_step(self)

    monkeypatch.setattr(Trainer, "_step", failing_step)
    widget.finetune.iterations.value = 5
    widget.finetune.live_preview.value = False
    widget.finetune.fine_tune()
    wait_idle(qtbot, widget)

    assert len(calls) == 2
    errors = [message for kind, message in notes if kind == "error"]
    assert errors and "simulated failure" in errors[-1]
    assert text(widget.finetune.status) == "Fine-tuning failed."
    assert widget.models.current().name == "tiny-instance"  # the parent stays selected
    assert not list(versions_root.glob("*.pt"))  # nothing half-trained was saved as a version
    np.testing.assert_array_equal(annotation.data, painted)
    assert viewer.layers[annotation.name].unique_id == annotation.unique_id  # the layer is still there
    np.testing.assert_array_equal(image_layer.data, image)
    assert widget.finetune.train_button.enabled  # and the user can try again


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch /tmp/unetseg-widget-pwned",))


@pytest.mark.parametrize("kind", ["text", "pickle-with-code", "bad-decision-weights"])
def test_loading_a_bad_checkpoint_says_why_and_keeps_the_model(viewer_widget, notes, tmp_path, monkeypatch, kind):
    _, widget = viewer_widget
    Path("/tmp/unetseg-widget-pwned").unlink(missing_ok=True)
    path = tmp_path / f"{kind}.pt"
    if kind == "text":
        path.write_text("not a model\n")
        expected = f"{path}: not a checkpoint (corrupt or another kind of file)"
    elif kind == "pickle-with-code":
        path.write_bytes(pickle.dumps(_RunsCode()))
        expected = f"{path}: refused: the file contains Python objects other than weights"
    else:
        info = {**asdict(ModelInfo(mode="semantic", class_names=["a", "b"])), "decision_weights": [1.0]}
        write_raw_checkpoint(path, tiny_unet(num_classes=2), info)
        expected = f"{path}: decision_weights must hold one number per class (2)"
    before = widget.models.current().key
    monkeypatch.setattr(type(widget.models), "ask_checkpoint_path", lambda self: str(path))
    widget.models._on_load_clicked()
    assert notes[-1][0] == "error" and notes[-1][1].startswith(expected), notes[-1]
    assert "weights_only" not in notes[-1][1] and "\x1b" not in notes[-1][1]
    assert widget.models.current().key == before
    assert not Path("/tmp/unetseg-widget-pwned").exists()


def test_first_segment_on_the_sample_uses_nuclei_and_finds_the_nuclei(qtbot, make_napari_viewer):
    """The new user's first click: the nuclei model is preselected, and Segment outlines the nuclei."""
    from napari.settings import get_plugin_settings

    from napari_unetseg._widget._launch import set_up_viewer
    from napari_unetseg.metrics import object_matching
    from napari_unetseg.synthetic import sample_image_2d

    viewer = set_up_viewer(make_napari_viewer(title="napari-unetseg"))
    widget = _launched_widget(viewer)
    assert widget.models.current().label == "nuclei (built-in)"
    widget.segment.run_button.clicked.emit()
    wait_idle(qtbot, widget)
    labels = viewer.layers["nuclei 2D labels (nuclei)"].data
    assert object_matching(labels, sample_image_2d()[1])["f1"] > 0.8
    assert _settings.last_used_model() == "nuclei"
    assert "last_model: nuclei" in get_plugin_settings("napari-unetseg").config_path.read_text()


def test_the_device_setting_applies_when_the_panel_opens(make_napari_viewer_proxy, monkeypatch):
    viewer = make_napari_viewer_proxy()  # napari discovers the plugin and its settings
    settings = _settings.panel_settings()
    monkeypatch.setattr(settings, "device", "cpu")
    widget = UNetSegWidget(viewer)
    assert widget.device.value == "cpu"
    monkeypatch.setattr(settings, "device", "cuda:7")  # a device this machine lacks: the best one found
    assert UNetSegWidget(viewer).device.value == widget.device.choices[0]


def test_jobs_run_with_the_threads_setting_else_every_core_but_one_on_larger_machines(qtbot, make_napari_viewer_proxy, monkeypatch):
    import os

    import torch

    viewer = make_napari_viewer_proxy()
    settings = _settings.panel_settings()
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    monkeypatch.setattr(settings, "threads", 0)
    assert _settings.job_threads() == 7  # one core left to napari
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert _settings.job_threads() == 2  # on two cores a job takes both (measured: no shorter stalls with one)
    monkeypatch.setattr(settings, "threads", 3)
    assert _settings.job_threads() == 3

    widget = UNetSegWidget(viewer)
    seen: list[int] = []

    def job():
        seen.append(torch.get_num_threads())
        yield 1
        return None

    threads = torch.get_num_threads()
    try:
        widget.segment.runner.start(job(), total=1, description="Counting", on_yield=lambda _: None,
                                    on_return=lambda _: None)
        qtbot.waitUntil(lambda: not widget.busy(), timeout=WAIT_MS)
    finally:
        torch.set_num_threads(threads)
    assert seen == [3]  # the job ran with the setting's threads


def em_like_section() -> np.ndarray:
    section = np.random.default_rng(0).normal(150, 20, (128, 128))
    section[::16] = 30
    section[:, ::16] = 30
    return section.astype(np.uint8)


@pytest.mark.parametrize(
    ("remembered", "image", "expected"),
    [
        (None, "fluorescence", "nuclei"),
        ("em-membranes", "fluorescence", "nuclei"),  # an EM model is not preselected on fluorescence
        ("em-membranes", "em", "em-membranes"),
        ("nuclei", "em", "em-membranes"),
        ("em-membranes", None, "em-membranes"),  # no image yet: the last one used
        ("/gone/model.pt", None, "nuclei"),  # a remembered file that no longer exists
    ],
)
def test_the_model_preselected_is_the_last_used_one_that_fits_the_image(
    make_napari_viewer_proxy, remembered, image, expected
):
    viewer = make_napari_viewer_proxy()  # napari discovers the plugin and its settings
    if remembered is not None:
        _settings.remember_model(remembered)
    if image is not None:
        viewer.add_image(nuclei_2d()[0][0] if image == "fluorescence" else em_like_section(), name="img")
    widget = UNetSegWidget(viewer)
    assert widget.models.current().name == expected


def test_the_preselection_follows_new_images_until_the_user_picks_a_model(make_napari_viewer_proxy):
    viewer = make_napari_viewer_proxy()
    widget = UNetSegWidget(viewer)
    viewer.add_image(em_like_section(), name="em")
    assert widget.models.current().name == "em-membranes"
    widget.image.value = viewer.add_image(nuclei_2d()[0][0], name="cells")
    assert widget.models.current().name == "nuclei"
    widget.models.model.value = "em-membranes"  # the user's pick stays
    widget.image.value = viewer.add_image(nuclei_2d()[0][0], name="more cells")
    assert widget.models.current().name == "em-membranes"
