"""Object measurements: known squares and boxes give exact sizes, positions and intensities; the CSV says so."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from napari_unetseg.measurements import measure_objects, table_to_csv, unit_label, write_csv


def two_squares() -> tuple[np.ndarray, np.ndarray]:
    """Label 3: a 2x3 square at (1, 1); label 5: a 4x4 square at (5, 6); the image is 10 * y + x."""
    labels = np.zeros((10, 12), np.uint16)
    labels[1:3, 1:4] = 3
    labels[5:9, 6:10] = 5
    yy, xx = np.mgrid[:10, :12]
    return labels, (10 * yy + xx).astype(np.uint16)


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_two_squares_exact_values():
    labels, image = two_squares()
    table = measure_objects(labels, image, scale=(0.5, 0.25), unit="micrometer")
    assert list(table) == [
        "label", "area", "area_um2", "centroid_y", "centroid_x", "bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1",
        "mean_intensity", "min_intensity", "max_intensity",
    ]
    assert table["label"].tolist() == [3, 5]
    assert table["area"].tolist() == [6, 16]
    assert table["area_um2"].tolist() == [0.75, 2.0]
    assert table["centroid_y"].tolist() == [1.5, 6.5] and table["centroid_x"].tolist() == [2.0, 7.5]
    boxes = [table[k].tolist() for k in ("bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1")]
    assert boxes == [[1, 5], [1, 6], [3, 9], [4, 10]]
    assert table["mean_intensity"].tolist() == [17.0, 72.5]  # rows 10, 20 + columns 1..3
    assert table["min_intensity"].tolist() == [11.0, 56.0] and table["max_intensity"].tolist() == [23.0, 89.0]


def test_without_image_or_scale_only_geometry():
    labels, _ = two_squares()
    table = measure_objects(labels)
    assert "mean_intensity" not in table and not any(name.startswith("area_") for name in table)
    assert table["area"].tolist() == [6, 16]


def test_a_mask_is_one_object():
    mask = np.zeros((6, 6), bool)
    mask[1:3, 1:4] = True
    table = measure_objects(mask, mask)
    assert table["label"].tolist() == [1] and table["area"].tolist() == [6]
    assert table["mean_intensity"].tolist() == [1.0]


def test_channels_are_measured_one_by_one():
    labels, image = two_squares()
    table = measure_objects(labels, np.stack([image, 2 * image], axis=-1))
    assert table["mean_intensity_c0"].tolist() == [17.0, 72.5]
    assert table["mean_intensity_c1"].tolist() == [34.0, 145.0]
    assert "mean_intensity" not in table


def test_3d_volume_slices_and_scale():
    labels = np.zeros((6, 8, 8), np.uint32)
    labels[1:4, 2:4, 2:6] = 1  # 3 planes of 2x4
    labels[5, 0, 0] = 2
    table = measure_objects(labels, scale=(2.0, 0.5, 0.5), unit="µm")
    assert table["volume"].tolist() == [24, 1]
    assert table["volume_um3"].tolist() == [12.0, 0.5]
    assert table["slices"].tolist() == [3, 1]
    assert table["centroid_z"].tolist() == [2.0, 5.0]
    assert table["bbox_z0"].tolist() == [1, 5] and table["bbox_z1"].tolist() == [4, 6]


def test_time_axis_measures_each_time_point():
    labels = np.zeros((2, 6, 6), np.uint8)
    labels[0, :2, :2] = 1
    labels[1, :3, :3] = 1
    labels[1, 4:, 4:] = 2
    table = measure_objects(labels, axes="TYX", scale=(10.0, 2.0, 2.0))
    assert table["t"].tolist() == [0, 1, 1] and table["label"].tolist() == [1, 1, 2]
    assert table["area"].tolist() == [4, 9, 4]
    assert table["area_px2"].tolist() == [16.0, 36.0, 16.0]  # T's scale (10) is not a size


def test_empty_labels_header_and_no_rows(tmp_path):
    table = measure_objects(np.zeros((3, 8, 8), np.uint8), np.zeros((3, 8, 8), np.float32))
    assert all(len(column) == 0 for column in table.values())
    path = write_csv(table, tmp_path / "empty.csv")
    assert path.read_text().splitlines() == [",".join(table)]
    assert "volume" in table and "slices" in table and "mean_intensity" in table


def test_csv_holds_the_values(tmp_path):
    labels, image = two_squares()
    path = write_csv(measure_objects(labels, image), tmp_path / "squares.csv")
    rows = read_rows(path)
    found = [(row["label"], row["area"], row["mean_intensity"]) for row in rows]
    assert found == [("3", "6", "17.0"), ("5", "16", "72.5")]


def test_csv_never_replaces_a_file_unless_asked(tmp_path):
    labels, _ = two_squares()
    path = tmp_path / "old.csv"
    path.write_text("keep me\n")
    with pytest.raises(FileExistsError):
        write_csv(measure_objects(labels), path)
    assert path.read_text() == "keep me\n" and sorted(p.name for p in tmp_path.iterdir()) == ["old.csv"]
    write_csv(measure_objects(labels), path, overwrite=True)
    assert [row["label"] for row in read_rows(path)] == ["3", "5"]


@pytest.mark.parametrize(
    ("labels", "image", "message"),
    [
        (np.zeros((4, 4), np.float32), None, "integer labels"),
        (np.full((4, 4), -1, np.int16), None, "negative labels"),
        (np.zeros((4, 4), np.uint8), np.zeros((4, 5)), "shape (4, 4) but the image has shape (4, 5)"),
        (np.zeros(4, np.uint8), None, "2 to 4 dimensions"),
    ],
)
def test_bad_input_is_refused(labels, image, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        measure_objects(labels, image)


def test_unit_names():
    assert [unit_label(u) for u in ("micrometer", "µm", "nanometer", None, "pixel", "km/s")] == [
        "um", "um", "nm", "px", "px", "km_s"
    ]
    assert table_to_csv({"label": np.array([1])}) == "label\n1\n"
