"""TIFF reading and atomic label writing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from napari_unetseg import io
from napari_unetseg.io import ImageReadError, probe_image, read_image, write_labels


def big_ids(shape: tuple[int, ...]) -> np.ndarray:
    """uint32 labels with ids beyond the 16-bit range."""
    return (np.arange(np.prod(shape), dtype=np.uint32).reshape(shape) * 7919 + 70_000) % 4_000_000_000


@pytest.mark.parametrize("shape", [(32, 48), (3, 32, 32), (4, 32, 3)])
def test_labels_round_trip(tmp_path: Path, shape: tuple[int, ...]):
    labels = big_ids(shape)
    path = write_labels(tmp_path / "labels.tif", labels)
    back = read_image(path)
    assert back.dtype == np.uint32
    assert back.shape == shape  # a last axis of 3 must not turn into RGB
    np.testing.assert_array_equal(back, labels)
    with tifffile.TiffFile(path) as tif:
        assert tif.pages[0].compression == tifffile.COMPRESSION.ADOBE_DEFLATE


def test_refuses_to_overwrite_unless_asked(tmp_path: Path):
    path = write_labels(tmp_path / "labels.tif", np.ones((8, 8), np.uint32))
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="labels.tif"):
        write_labels(path, np.zeros((8, 8), np.uint32))
    assert path.read_bytes() == before
    write_labels(path, np.full((4, 4), 5, np.uint32), overwrite=True)
    np.testing.assert_array_equal(read_image(path), np.full((4, 4), 5))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.tif"]


def test_failed_write_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def write_half_then_fail(handle, data, **kwargs):
        handle.write(b"II*\x00partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(io.tifffile, "imwrite", write_half_then_fail)
    with pytest.raises(OSError, match="No space"):
        write_labels(tmp_path / "labels.tif", np.ones((8, 8), np.uint32))
    assert list(tmp_path.iterdir()) == []


def test_interrupted_overwrite_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    path = write_labels(tmp_path / "labels.tif", np.ones((8, 8), np.uint32))
    before = path.read_bytes()

    def interrupted(handle, data, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(io.tifffile, "imwrite", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_labels(path, np.zeros((8, 8), np.uint32), overwrite=True)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.tif"]


def test_rejects_non_integer_labels(tmp_path: Path):
    with pytest.raises(ValueError, match="integer"):
        write_labels(tmp_path / "labels.tif", np.zeros((8, 8), np.float32))
    assert list(tmp_path.iterdir()) == []


def test_creates_missing_folders(tmp_path: Path):
    path = write_labels(tmp_path / "a" / "b" / "labels.tif", np.ones((8, 8), np.uint16))
    assert read_image(path).dtype == np.uint16


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p: None, "no such file"),
        (lambda p: p.mkdir(), "folder"),
        (lambda p: p.write_bytes(b"this is not a TIFF"), "not a readable TIFF"),
    ],
)
def test_unreadable_files_name_the_file(tmp_path: Path, make, reason: str):
    path = tmp_path / "image.tif"
    make(path)
    for reader in (read_image, probe_image):
        with pytest.raises(ImageReadError, match=reason) as info:
            reader(path)
        assert str(path) in str(info.value)
        assert isinstance(info.value, ValueError)


def test_large_images_are_read_lazily(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    image = np.arange(4 * 16 * 16, dtype=np.uint16).reshape(4, 16, 16)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, image, photometric="minisblack")
    monkeypatch.setattr(io, "LAZY_THRESHOLD_BYTES", 0)
    lazy = read_image(path)
    assert isinstance(lazy, zarr.Array)
    assert lazy.shape == image.shape
    np.testing.assert_array_equal(lazy[2], image[2])


def test_probe_reports_stored_axes(tmp_path: Path):
    tifffile.imwrite(tmp_path / "ij.tif", np.zeros((3, 2, 16, 16), np.uint8), imagej=True, metadata={"axes": "ZCYX"})
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((16, 16, 3), np.uint8))
    tifffile.imwrite(tmp_path / "plain.tif", np.zeros((3, 16, 16), np.uint8), photometric="minisblack")
    assert probe_image(tmp_path / "ij.tif").axes == "ZCYX"
    assert probe_image(tmp_path / "rgb.tif").axes == "YXC"
    plain = probe_image(tmp_path / "plain.tif")
    assert plain.axes is None  # a bare stack does not say whether it is Z or T
    assert plain.shape == (3, 16, 16) and plain.dtype == np.uint8


@pytest.mark.parametrize("shape", [(32, 48), (3, 32, 32)])
def test_zarr_labels_round_trip(tmp_path: Path, shape: tuple[int, ...]):
    labels = big_ids(shape)
    path = write_labels(tmp_path / "labels.zarr", labels)
    back = read_image(path)
    assert isinstance(back, zarr.Array) and back.dtype == np.uint32
    assert back.chunks == (1,) * (len(shape) - 2) + shape[-2:]  # one chunk per plane
    np.testing.assert_array_equal(back[:], labels)
    assert probe_image(path).shape == shape
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.zarr"]


def test_zarr_output_replaces_only_zarr_stores(tmp_path: Path):
    path = write_labels(tmp_path / "labels.zarr", np.ones((8, 8), np.uint32))
    with pytest.raises(FileExistsError, match="already exists"):
        write_labels(path, np.zeros((8, 8), np.uint32))
    write_labels(path, np.full((8, 8), 7, np.uint32), overwrite=True)
    np.testing.assert_array_equal(read_image(path)[:], 7)
    folder = tmp_path / "mine.zarr"
    folder.mkdir()
    (folder / "notes.txt").write_text("not a store")
    with pytest.raises(FileExistsError, match="not a zarr store"):
        write_labels(folder, np.ones((8, 8), np.uint32), overwrite=True)
    assert (folder / "notes.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.zarr", "mine.zarr"]


def test_failed_labels_output_leaves_nothing_behind(tmp_path: Path):
    for name, in_memory in (("labels.zarr", None), ("labels.tif", False), ("small.tif", None)):
        with pytest.raises(RuntimeError, match="stopped"):
            with io.labels_output(tmp_path / name, (2, 8, 8), np.uint32, in_memory=in_memory) as out:
                out[0] = 1
                raise RuntimeError("stopped")
    assert list(tmp_path.iterdir()) == []


def test_bigtiff_round_trip_streams_planes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    labels = big_ids((4, 32, 32))
    source = io.create_labels_zarr(tmp_path / "source.zarr", labels.shape, labels.dtype)
    source[:] = labels
    read = []
    monkeypatch.setattr(io, "BIGTIFF_THRESHOLD_BYTES", 0)

    class Planes:  # a zarr array that records what is read from it
        shape, dtype = source.shape, source.dtype

        def __getitem__(self, key):
            read.append(key)
            return source[key]

    path = write_labels(tmp_path / "labels.tif", Planes())
    assert read == [(0,), (1,), (2,), (3,)]
    with tifffile.TiffFile(path) as tif:
        assert tif.is_bigtiff and len(tif.pages) == 4
    back = read_image(path)
    assert isinstance(back, zarr.Array)  # BigTIFF files are read lazily
    np.testing.assert_array_equal(back[:], labels)


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr_reads_the_full_resolution_level(tmp_path: Path, version: str):
    image = np.arange(2 * 3 * 16 * 16, dtype=np.uint16).reshape(2, 3, 16, 16)
    axes = [{"name": "c", "type": "channel"}] + [{"name": n, "type": "space"} for n in "zyx"]
    multiscales = [{"version": version, "axes": axes, "datasets": [{"path": "s1"}, {"path": "s0"}]}]
    group = zarr.open_group(str(tmp_path / "image.ome.zarr"), mode="w", zarr_format=2 if version == "0.4" else 3)
    group.attrs.update({"multiscales": multiscales} if version == "0.4" else {"ome": {"multiscales": multiscales}})
    group.create_array("s1", shape=image.shape, dtype=image.dtype)[:] = image  # listed first: full resolution
    group.create_array("s0", shape=(2, 3, 8, 8), dtype=image.dtype)
    back = read_image(tmp_path / "image.ome.zarr")
    np.testing.assert_array_equal(back[:], image)
    info = probe_image(tmp_path / "image.ome.zarr")
    assert info.shape == image.shape and info.axes == "CZYX"


def test_zarr_arrays_and_groups(tmp_path: Path):
    zarr.create_array(store=str(tmp_path / "a.zarr"), shape=(3, 8, 8), dtype=np.uint8, dimension_names=["t", "y", "x"])
    assert probe_image(tmp_path / "a.zarr").axes == "TYX"
    group = zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    group.create_array("raw", shape=(8, 8), dtype=np.uint8)
    with pytest.raises(ImageReadError, match="without OME-Zarr multiscales.*plain.zarr/raw"):
        read_image(tmp_path / "plain.zarr")
    assert read_image(tmp_path / "plain.zarr" / "raw").shape == (8, 8)
