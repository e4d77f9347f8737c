"""``unetseg measure`` and ``unetseg segment --measurements``: the CSV a user gets, and bad input refused."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import ThresholdNet, disc_image, two_touching_discs

from napari_unetseg import cli_segment
from napari_unetseg.checkpoint import Checkpoint, ModelInfo
from napari_unetseg.cli import main
from napari_unetseg.io import read_image
from napari_unetseg.measurements import measure_objects, table_to_csv


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def folder_listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def error_line(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err
    assert err.startswith("unetseg: error: ") and err.count("\n") == 1, err
    return err


@pytest.fixture
def squares(tmp_path: Path) -> dict[str, Path]:
    """Labels 1 (a 2x3 square) and 4 (a 4x4 square), an image 10 * y + x, and 2-channel copies of it (YXC, and an
    ImageJ CYX file, which records its axes)."""
    labels = np.zeros((10, 12), np.uint16)
    labels[1:3, 1:4] = 1
    labels[5:9, 6:10] = 4
    yy, xx = np.mgrid[:10, :12]
    image = (10 * yy + xx).astype(np.uint16)
    paths = {"labels": tmp_path / "labels.tif", "image": tmp_path / "image.tif", "rgb": tmp_path / "two.tif",
             "cyx": tmp_path / "cyx.tif"}
    tifffile.imwrite(paths["labels"], labels)
    tifffile.imwrite(paths["image"], image)
    tifffile.imwrite(paths["rgb"], np.stack([image, image + 100], axis=-1), photometric="minisblack")
    tifffile.imwrite(paths["cyx"], np.stack([image, image + 100]), imagej=True, metadata={"axes": "CYX"})
    return paths


@pytest.fixture
def discs(tmp_path: Path, monkeypatch) -> Path:
    """An image of two bright discs, and 'segment' given a stand-in model that finds them."""
    monkeypatch.setattr(cli_segment, "load_model", lambda spec: Checkpoint(ThresholdNet(), ModelInfo(mode="instance")))
    path = tmp_path / "discs.tif"
    tifffile.imwrite(path, disc_image(two_touching_discs(64, 12)))
    return path


def test_measure_labels_and_image(squares, tmp_path, capsys):
    out = tmp_path / "table.csv"
    assert main(["measure", str(squares["labels"]), str(squares["image"]), "-o", str(out), "--pixel-size", "0.5"]) == 0
    table = rows(out)
    assert [row["label"] for row in table] == ["1", "4"]
    assert [row["area"] for row in table] == ["6", "16"] and [row["area_um2"] for row in table] == ["1.5", "4.0"]
    assert [(row["centroid_y"], row["centroid_x"]) for row in table] == [("1.5", "2.0"), ("6.5", "7.5")]
    assert [row["mean_intensity"] for row in table] == ["17.0", "72.5"]
    assert f"wrote {out} (2 objects)" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["rgb", "cyx"])
def test_measure_per_channel(squares, tmp_path, kind):
    out = tmp_path / "channels.csv"
    assert main(["measure", str(squares["labels"]), str(squares[kind]), "-o", str(out), "-q"]) == 0
    assert [(row["mean_intensity_c0"], row["mean_intensity_c1"]) for row in rows(out)] == [
        ("17.0", "117.0"), ("72.5", "172.5")
    ]


def test_measure_without_image(squares, tmp_path):
    geometry = tmp_path / "geometry.csv"
    assert main(["measure", str(squares["labels"]), "-o", str(geometry), "-q"]) == 0
    assert "mean_intensity" not in rows(geometry)[0] and len(rows(geometry)) == 2


def test_measure_3d_with_pixel_size(tmp_path):
    labels = np.zeros((5, 8, 8), np.uint8)
    labels[1:4, 2:4, 2:4] = 9
    tifffile.imwrite(tmp_path / "stack.tif", labels, imagej=True, metadata={"axes": "ZYX"})
    out = tmp_path / "stack.csv"
    argv = ["measure", str(tmp_path / "stack.tif"), "-o", str(out), "--pixel-size", "2,0.5,0.5", "--unit", "nm", "-q"]
    assert main(argv) == 0
    (row,) = rows(out)
    assert (row["label"], row["volume"], row["volume_nm3"], row["slices"], row["centroid_z"]) == (
        "9", "12", "6.0", "3", "2.0"
    )


def test_segment_writes_the_measurements_of_its_labels(discs, tmp_path, capsys):
    labels, table = tmp_path / "discs_labels.tif", tmp_path / "discs.csv"
    argv = ["segment", str(discs), "-o", str(labels), "--backend", "torch", "--measurements", str(table)]
    assert main(argv) == 0
    expected = measure_objects(read_image(labels), read_image(discs))
    assert table.read_text() == table_to_csv(expected)
    found = rows(table)
    assert len(found) == 2 and {row["mean_intensity"] for row in found} == {"1000.0"}
    assert f"wrote {table} (2 objects)" in capsys.readouterr().err


def test_segment_several_inputs_one_table_each(discs, tmp_path):
    other = tmp_path / "other.tif"
    tifffile.imwrite(other, disc_image(np.zeros((32, 32), np.uint8)))
    argv = ["segment", str(discs), str(other), "-o", str(tmp_path / "results"), "--backend", "torch", "-q",
            "--measurements", str(tmp_path / "tables")]
    assert main(argv) == 0
    assert folder_listing(tmp_path / "tables") == ["discs_measurements.csv", "other_measurements.csv"]
    assert len(rows(tmp_path / "tables" / "discs_measurements.csv")) == 2
    assert rows(tmp_path / "tables" / "other_measurements.csv") == []


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["measure", "{labels}", "{missing}", "-o", "{out}"], "missing.tif: no such file"),
        (["measure", "{labels}", "{wide}", "-o", "{out}"], "has shape (10, 12) but"),
        (["measure", "{float}", "-o", "{out}"], "must hold integer labels"),
        (["measure", "{labels}", "-o", "{existing}"], "already exists; use --overwrite"),
        (["measure", "{labels}", "-o", "{folder}/table.txt"], "end the file name in .csv"),
        (["measure", "{labels}", "-o", "{out}", "--pixel-size", "1,2,3"], "3 sizes for the 2 spatial axes YX"),
        (["measure", "{labels}", "-o", "{out}", "--axes", "ZYX"], "name 3 axes but the labels have 2"),
        (["measure", "{labels}", "-o", "{out}", "--pixel-size", "0"], "positive numbers"),
        (["measure", "{square}", "{cube}", "-o", "{out}"], "cannot tell which axis of the image (shape (4, 4, 4))"),
    ],
)
def test_measure_bad_input_writes_nothing(squares, tmp_path, capsys, argv, message):
    float_labels = tmp_path / "float.tif"
    tifffile.imwrite(float_labels, np.zeros((10, 12), np.float32))
    tifffile.imwrite(tmp_path / "wide.tif", np.zeros((10, 13), np.uint8))
    (tmp_path / "existing.csv").write_text("keep\n")
    tifffile.imwrite(tmp_path / "square.tif", np.ones((4, 4), np.uint8))
    tifffile.imwrite(tmp_path / "cube.tif", np.ones((4, 4, 4), np.uint8), photometric="minisblack")
    names = {"square": tmp_path / "square.tif", "cube": tmp_path / "cube.tif", "labels": squares["labels"],
             "missing": tmp_path / "missing.tif", "wide": tmp_path / "wide.tif", "float": float_labels, "out": tmp_path / "out.csv", "existing": tmp_path / "existing.csv", "folder": tmp_path}
    before = folder_listing(tmp_path)
    assert main([part.format(**names) for part in argv]) == 2
    assert message in error_line(capsys)
    assert folder_listing(tmp_path) == before and (tmp_path / "existing.csv").read_text() == "keep\n"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--measurements", "{existing}"], "already exists; use --overwrite"),
        (["--measurements", "{image}"], "is a file; give a .csv name or a folder"),
        (["--pixel-size", "0.5"], "--pixel-size is for the measurements"),
        (["--measurements", "{out}", "--pixel-size", "1,1,1"], "3 sizes for the 2 spatial axes YX"),
    ],
)
def test_segment_bad_measurements_before_any_work(discs, tmp_path, capsys, extra, message):
    (tmp_path / "existing.csv").write_text("keep\n")
    names = {"existing": tmp_path / "existing.csv", "image": discs, "out": tmp_path / "out.csv"}
    before = folder_listing(tmp_path)
    argv = ["segment", str(discs), "-o", str(tmp_path / "labels.tif"), *(part.format(**names) for part in extra)]
    assert main(argv) == 2
    assert message in error_line(capsys)
    assert folder_listing(tmp_path) == before and (tmp_path / "existing.csv").read_text() == "keep\n"


def test_segment_several_inputs_need_a_folder_for_tables(discs, tmp_path, capsys):
    second = tmp_path / "second.tif"
    second.write_bytes(discs.read_bytes())
    argv = ["segment", str(discs), str(second), "-o", str(tmp_path / "results"),
            "--measurements", str(tmp_path / "t.csv")]
    assert main(argv) == 2
    assert "2 inputs need a folder for --measurements" in error_line(capsys)
    assert not (tmp_path / "results").exists() and not (tmp_path / "t.csv").exists()


def test_measure_a_zarr_time_series(tmp_path):
    from napari_unetseg.io import write_labels

    labels = np.zeros((2, 6, 6), np.uint32)
    labels[0, :2, :2] = 1
    labels[1, 3:, 3:] = 2
    write_labels(tmp_path / "series.zarr", labels)
    out = tmp_path / "series.csv"
    assert main(["measure", str(tmp_path / "series.zarr"), "-o", str(out), "--axes", "TYX", "-q"]) == 0
    assert [(row["t"], row["label"], row["area"]) for row in rows(out)] == [("0", "1", "4"), ("1", "2", "9")]
