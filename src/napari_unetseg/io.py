"""Reading images and writing label images as TIFF files, with errors that name the file.

Large images are opened lazily (zarr over the TIFF) so a stack bigger than memory can still
be segmented plane by plane; labels are written atomically, so an interrupted run never
leaves a half-written file under the final name.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
import zarr

#: Images whose decoded size exceeds this are returned as lazy zarr arrays, not read into memory.
LAZY_THRESHOLD_BYTES = 1 << 30
#: Label images at least this big are written as BigTIFF (classic TIFF stops at 4 GiB offsets;
#: the margin covers compression overhead and metadata).
BIGTIFF_THRESHOLD_BYTES = (1 << 31) - (1 << 25)
#: tifffile axis letters -> the letters understood by segmentation ("S" = samples, e.g. RGB).
_AXIS_LETTERS = {"T": "T", "Z": "Z", "C": "C", "S": "C", "Y": "Y", "X": "X"}


class ImageReadError(ValueError):
    """An image file is missing or cannot be read; the message names the file and the reason."""


def _check_file(path: Path) -> None:
    if not path.exists():
        raise ImageReadError(f"{path}: no such file")
    if path.is_dir():
        raise ImageReadError(f"{path}: is a folder, not an image file")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def read_image(path: str | os.PathLike) -> np.ndarray | zarr.Array:
    """Read the first image series of a TIFF file (a plane, a stack or a hyperstack).

    Images up to :data:`LAZY_THRESHOLD_BYTES` come back as numpy arrays; bigger ones as
    read-only zarr arrays that decode only the planes asked for (the file stays open while
    the array is in use).
    """
    path = Path(path)
    _check_file(path)
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            if series.size * series.dtype.itemsize <= LAZY_THRESHOLD_BYTES:
                return series.asarray()
        return zarr.open(tifffile.imread(path, aszarr=True, level=0), mode="r")
    except MemoryError:
        raise
    except Exception as exc:  # decoders raise many kinds (zlib.error, imagecodecs errors, ...)
        raise ImageReadError(f"{path}: not a readable TIFF image ({_reason(exc)})") from None


@dataclass(frozen=True)
class ImageInfo:
    """What a TIFF header says: shape and dtype of the first series and its axis order, if stored."""

    shape: tuple[int, ...]
    dtype: np.dtype
    axes: str | None


def probe_image(path: str | os.PathLike) -> ImageInfo:
    """Shape, dtype and axis order (e.g. ``"ZYX"``, ``"YXC"``) of a TIFF file, reading only its header.

    ``axes`` is None when the file does not record it: ImageJ and OME files and files written by
    tifffile with axes do; plain multi-page files do not (tifffile calls their stack axis "I" or
    "Q"). Raises :class:`ImageReadError` like :func:`read_image`, so it doubles as a quick check.
    """
    path = Path(path)
    _check_file(path)
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            shape, dtype, stored = tuple(series.shape), series.dtype, series.axes
    except Exception as exc:  # tifffile raises many kinds on malformed headers
        raise ImageReadError(f"{path}: not a readable TIFF image ({_reason(exc)})") from None
    letters = [_AXIS_LETTERS.get(letter, "?") for letter in stored]
    known = "?" not in letters and len(set(letters)) == len(letters)
    return ImageInfo(shape=shape, dtype=dtype, axes="".join(letters) if known else None)


def write_labels(path: str | os.PathLike, labels: Any, overwrite: bool = False) -> Path:
    """Write a label image as a zlib-compressed TIFF, atomically; refuse to replace a file unless ``overwrite``.

    The data goes to a hidden temporary file in the same folder, which then takes the final
    name in one step, so readers never see a partial file and a failure leaves nothing behind.
    Each 2D plane becomes one page; BigTIFF is used for images near or above 2 GiB.
    """
    path = Path(path)
    labels = np.asarray(labels)
    if labels.dtype != bool and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must have an integer dtype, got {labels.dtype}")
    if labels.ndim < 2:
        raise ValueError(f"labels need at least 2 dimensions (Y, X), got shape {labels.shape}")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; choose another name or allow overwriting")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        # "x" mode honours the umask (tempfile.mkstemp would make the result private).
        with open(tmp, "xb") as handle:
            tifffile.imwrite(
                handle,
                labels,
                photometric="minisblack",
                compression="zlib",
                bigtiff=labels.nbytes >= BIGTIFF_THRESHOLD_BYTES,
            )
            handle.flush()
            os.fsync(handle.fileno())
        _move_into_place(tmp, path, overwrite)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _move_into_place(tmp: Path, path: Path, overwrite: bool) -> None:
    """Give ``tmp`` the name ``path``; without ``overwrite``, never replace a file created meanwhile."""
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # atomic and fails if the name is taken
    except FileExistsError:
        raise FileExistsError(f"{path} already exists; choose another name or allow overwriting") from None
    except OSError:  # file systems without hard links (e.g. FAT, some network shares)
        if path.exists():
            raise FileExistsError(f"{path} already exists; choose another name or allow overwriting") from None
        os.replace(tmp, path)
        return
    tmp.unlink()
