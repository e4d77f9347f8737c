"""Object measurements of a label image: one row per object (size, position, extent, intensity), and CSV output.

Computed with :func:`skimage.measure.regionprops_table`, the table is a dict of equally long numpy
columns, so it goes as it is into a napari layer's ``features``, a pandas DataFrame or a CSV
file. Columns, in order (axes the labels lack are left out):

- ``t``: the time point, for labels with a T axis (each time point is measured on its own, so an
  object id that recurs over time gives one row per time point);
- ``label``: the object id;
- ``area`` (2D) or ``volume`` (3D): pixels (voxels) of the object;
- ``area_<unit>2`` / ``volume_<unit>3``: the same in physical units, when a pixel size is given
  (e.g. ``area_um2``);
- ``slices`` (3D): the number of Z planes from the object's first to its last plane;
- ``centroid_z``, ``centroid_y``, ``centroid_x``: the centre of the object's pixels, in pixel
  (array index) coordinates;
- ``bbox_z0``, ``bbox_y0``, ``bbox_x0``, ``bbox_z1``, ``bbox_y1``, ``bbox_x1``: the bounding box in pixel
  coordinates, first index included, last excluded (``labels[bbox_y0:bbox_y1, bbox_x0:bbox_x1]``);
- ``mean_intensity``, ``min_intensity``, ``max_intensity``: of the image's pixels in the object,
  when an image is given; an image with channels gets one column per channel (``mean_intensity_c0``,
  ``mean_intensity_c1``, ...), since the mean of unrelated stains means little.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from skimage.measure import regionprops_table

from .atomic import atomic_write
from .metrics import check_label_image

#: The axes of labels with this many dimensions when none are given (as napari layers of this plugin).
DEFAULT_AXES = {2: "YX", 3: "ZYX", 4: "TZYX"}
#: Unit names (napari's pint names, symbols) -> the short ASCII form used in column names.
_UNIT_NAMES = {"micrometer": "um", "micron": "um", "µm": "um", "μm": "um", "nanometer": "nm", "millimeter": "mm",
               "pixel": "px", "": "px"}
_INTENSITIES = (("intensity_mean", "mean_intensity"), ("intensity_min", "min_intensity"),
                ("intensity_max", "max_intensity"))

Table = dict[str, np.ndarray]


def unit_label(unit: str | None) -> str:
    """A unit as it appears in a column name: ``"micrometer"`` and ``"µm"`` -> ``"um"``; ``None`` -> ``"px"``."""
    text = str(unit or "").strip()
    short = _UNIT_NAMES.get(text.lower(), _UNIT_NAMES.get(text, text))
    return re.sub(r"[^0-9A-Za-z]+", "_", short).strip("_") or "px"


def measure_objects(
    labels: Any,
    image: Any = None,
    *,
    axes: str | None = None,
    scale: Sequence[float] | None = None,
    unit: str | None = None,
) -> Table:
    """The measurement table of every object in ``labels`` (see the module docstring for its columns).

    ``axes`` names the labels' axes, from ``"YX"``, ``"ZYX"``, ``"TYX"``, ``"TZYX"`` (default by the
    number of dimensions: ``YX``, ``ZYX``, ``TZYX``). ``image`` has the labels' shape, plus one last
    axis for channels. ``scale`` is the pixel size along each of ``axes`` (as a napari layer's
    ``scale``; the T entry is ignored) in ``unit`` (default ``"px"``). Labels without objects give
    the header and no rows. Raises ValueError for non-integer or negative labels, unknown axes or
    an image of another shape.
    """
    axes = resolve_axes(labels, axes)
    check_label_image(labels, "labels")
    spatial = axes.replace("T", "")
    if image is not None:
        image = _check_image(labels, image)
    if scale is not None and len(scale) != len(axes):
        raise ValueError(f"scale {tuple(scale)} has {len(scale)} values but the labels have axes {axes}")
    pixel = None if scale is None else float(np.prod([s for s, a in zip(scale, axes) if a != "T"]))
    if "T" not in axes:
        return _measure_volume(np.asarray(labels), None if image is None else np.asarray(image), spatial, pixel, unit)
    tables = []
    for t in range(labels.shape[0]):
        frame = _measure_volume(
            np.asarray(labels[t]), None if image is None else np.asarray(image[t]), spatial, pixel, unit
        )
        tables.append({"t": np.full(len(frame["label"]), t, dtype=np.int64), **frame})
    return {name: np.concatenate([table[name] for table in tables]) for name in tables[0]}


def resolve_axes(labels: Any, axes: str | None = None) -> str:
    """The labels' axes: ``axes`` checked against their shape, else the default for their dimensions."""
    ndim = len(labels.shape)
    if axes is None:
        if ndim not in DEFAULT_AXES:
            raise ValueError(f"labels need 2 to 4 dimensions (YX, ZYX or TZYX), got shape {tuple(labels.shape)}")
        return DEFAULT_AXES[ndim]
    axes = axes.upper()
    if axes not in ("YX", "ZYX", "TYX", "TZYX"):
        raise ValueError(f"labels axes {axes!r}: use YX, ZYX, TYX or TZYX")
    if len(axes) != ndim:
        shape = tuple(labels.shape)
        raise ValueError(f"axes {axes!r} name {len(axes)} axes but the labels have {ndim} (shape {shape})")
    return axes


def _check_image(labels: Any, image: Any) -> Any:
    shape, image_shape = tuple(labels.shape), tuple(image.shape)
    if image_shape != shape and image_shape[:-1] != shape:
        raise ValueError(f"the labels have shape {shape} but the image has shape {image_shape}")
    if np.dtype(image.dtype).kind not in "biuf":
        raise ValueError(f"cannot measure intensities of an image of dtype {np.dtype(image.dtype)}")
    return image


def _measure_volume(
    labels: np.ndarray, image: np.ndarray | None, axes: str, pixel: float | None, unit: str | None
) -> Table:
    """The table of one 2D or 3D label image (``axes`` ``"YX"`` or ``"ZYX"``); a mask (bool) is label 1."""
    labels = labels.view(np.uint8) if labels.dtype == bool else labels
    image = image.view(np.uint8) if image is not None and image.dtype == bool else image
    intensities = _INTENSITIES if image is not None else ()
    names = ["label", "area", "centroid", "bbox", *(name for name, _ in intensities)]
    raw = regionprops_table(labels, intensity_image=image, properties=names)
    size = "area" if len(axes) == 2 else "volume"
    table: Table = {"label": raw["label"].astype(np.int64), size: raw["area"].astype(np.int64)}
    if pixel is not None:
        table[f"{size}_{unit_label(unit)}{len(axes)}"] = raw["area"] * pixel
    if "Z" in axes:
        table["slices"] = (raw[f"bbox-{len(axes)}"] - raw["bbox-0"]).astype(np.int64)
    for i, axis in enumerate(axes.lower()):
        table[f"centroid_{axis}"] = raw[f"centroid-{i}"]
    for end in (0, 1):
        for i, axis in enumerate(axes.lower()):
            table[f"bbox_{axis}{end}"] = raw[f"bbox-{i + end * len(axes)}"].astype(np.int64)
    channels = None if image is None or image.ndim == labels.ndim else image.shape[-1]
    for name, column in intensities:
        if channels is None:
            table[column] = raw[name].astype(np.float64)
        for c in range(channels or 0):
            table[f"{column}_c{c}"] = raw[f"{name}-{c}"].astype(np.float64)
    return table


def table_to_csv(table: Table) -> str:
    """The table as CSV text: a header line, then one line per object (floats in full precision)."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(table)
    writer.writerows(zip(*(column.tolist() for column in table.values())))
    return text.getvalue()


def write_csv(table: Table, path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write the table to ``path`` as CSV, atomically; an existing file is replaced only with ``overwrite``."""
    path = Path(path)
    with atomic_write(path, overwrite) as handle:
        handle.write(table_to_csv(table).encode())
    return path
