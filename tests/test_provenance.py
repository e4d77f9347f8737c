"""Provenance: the record in every ``unetseg segment`` output and in the widget's layers, and ``models --history``."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shlex
from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import tiny_unet, two_touching_discs

from napari_unetseg import __version__, versions
from napari_unetseg.checkpoint import ModelInfo, save_checkpoint
from napari_unetseg.cli import main
from napari_unetseg.io import read_image
from napari_unetseg.models import builtin_path
from napari_unetseg.provenance import NO_INPUT, RECORD_KEY, read_record
from napari_unetseg.synthetic import synthetic_nuclei_2d


@pytest.fixture
def cells(tmp_path: Path) -> Path:
    """A small synthetic nuclei image (uint16 TIFF) in a folder whose name needs quoting in a shell."""
    image, _ = synthetic_nuclei_2d((64, 64), seed=1, radius=7.0, coverage=0.3, photons=500.0, blur=1.0)
    path = tmp_path / "my images" / "cells.tif"
    path.parent.mkdir()
    tifffile.imwrite(path, image.astype(np.uint16))
    return path


def error_line(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err
    assert err.startswith("unetseg: error: ") and err.count("\n") == 1, err
    return err


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def rerun(command: str, output: Path) -> np.ndarray:
    """Run a recorded ``unetseg segment`` command with its ``-o`` replaced by ``output``; the labels written."""
    words = shlex.split(command)
    assert words[:2] == ["unetseg", "segment"]
    words[words.index("-o") + 1] = str(output)
    assert main([*words[1:], "--quiet"]) == 0
    return np.asarray(read_image(output))


# ---------------------------------------------------------------------------- unetseg segment


@pytest.mark.parametrize("suffix", [".tif", ".zarr"])
def test_segment_records_model_parameters_input_and_a_command_that_makes_the_same_labels(
    cells, tmp_path, capsys, suffix
):
    out = tmp_path / f"cells_labels{suffix}"
    options = ["--model", "nuclei", "--device", "cpu", "--tile-size", "512", "--backend", "torch",
               "--precision", "float32"]
    assert main(["segment", str(cells), "-o", str(out), "--quiet", *options]) == 0, capsys.readouterr().err
    record = read_record(out)
    assert record["model"] == "nuclei"
    assert record["model_file"] == str(builtin_path("nuclei"))
    assert record["model_sha256"] == sha256(builtin_path("nuclei"))
    assert record["package_version"] == __version__
    assert record["input"] == str(cells)
    assert record["parameters"] == {
        "device": "cpu", "precision": "float32", "backend": "torch", "tile_size": 512, "batch_size": 4,
        "postprocess": "auto", "axes": "YX", "stitch_z": False, "shape": [64, 64], "diameter": "auto",
    }  # EngineSettings.as_record() and the run's own options
    assert dt.datetime.fromisoformat(record["date"]).tzinfo is not None
    words = shlex.split(record["command"])
    assert words[:5] == ["unetseg", "segment", str(cells), "-o", str(out)]
    for option, value in zip(options[::2], options[1::2]):
        assert words[words.index(option) + 1] == value
    labels = np.asarray(read_image(out))
    assert labels.max() >= 3  # the nuclei model found the synthetic nuclei
    np.testing.assert_array_equal(rerun(record["command"], tmp_path / f"again{suffix}"), labels)


def test_the_record_is_tifffile_json_metadata_and_the_labels_stay_readable(cells, tmp_path):
    out = tmp_path / "labels" / "cells_labels.tif"
    assert main(["segment", str(cells), "-o", str(out.parent), "--quiet", "--device", "cpu"]) == 0
    with tifffile.TiffFile(out) as tif:
        description = json.loads(tif.pages[0].description)
        assert tif.series[0].shape == (64, 64)
    assert description[RECORD_KEY] == read_record(out)
    assert "--stitch-z" not in description[RECORD_KEY]["command"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["cells_labels.tif"]  # no temporary file left


def test_a_stack_records_its_3d_options_and_the_command_repeats_the_result(tmp_path):
    stack = tmp_path / "stack.tif"
    discs = np.where(two_touching_discs(32, 6) > 0, 900, 100).astype(np.uint16)
    tifffile.imwrite(stack, np.stack([discs] * 3), photometric="minisblack")
    checkpoint = save_checkpoint(tmp_path / "tiny.pt", tiny_unet(), ModelInfo(mode="instance", name="tiny"))
    out = tmp_path / "stack_labels.zarr"
    assert main(["segment", str(stack), "-o", str(out), "-m", str(checkpoint), "--axes", "ZYX", "--stitch-z",
                 "--voxel-size", "2,0.5,0.5", "--diameter", "12", "--device", "cpu", "--quiet"]) == 0
    record = read_record(out)
    assert record["model"] == "tiny" and record["model_sha256"] == sha256(checkpoint)
    assert record["parameters"]["axes"] == "ZYX" and record["parameters"]["stitch_z"] is True
    assert record["parameters"]["shape"] == [3, 32, 32]
    assert record["parameters"]["z_method"] == "consensus" and record["parameters"]["voxel_size"] == [2, 0.5, 0.5]
    words = shlex.split(record["command"])
    assert words[words.index("--model") + 1] == str(checkpoint) and "--stitch-z" in words
    assert words[words.index("--voxel-size") + 1] == "2,0.5,0.5" and words[words.index("--diameter") + 1] == "12"
    again = tmp_path / "again.zarr"
    words[words.index("-o") + 1] = str(again)
    assert main([*words[1:], "--quiet"]) == 0  # the recorded command, run again, gives the same labels
    np.testing.assert_array_equal(read_image(again)[:], read_image(out)[:])


@pytest.mark.parametrize("name", ["big.tif", "big.zarr"])
def test_results_streamed_through_a_zarr_store_keep_their_record(tmp_path, name):
    """The path of results too large for memory: planes go to a store, then (for a TIFF) into the file."""
    from napari_unetseg.io import labels_output

    record = {"model": "nuclei", "command": "unetseg segment 'a b.tif' -o big.tif"}
    with labels_output(tmp_path / name, (3, 16, 16), np.uint32, in_memory=False, metadata={RECORD_KEY: record}) as out:
        out[1] = 7
    assert read_record(tmp_path / name) == record
    assert np.asarray(read_image(tmp_path / name))[1].max() == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_files_without_a_record_read_as_none(tmp_path):
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, np.zeros((8, 8), np.uint8))
    assert read_record(plain) is None


# ---------------------------------------------------------------------------- unetseg models --history


def test_history_of_saved_versions_goes_back_to_the_built_in(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(versions.ENV_VAR, str(tmp_path / "versions"))
    first = versions.save_version(tiny_unet(), ModelInfo(mode="instance", name="nuclei"), "nuclei")
    second = versions.save_version(tiny_unet(), ModelInfo(mode="instance", name=first.name), first.name)
    assert main(["models", "--history", "nuclei-ft2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["nuclei-ft2", "  <- nuclei-ft1", "  <- nuclei"]
    assert f"saved version {second.path}" in lines[0] and f"saved version {first.path}" in lines[1]
    assert f"built-in {builtin_path('nuclei')}" in lines[2]
    assert main(["models", "--history", str(second.path), "--json"]) == 0
    chain = json.loads(capsys.readouterr().out)
    assert [(step["name"], step["kind"], step["parent"]) for step in chain] == [
        ("nuclei-ft2", "file", "nuclei-ft1"), ("nuclei-ft1", "saved version", "nuclei"), ("nuclei", "built-in", None)
    ]


def test_history_of_a_checkpoint_fine_tuned_by_unetseg_train(tmp_path, tiny_instance_checkpoint, capsys):
    truth = two_touching_discs(64, 12)
    image, strokes = tmp_path / "image.tif", tmp_path / "strokes.tif"
    tifffile.imwrite(image, np.where(truth > 0, 900, 100).astype(np.uint16))
    tifffile.imwrite(strokes, np.where(truth > 0, truth + 1, 1).astype(np.uint16))
    tuned = tmp_path / "tuned.pt"
    assert main(["train", str(image), str(strokes), "-o", str(tuned), "--init", str(tiny_instance_checkpoint),
                 "--iterations", "2", "--device", "cpu", "--quiet"]) == 0, capsys.readouterr().err
    assert main(["models", "--history", str(tuned)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"tuned: file {tuned}, created {_created(tuned)}",
        f"  <- tiny: file {tiny_instance_checkpoint}, created {_created(tiny_instance_checkpoint)}",
    ]


def _created(path: Path) -> str:
    from napari_unetseg.checkpoint import load_checkpoint

    return load_checkpoint(path).info.created


def test_a_parent_that_is_gone_ends_the_chain_and_says_so(tmp_path, capsys):
    info = ModelInfo(mode="instance", name="orphan", training={"parent": "lost-model"})
    orphan = save_checkpoint(tmp_path / "orphan.pt", tiny_unet(), info)
    assert main(["models", "--history", str(orphan)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[1].startswith("  <- lost-model: not found")


def test_history_of_an_unknown_model_is_one_error_line(tmp_path, capsys):
    assert main(["models", "--history", "no-such-model"]) == 2
    assert "no-such-model: no such checkpoint file, built-in model or saved version" in error_line(capsys)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    assert main(["models", "--history", str(junk)]) == 2
    assert "not a checkpoint" in error_line(capsys)
    assert junk.read_bytes() == b"not a checkpoint"


# ---------------------------------------------------------------------------- the widget


@pytest.fixture
def widget_on_file(make_napari_viewer_proxy, tiny_instance_checkpoint, tmp_path, monkeypatch, cells):
    """A viewer with the widget, the tiny model chosen and ``cells`` opened from its file."""
    pytest.importorskip("napari")
    from napari_unetseg._widget._main import UNetSegWidget

    monkeypatch.setenv(versions.ENV_VAR, str(tmp_path / "versions"))
    viewer = make_napari_viewer_proxy()
    widget = UNetSegWidget(viewer)
    viewer.window.add_dock_widget(widget, name="U-Net Segmentation")
    widget.models.add_file(tiny_instance_checkpoint)
    viewer.open(cells, plugin="napari")
    return viewer, widget


@pytest.mark.gui
def test_widget_result_carries_the_record_and_copy_command_puts_it_on_the_clipboard(
    qtbot, widget_on_file, cells, tmp_path
):
    from qtpy.QtWidgets import QApplication

    viewer, widget = widget_on_file
    widget.models.select("nuclei")
    widget.device.value = "cpu"
    widget.segment.run_button.clicked.emit()
    qtbot.waitUntil(lambda: not widget.busy(), timeout=90_000)
    layer = viewer.layers["cells labels (nuclei)"]
    assert layer.data.max() >= 3
    record = layer.metadata[RECORD_KEY]
    assert record["role"] == "labels" and record["image"] == "cells"  # what the widget marked before stays
    assert record["input"] == str(cells) and record["model"] == "nuclei"
    assert record["model_sha256"] == sha256(builtin_path("nuclei"))
    assert record["parameters"]["device"] == "cpu" and record["parameters"]["shape"] == [64, 64]
    QApplication.clipboard().clear()
    widget.segment.copy_button.clicked.emit()
    assert QApplication.clipboard().text() == record["command"]
    np.testing.assert_array_equal(rerun(record["command"], tmp_path / "from_widget.tif"), layer.data)


@pytest.mark.gui
def test_copy_command_for_an_image_from_no_file_and_for_a_layer_without_a_record(
    qtbot, widget_on_file, monkeypatch
):
    from napari.utils import notifications
    from qtpy.QtWidgets import QApplication

    shown = []
    monkeypatch.setattr(notifications, "show_info", shown.append)
    viewer, widget = widget_on_file
    widget.image.value = viewer.add_image(np.zeros((32, 32), np.float32), name="drawn")
    widget.segment.run_button.clicked.emit()
    qtbot.waitUntil(lambda: not widget.busy(), timeout=90_000)
    record = viewer.layers["drawn labels (tiny-instance)"].metadata[RECORD_KEY]
    assert record["input"] is None and shlex.split(record["command"])[2] == NO_INPUT
    QApplication.clipboard().setText("unchanged")
    viewer.layers.selection.active = viewer.layers["drawn"]
    widget.segment.copy_button.clicked.emit()
    assert QApplication.clipboard().text() == "unchanged"
    assert shown[-1].startswith("Select a layer made by Segment")
