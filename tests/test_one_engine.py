"""One engine: the API, the command line, the cluster and the widget's Segment button give the same labels.

The same small stack, the same model file and the same :class:`EngineSettings` (the default, on the
CPU) go through every front; objects are linked across Z plane to plane (and, on the command line and
the cluster, also made by 3D consensus, the default).
The network is conftest's hand-wired threshold U-Net, so every plane has real objects to compare.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_unetseg.checkpoint import ModelInfo, save_checkpoint
from napari_unetseg.cli import main
from napari_unetseg.engine_settings import EngineSettings
from napari_unetseg.inference import segment
from napari_unetseg.io import create_labels_zarr, read_image

from conftest import blob_stack, threshold_unet

#: What every front is given: the default settings, on the CPU (the command line's defaults are these).
SETTINGS = EngineSettings(device="cpu")


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return save_checkpoint(tmp_path / "threshold.pt", threshold_unet(), ModelInfo(mode="instance", name="threshold"))


@pytest.fixture
def expected(model: Path) -> np.ndarray:
    """The API's labels, checked to hold objects linked through Z (so the comparisons can fail)."""
    labels = segment(blob_stack(), model, SETTINGS, axes="ZYX", stitch_z=True, z_method="linking")
    flat = segment(blob_stack(), model, SETTINGS, axes="ZYX")
    assert flat.max() == 20 and 1 < labels.max() < 20  # 20 objects in the planes, fewer once linked
    return labels


def test_the_command_line_gives_the_api_labels(tmp_path, model, expected):
    source, out = tmp_path / "stack.tif", tmp_path / "labels.tif"
    tifffile.imwrite(source, blob_stack())
    argv = ["segment", str(source), "-o", str(out), "-m", str(model), "--device", SETTINGS.device, "--axes", "ZYX",
            "--stitch-z", "--z-method", "linking", "-q"]
    assert main(argv) == 0
    np.testing.assert_array_equal(read_image(out), expected)


@pytest.mark.timeout(120)
def test_the_cluster_gives_the_api_labels(tmp_path, model, expected):
    pytest.importorskip("distributed")
    from napari_unetseg.distributed import local_client, segment_distributed

    out = create_labels_zarr(tmp_path / "labels.zarr", expected.shape, expected.dtype)
    with local_client(1) as client:
        segment_distributed(blob_stack(), out, model, client, SETTINGS, axes="ZYX", stitch_z=True, z_method="linking",
                            planes_per_task=4)
    np.testing.assert_array_equal(out[:], expected)


@pytest.mark.timeout(120)
def test_the_command_line_and_the_cluster_give_the_api_3d_objects(tmp_path, model):
    pytest.importorskip("distributed")
    from napari_unetseg.distributed import local_client, segment_distributed

    expected = segment(blob_stack(), model, SETTINGS, axes="ZYX", stitch_z=True)  # consensus
    assert expected.max() >= 2 and not np.array_equal(expected, segment(blob_stack(), model, SETTINGS, axes="ZYX",
                                                                         stitch_z=True, z_method="linking"))
    source, out = tmp_path / "stack.tif", tmp_path / "labels.tif"
    tifffile.imwrite(source, blob_stack())
    argv = ["segment", str(source), "-o", str(out), "-m", str(model), "--device", SETTINGS.device, "--axes", "ZYX",
            "--stitch-z", "-q"]
    assert main(argv) == 0
    np.testing.assert_array_equal(read_image(out), expected)
    spread = create_labels_zarr(tmp_path / "labels.zarr", expected.shape, expected.dtype)
    with local_client(1) as client:
        segment_distributed(blob_stack(), spread, model, client, SETTINGS, axes="ZYX", stitch_z=True)
    np.testing.assert_array_equal(spread[:], expected)


@pytest.mark.gui
def test_the_widgets_segment_button_gives_the_api_labels(make_napari_viewer_proxy, qtbot, tmp_path, model, expected):
    napari = pytest.importorskip("napari")
    pytest.importorskip("pytestqt")
    from napari_unetseg._widget._main import UNetSegWidget

    viewer = make_napari_viewer_proxy()
    widget = UNetSegWidget(viewer)
    viewer.window.add_dock_widget(widget, name="U-Net Segmentation")
    widget.models.add_file(model)
    widget.device.value = SETTINGS.device
    widget.segment.z_method.value = "linking"  # "3D method" under Advanced options
    viewer.add_image(blob_stack(), name="stack")
    viewer.dims.set_current_step(0, 0)  # the slice on screen goes first: here the first, as the API goes
    widget.segment.run_button.clicked.emit()
    qtbot.waitUntil(lambda: not widget.busy(), timeout=90_000)
    (labels,) = [layer for layer in viewer.layers if isinstance(layer, napari.layers.Labels)]
    np.testing.assert_array_equal(np.asarray(labels.data), expected)
