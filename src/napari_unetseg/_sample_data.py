"""napari sample data: seeded synthetic fluorescent nuclei from :mod:`napari_unetseg.synthetic`."""

from __future__ import annotations

from typing import Any

import numpy as np

from .synthetic import sample_image_2d, sample_stack_3d

LayerData = tuple[Any, dict[str, Any], str]


def _display(image: np.ndarray) -> dict[str, Any]:
    """Grey colormap with contrast from percentiles, so a few bright nuclei do not darken the rest."""
    low, high = np.percentile(image, [0.5, 99.8])
    return {"colormap": "gray", "contrast_limits": (float(low), float(high))}


def nuclei_2d() -> list[LayerData]:
    """A 256 x 256 image of synthetic nuclei (the same every time)."""
    image, _ = sample_image_2d()
    return [(image, {"name": "nuclei 2D", **_display(image)}, "image")]


def nuclei_3d() -> list[LayerData]:
    """A (24, 192, 192) stack of synthetic nuclei; slices are 2 pixels apart, so Z is scaled by 2."""
    image, _ = sample_stack_3d()
    meta = {"name": "nuclei 3D", "scale": (2.0, 1.0, 1.0), "axis_labels": ("z", "y", "x"), **_display(image)}
    return [(image, meta, "image")]
