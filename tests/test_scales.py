"""Pixel sizes recorded by microscopes' files reach 3D segmentation and measurements without retyping."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr
from conftest import tiny_unet

from napari_unetseg.checkpoint import ModelInfo, save_checkpoint
from napari_unetseg.cli import main
from napari_unetseg.io import probe_image, read_image
from napari_unetseg.provenance import read_record
from napari_unetseg.scales import PixelSize, ome_xml_pixel_size

STACK = np.zeros((5, 32, 32), np.uint16)


def test_imagej_tiff_spacing_and_resolution(tmp_path: Path):
    path = tmp_path / "ij.tif"
    tifffile.imwrite(path, STACK, imagej=True, resolution=(2.0, 2.0),
                     metadata={"spacing": 2.0, "unit": "micron", "axes": "ZYX"})
    assert probe_image(path).pixel_size == PixelSize({"Y": 0.5, "X": 0.5, "Z": 2.0})


def test_ome_tiff_sizes_in_their_own_units_come_back_in_micrometres(tmp_path: Path):
    path = tmp_path / "ome.tif"
    tifffile.imwrite(path, STACK, ome=True, metadata={
        "axes": "ZYX", "PhysicalSizeX": 250, "PhysicalSizeXUnit": "nm", "PhysicalSizeY": 0.25,
        "PhysicalSizeZ": 1.5,
    })
    size = probe_image(path).pixel_size
    assert size.along("ZYX") == pytest.approx((1.5, 0.25, 0.25)) and size.unit == "um"
    assert size.describe("ZYX") == "1.5,0.25,0.25 um"


def test_a_plain_tiffs_screen_resolution_is_not_a_pixel_size(tmp_path: Path):
    tifffile.imwrite(tmp_path / "plain.tif", STACK, resolution=(72, 72), photometric="minisblack")
    assert probe_image(tmp_path / "plain.tif").pixel_size is None


def test_damaged_size_metadata_loses_only_the_sizes(tmp_path: Path):
    assert ome_xml_pixel_size("<OME><Pixels PhysicalSizeX='-1'/></OME>") is None
    assert ome_xml_pixel_size("not xml") is None
    path = tmp_path / "odd.tif"
    tifffile.imwrite(path, STACK, imagej=True, metadata={"spacing": "wide", "unit": "micron", "axes": "ZYX"})
    info = probe_image(path)
    assert info.shape == STACK.shape and info.pixel_size is None


def test_ome_zarr_scale_transforms(tmp_path: Path):
    axes = [{"name": "c", "type": "channel"}] + [{"name": n, "type": "space", "unit": "micrometer"} for n in "zyx"]
    level = {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 3.0, 0.4, 0.4]}]}
    group = zarr.open_group(str(tmp_path / "image.ome.zarr"), mode="w", zarr_format=2)
    group.attrs.update({"multiscales": [{"version": "0.4", "axes": axes, "datasets": [level]}]})
    group.create_array("0", shape=(1, 4, 16, 16), dtype=np.uint8)
    assert probe_image(tmp_path / "image.ome.zarr").pixel_size.along("ZYX") == pytest.approx((3.0, 0.4, 0.4))


def test_measure_takes_the_labels_files_pixel_size(tmp_path: Path):
    labels = np.zeros((5, 8, 8), np.uint8)
    labels[1:4, 2:4, 2:4] = 9
    tifffile.imwrite(tmp_path / "stack.tif", labels, imagej=True, resolution=(2.0, 2.0),
                     metadata={"spacing": 2.0, "unit": "micron", "axes": "ZYX"})
    out = tmp_path / "stack.csv"
    assert main(["measure", str(tmp_path / "stack.tif"), "-o", str(out), "-q"]) == 0
    with out.open() as file:
        (row,) = list(csv.DictReader(file))
    assert (row["volume"], row["volume_um3"]) == ("12", "6.0")  # 12 voxels of 2 x 0.5 x 0.5 um


def test_3d_segmentation_uses_the_recorded_voxel_size_and_says_so(tmp_path: Path, capsys):
    disc = np.zeros((32, 32), np.uint16)
    yy, xx = np.mgrid[:32, :32]
    disc[(yy - 16) ** 2 + (xx - 16) ** 2 <= 36] = 900
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.stack([disc] * 4) + 100, imagej=True, resolution=(2.0, 2.0),
                     metadata={"spacing": 1.5, "unit": "micron", "axes": "ZYX"})
    model = save_checkpoint(tmp_path / "tiny.pt", tiny_unet(), ModelInfo(mode="instance", name="tiny"))
    out = tmp_path / "labels.tif"
    assert main(["segment", str(path), "-o", str(out), "-m", str(model), "--stitch-z", "--device", "cpu"]) == 0
    assert "voxel size 1.5,0.5,0.5 um (Z,Y,X) from the file" in capsys.readouterr().err
    record = read_record(out)
    assert record["parameters"]["voxel_size"] == [1.5, 0.5, 0.5]
    assert "--voxel-size 1.5,0.5,0.5" in record["command"]
    given = tmp_path / "given.tif"
    assert main(["segment", str(path), "-o", str(given), "-m", str(model), "--stitch-z", "--device", "cpu",
                 "--voxel-size", "1.5,0.5,0.5", "-q"]) == 0  # the same as typing it
    np.testing.assert_array_equal(read_image(given), read_image(out))
    assert json.dumps(read_record(given)["parameters"]["voxel_size"]) == "[1.5, 0.5, 0.5]"
