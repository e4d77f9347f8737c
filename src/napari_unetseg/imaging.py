"""Which kind of microscopy a model is made for, and which kind an image looks like.

The viewer uses this to preselect a fitting model: the EM membrane model run on a fluorescence
image paints membrane-and-cell blobs over the nuclei, and a new user would take the plugin for
broken. The image test is deliberately plain (where the median sits between the darkest and the
brightest pixels) and answers ``None`` when in doubt, so it only ever rules out a clear mismatch.
"""

from __future__ import annotations

import numpy as np

from .versions import base_name

FLUORESCENCE = "fluorescence"
ELECTRON_MICROSCOPY = "electron microscopy"
#: The built-in models, and so every version fine-tuned from them (``nuclei-ft2`` -> ``nuclei``).
BUILTIN_IMAGING = {"nuclei": FLUORESCENCE, "em-membranes": ELECTRON_MICROSCOPY}
#: Fluorescence: a mostly dark background with bright objects, so the median lies low between the
#: 1st and 99.8th percentiles (0.06-0.11 on the sample data, 0.11-0.23 on cells3d nuclei slices).
#: EM sections are grey with dark membranes: the median lies near the middle (0.52-0.54 on ISBI 2012).
FLUORESCENCE_BELOW = 0.3
ELECTRON_ABOVE = 0.4
#: Planes are looked at on a grid of at most this many pixels a side (a fraction of a millisecond).
SAMPLE_SIDE = 512


def model_imaging(name: str) -> str | None:
    """The kind of image the model ``name`` (a built-in, or a version fine-tuned from one) is for; None if unknown."""
    return BUILTIN_IMAGING.get(base_name(name))


def image_imaging(plane: np.ndarray) -> str | None:
    """:data:`FLUORESCENCE`, :data:`ELECTRON_MICROSCOPY`, or None when a 2D ``plane`` could be either (or is flat)."""
    plane = np.asarray(plane)
    if plane.ndim != 2 or plane.size == 0:
        return None
    step_y, step_x = (max(1, n // SAMPLE_SIDE) for n in plane.shape)
    values = plane[::step_y, ::step_x].astype(np.float32)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    low, median, high = np.percentile(values, [1.0, 50.0, 99.8])
    if high <= low:
        return None
    position = (median - low) / (high - low)
    if position < FLUORESCENCE_BELOW:
        return FLUORESCENCE
    if position > ELECTRON_ABOVE:
        return ELECTRON_MICROSCOPY
    return None
