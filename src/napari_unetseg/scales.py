"""Physical pixel sizes recorded in image files: OME-TIFF, ImageJ TIFF and OME-Zarr.

3D segmentation needs the voxel anisotropy and measurements need units; microscopes write both
into the file, so users should not have to type them again. Only metadata written for this
purpose is trusted: a plain TIFF's resolution tags usually hold a screen's 72 dpi, not a pixel
size, and are ignored. Sizes come back in micrometres when the file's unit converts to them.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ElementTree
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: Length units and their size in micrometres; the names files use for them.
_MICROMETRES = {"nm": 1e-3, "um": 1.0, "mm": 1e3, "cm": 1e4, "m": 1e6}
_UNIT_NAMES = {
    "nm": "nm", "nanometer": "nm", "nanometre": "nm",
    "um": "um", "µm": "um", "μm": "um", "\\u00b5m": "um", "micron": "um", "microns": "um",
    "micrometer": "um", "micrometre": "um",
    "mm": "mm", "millimeter": "mm", "millimetre": "mm",
    "cm": "cm", "centimeter": "cm", "centimetre": "cm",
    "m": "m", "meter": "m", "metre": "m",
}
#: The axes a physical pixel size can be recorded for.
PHYSICAL_AXES = "ZYX"


@dataclass(frozen=True)
class PixelSize:
    """The size of a pixel along each spatial axis the file records (``{"Z": 2.0, "Y": 0.5, "X": 0.5}``)."""

    sizes: Mapping[str, float]
    unit: str = "um"

    def along(self, axes: str) -> tuple[float, ...] | None:
        """The sizes along ``axes`` (e.g. ``"ZYX"``), or None unless the file records all of them."""
        if not all(axis in self.sizes for axis in axes):
            return None
        return tuple(self.sizes[axis] for axis in axes)

    def describe(self, axes: str) -> str:
        """``"2,0.5,0.5 um"``: the sizes along ``axes`` as the command line writes them."""
        values = self.along(axes) or ()
        return f"{','.join(f'{v:g}' for v in values)} {self.unit}"


def unit_name(text: Any) -> str | None:
    """The short name (``"um"``) of a length unit as files write it (``"micron"``, ``"µm"``), or None."""
    return _UNIT_NAMES.get(str(text).strip().lower()) if text is not None else None


def _in_micrometres(sizes: Mapping[str, tuple[float, str]]) -> PixelSize | None:
    """Sizes with their own units -> one :class:`PixelSize` in um (None if any is unusable)."""
    kept: dict[str, float] = {}
    for axis, (value, unit) in sizes.items():
        if unit not in _MICROMETRES or not (math.isfinite(value) and value > 0):
            return None
        kept[axis] = value * _MICROMETRES[unit]
    return PixelSize(kept) if kept else None


def ome_xml_pixel_size(xml: str) -> PixelSize | None:
    """``PhysicalSizeX/Y/Z`` of the first image of an OME-XML document (units default to um)."""
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError:
        return None
    pixels = next((node for node in root.iter() if node.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None:
        return None
    sizes = {}
    for axis in PHYSICAL_AXES:
        value = pixels.get(f"PhysicalSize{axis}")
        if value is not None:
            sizes[axis] = (float(value), unit_name(pixels.get(f"PhysicalSize{axis}Unit", "um")))
    return _in_micrometres(sizes)


def imagej_pixel_size(metadata: Mapping[str, Any], x_resolution: Any, y_resolution: Any) -> PixelSize | None:
    """An ImageJ TIFF's pixel size: its ``unit`` and ``spacing`` (Z) and the resolution tags (pixels per unit)."""
    unit = unit_name(metadata.get("unit"))
    if unit is None:
        return None
    sizes = {}
    for axis, resolution in (("Y", y_resolution), ("X", x_resolution)):
        if resolution is not None:
            numerator, denominator = resolution
            if numerator > 0:
                sizes[axis] = (denominator / numerator, unit)
    if metadata.get("spacing") is not None:
        sizes["Z"] = (float(metadata["spacing"]), unit)
    return _in_micrometres(sizes)


def tiff_pixel_size(tif: Any) -> PixelSize | None:
    """The pixel size an open :class:`tifffile.TiffFile` records as OME or ImageJ metadata, else None."""
    if tif.is_ome and tif.ome_metadata:
        return ome_xml_pixel_size(tif.ome_metadata)
    if tif.is_imagej and tif.imagej_metadata:
        tags = tif.pages[0].tags
        resolution = [tags[name].value if name in tags else None for name in ("XResolution", "YResolution")]
        return imagej_pixel_size(tif.imagej_metadata, *resolution)
    return None


def ome_zarr_pixel_size(multiscales: Sequence[Mapping[str, Any]]) -> PixelSize | None:
    """The full-resolution level's ``scale`` transforms of OME-Zarr ``multiscales`` metadata, per spatial axis."""
    level = multiscales[0]
    axes = level.get("axes", [])
    scale = [1.0] * len(axes)
    transforms = [*level["datasets"][0].get("coordinateTransformations", []),
                  *level.get("coordinateTransformations", [])]
    for transform in transforms:
        if transform.get("type") == "scale" and len(transform.get("scale", [])) == len(axes):
            scale = [a * float(b) for a, b in zip(scale, transform["scale"])]
    sizes = {}
    for axis, value in zip(axes, scale):
        name = str(axis.get("name", "")).upper() if isinstance(axis, Mapping) else ""
        unit = unit_name(axis.get("unit")) if isinstance(axis, Mapping) else None
        if name in ("Z", "Y", "X") and unit is not None:
            sizes[name] = (value, unit)
    return _in_micrometres(sizes)
