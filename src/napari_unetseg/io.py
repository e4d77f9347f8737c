"""Reading images (TIFF, zarr, OME-Zarr) and writing label images (TIFF or zarr), with errors that name the file.

Large images are opened lazily (zarr over the TIFF, or the zarr store itself) so a stack bigger
than memory can still be segmented plane by plane; labels are written atomically, so an
interrupted run never leaves a half-written file under the final name. Large results go to zarr
stores with one compressed chunk per 2D plane, filled plane by plane as they are segmented.
"""

from __future__ import annotations

import math
import os
import secrets
import shutil
import tempfile
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numcodecs
import numpy as np
import tifffile
import zarr

from .atomic import atomic_write, raise_naming
from .options import LARGE_RESULT_BYTES, ZARR_SUFFIX
from .scales import PixelSize, ome_zarr_pixel_size, tiff_pixel_size

#: Images whose decoded size exceeds this are returned as lazy zarr arrays, not read into memory.
LAZY_THRESHOLD_BYTES = 1 << 30
#: Label images at least this big are written as BigTIFF (classic TIFF stops at 4 GiB offsets;
#: the margin covers compression overhead and metadata).
BIGTIFF_THRESHOLD_BYTES = (1 << 31) - (1 << 25)
#: tifffile axis letters (and OME-Zarr axis names, upper-cased) -> the letters understood by
#: segmentation ("S" = samples, e.g. RGB).
_AXIS_LETTERS = {"T": "T", "Z": "Z", "C": "C", "S": "C", "Y": "Y", "X": "X"}
_ZARR_MARKERS = ("zarr.json", ".zarray", ".zgroup")
#: Labels compress very well with zstd after bit-shuffling (runs of equal ids).
LABELS_COMPRESSOR = numcodecs.Blosc(cname="zstd", clevel=3, shuffle=numcodecs.Blosc.BITSHUFFLE)


class ImageReadError(ValueError):
    """An image file is missing or cannot be read; the message names the file and the reason."""


def is_zarr_store(path: str | os.PathLike) -> bool:
    """True for an existing zarr store: a folder with zarr metadata (an array or a group)."""
    path = Path(path)
    return path.is_dir() and any((path / marker).is_file() for marker in _ZARR_MARKERS)


def _zarr_name(path: Path) -> bool:
    """True for a name ending in ``.zarr``: outputs so named are written as zarr."""
    return path.suffix.lower() == ZARR_SUFFIX


def is_zarr(path: str | os.PathLike) -> bool:
    """True for a zarr store or a path meant to become one (a ``.zarr`` name)."""
    return _zarr_name(Path(path)) or is_zarr_store(path)


def _check_file(path: Path) -> None:
    if not path.exists():
        raise ImageReadError(f"{path}: no such file")
    if path.is_dir() and not is_zarr(path):
        raise ImageReadError(f"{path}: is a folder, not an image file or zarr store")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _axis_letters(names: Sequence[str] | None) -> str | None:
    """``"ZYX"`` from stored axis names (tifffile letters or OME-Zarr names), or None if unknown or absent."""
    if not names:
        return None
    letters = [_AXIS_LETTERS.get(str(name).upper(), "?") for name in names]
    known = "?" not in letters and len(set(letters)) == len(letters)
    return "".join(letters) if known else None


def _open_zarr(path: Path) -> tuple[zarr.Array, str | None, PixelSize | None]:
    """The image array of a zarr store, its axis letters and pixel size if recorded; for OME-Zarr the
    full-resolution level."""
    node = zarr.open(store=str(path), mode="r")
    if isinstance(node, zarr.Array):
        return node, _axis_letters(getattr(node.metadata, "dimension_names", None)), None
    multiscales = node.attrs.get("multiscales") or node.attrs.get("ome", {}).get("multiscales")
    if not multiscales:
        arrays = sorted(name for name, _ in node.arrays())
        hint = f"; give one of its arrays, e.g. {path / arrays[0]}" if arrays else ""
        raise ImageReadError(f"{path}: a zarr group without OME-Zarr multiscales metadata{hint}")
    level = multiscales[0]
    names = [axis["name"] if isinstance(axis, dict) else axis for axis in level.get("axes", [])]
    return node[level["datasets"][0]["path"]], _axis_letters(names), _recorded(ome_zarr_pixel_size, multiscales)


def _read_error(path: Path, exc: BaseException) -> ImageReadError:
    kind = "zarr store" if is_zarr(path) else "TIFF image"
    return ImageReadError(f"{path}: not a readable {kind} ({_reason(exc)})")


def read_image(path: str | os.PathLike) -> np.ndarray | zarr.Array:
    """Read a TIFF file's first image series (a plane, a stack or a hyperstack), or open a zarr / OME-Zarr store.

    TIFF images up to :data:`LAZY_THRESHOLD_BYTES` come back as numpy arrays; bigger ones and
    BigTIFF files as read-only zarr arrays that decode only the planes asked for (the file stays
    open while the array is in use). Zarr stores always stay lazy; of an OME-Zarr image the
    full-resolution level is used.
    """
    path = Path(path)
    _check_file(path)
    try:
        if is_zarr(path):
            return _open_zarr(path)[0]
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            if not tif.is_bigtiff and series.size * series.dtype.itemsize <= LAZY_THRESHOLD_BYTES:
                return series.asarray()
        return zarr.open(tifffile.imread(path, aszarr=True, level=0), mode="r")
    except (MemoryError, ImageReadError):
        raise
    except Exception as exc:  # decoders raise many kinds (zlib.error, imagecodecs errors, ...)
        raise _read_error(path, exc) from None


@dataclass(frozen=True)
class ImageInfo:
    """What a file header says: shape and dtype of the image, and its axis order and pixel size if stored."""

    shape: tuple[int, ...]
    dtype: np.dtype
    axes: str | None
    pixel_size: PixelSize | None = None


def probe_image(path: str | os.PathLike) -> ImageInfo:
    """Shape, dtype and axis order (e.g. ``"ZYX"``, ``"YXC"``) of a TIFF file or zarr store, reading only metadata.

    ``axes`` is None when the file does not record it: ImageJ and OME files, files written by
    tifffile with axes, OME-Zarr and zarr v3 arrays with dimension names do; plain multi-page
    files do not (tifffile calls their stack axis "I" or "Q"). Raises :class:`ImageReadError`
    like :func:`read_image`, so it doubles as a quick check.
    """
    path = Path(path)
    _check_file(path)
    try:
        if is_zarr(path):
            array, axes, size = _open_zarr(path)
            return ImageInfo(shape=tuple(array.shape), dtype=np.dtype(array.dtype), axes=axes, pixel_size=size)
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            shape, dtype, stored = tuple(series.shape), series.dtype, series.axes
            size = _recorded(tiff_pixel_size, tif)
    except ImageReadError:
        raise
    except Exception as exc:  # tifffile and zarr raise many kinds on malformed headers
        raise _read_error(path, exc) from None
    return ImageInfo(shape=shape, dtype=dtype, axes=_axis_letters(stored), pixel_size=size)


def _recorded(read_size: Any, metadata: Any) -> PixelSize | None:
    """``read_size(metadata)``, or None when that metadata is damaged: it never stops the image being read."""
    try:
        return read_size(metadata)
    except Exception:  # malformed metadata of any kind only loses the sizes
        return None


def create_labels_zarr(path: str | os.PathLike, shape: Sequence[int], dtype: Any) -> zarr.Array:
    """A new all-zero zarr (format 2, read by the most tools) for labels at ``path``: one compressed chunk per 2D plane.

    One chunk per plane means writers of different planes (e.g. cluster workers) never share a
    chunk, and writing a plane replaces one chunk file at once; planes of zeros take no space.
    """
    shape = tuple(int(n) for n in shape)
    chunks = (1,) * (len(shape) - 2) + tuple(max(1, n) for n in shape[-2:])
    return zarr.create_array(
        store=str(path), shape=shape, chunks=chunks, dtype=dtype, fill_value=0, zarr_format=2,
        compressors=LABELS_COMPRESSOR,
    )


def temporary_labels_zarr(shape: Sequence[int], dtype: Any) -> zarr.Array:
    """A labels zarr (see :func:`create_labels_zarr`) in a new temporary folder, deleted with the array or at exit.

    For results too large for memory that live only as long as something using them, e.g. a
    napari layer.
    """
    folder = Path(tempfile.mkdtemp(prefix="unetseg-labels-"))
    array = create_labels_zarr(folder / f"labels{ZARR_SUFFIX}", shape, dtype)
    weakref.finalize(array, shutil.rmtree, folder, True)
    return array


#: Errors of a write that fill or refuse the output's storage; their messages should name the output.
def _refuse_existing(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; choose another name or allow overwriting")


@contextmanager
def _staged_zarr(
    path: Path, shape: Sequence[int], dtype: Any, overwrite: bool, metadata: dict[str, Any] | None = None
) -> Iterator[zarr.Array]:
    """A labels zarr under a hidden name beside ``path`` that takes the name ``path`` if the block succeeds.

    ``metadata`` goes into the array's attributes before the store takes its name.
    """
    _refuse_existing(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    try:
        array = create_labels_zarr(tmp, shape, dtype)
        yield array
        array.attrs.update(metadata or {})
        _move_store_into_place(tmp, path, overwrite)
    except BaseException as exc:
        raise_naming(exc, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _move_store_into_place(tmp: Path, path: Path, overwrite: bool) -> None:
    """Rename the store ``tmp`` to ``path``; with ``overwrite`` replace an existing zarr store (never anything else)."""
    if not path.exists():
        os.rename(tmp, path)
        return
    _refuse_existing(path, overwrite)
    if not is_zarr_store(path):
        raise FileExistsError(f"{path} exists and is not a zarr store; not replacing it")
    old = path.with_name(f".{path.name}.{secrets.token_hex(8)}.old")
    os.rename(path, old)
    try:
        os.rename(tmp, path)
    except BaseException:
        os.rename(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def labels_output(
    path: str | os.PathLike,
    shape: Sequence[int],
    dtype: Any,
    *,
    overwrite: bool = False,
    in_memory: bool | None = None,
    metadata: dict[str, Any] | None = None,
) -> Iterator[np.ndarray | zarr.Array]:
    """An all-zero array to fill with labels that becomes the file ``path`` when the block ends without error.

    A ``.zarr`` path is filled directly (under a temporary name until done). For a TIFF, results
    up to :data:`LARGE_RESULT_BYTES` are held in memory (``in_memory`` decides otherwise); larger
    ones go to a temporary zarr store beside ``path`` (so cluster workers that see ``path`` see
    it too), copied into the TIFF plane by plane at the end. On error nothing is left at ``path``.
    ``metadata`` is stored with the labels, as in :func:`write_labels`.
    """
    path = Path(path)
    if _zarr_name(path):
        with _staged_zarr(path, shape, dtype, overwrite, metadata) as out:
            yield out
        return
    _refuse_existing(path, overwrite)
    if in_memory is None:
        in_memory = math.prod(shape) * np.dtype(dtype).itemsize <= LARGE_RESULT_BYTES
    if in_memory:
        out = np.zeros(tuple(shape), dtype)
        yield out
        write_labels(path, out, overwrite=overwrite, metadata=metadata)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as folder:
        out = create_labels_zarr(Path(folder) / f"labels{ZARR_SUFFIX}", shape, dtype)
        yield out
        write_labels(path, out, overwrite=overwrite, metadata=metadata)


def write_labels(
    path: str | os.PathLike, labels: Any, overwrite: bool = False, metadata: dict[str, Any] | None = None
) -> Path:
    """Write a label image atomically as a zlib-compressed TIFF, or as zarr if ``path`` ends in ``.zarr``.

    Refuses to replace a file unless ``overwrite``. The data goes to a hidden temporary file in
    the same folder, which then takes the final name in one step, so readers never see a partial
    file and a failure leaves nothing behind. ``labels`` may be any array-like (numpy, zarr, dask):
    one 2D plane is read at a time unless it is a numpy array already. In a TIFF each plane
    becomes one page; BigTIFF is used for images near or above 2 GiB. ``metadata`` (JSON-able
    values by key, e.g. the provenance record) goes into the zarr attributes, or into the TIFF's
    ImageDescription as tifffile's JSON metadata (read back by ``TiffFile.shaped_metadata``).
    """
    path = Path(path)
    if not hasattr(labels, "dtype"):
        labels = np.asarray(labels)
    shape, dtype = tuple(labels.shape), np.dtype(labels.dtype)
    if dtype.kind not in "biu":  # bool, signed or unsigned integers
        raise ValueError(f"labels must have an integer dtype, got {dtype}")
    if len(shape) < 2:
        raise ValueError(f"labels need at least 2 dimensions (Y, X), got shape {shape}")
    if _zarr_name(path):
        with _staged_zarr(path, shape, dtype, overwrite, metadata) as out:
            for index in np.ndindex(*shape[:-2]):
                out[index] = np.asarray(labels[index])
        return path
    _refuse_existing(path, overwrite)
    if isinstance(labels, np.ndarray) or len(shape) == 2:
        data, layout = np.asarray(labels), {}
    else:  # stream: tifffile takes an iterator of pages given the shape and dtype
        data, layout = (np.asarray(labels[i]) for i in np.ndindex(*shape[:-2])), {"shape": shape, "dtype": dtype}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, overwrite) as handle:
        tifffile.imwrite(
            handle,
            data,
            photometric="minisblack",
            compression="zlib",
            bigtiff=math.prod(shape) * dtype.itemsize >= BIGTIFF_THRESHOLD_BYTES,
            metadata=dict(metadata or {}),
            **layout,
        )
    return path

