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
