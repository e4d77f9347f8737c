"""Per-plane percentile normalisation, shared by inference and training so both see the same input.

Two guards keep a few bad pixels from changing a whole plane's result:

* Saturated pixels (at the maximum of an integer dtype, e.g. hot pixels at 65535 in a uint16
  image) carry no intensity information; when they are rare (under :data:`SATURATED_SHARE` of
  the plane) they are left out of the percentiles, which otherwise land on them in small planes
  and squash every other pixel towards 0.
* Normalised values are clipped to [:data:`CLIP_LOW`, :data:`CLIP_HIGH`], so one outlier that the
  percentiles did not catch (e.g. a pixel at 2**32 - 1 among values near 1000) stays one bright
  pixel instead of a value of millions that swamps the network's response around it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_MAX_SAMPLES = 1 << 22  # percentiles of huge planes are estimated from a regular subsample
#: Normalised values (0 = low percentile, 1 = high percentile) are clipped to this range.
CLIP_LOW, CLIP_HIGH = -1.0, 3.0
#: Pixels at an integer dtype's maximum are left out of the percentiles while they are rarer than this.
SATURATED_SHARE = 0.01


def check_image(image: Any, what: str = "image") -> None:
    """Refuse what cannot be segmented or trained on: TypeError for a non-array, ValueError for its dtype.

    Arrays (numpy, dask, zarr: anything with ``shape`` and ``dtype``) of booleans (a mask: 0/1),
    integers and real floats are accepted; complex, text and object data are refused by name.
    """
    if not (hasattr(image, "shape") and hasattr(image, "dtype")):
        raise TypeError(
            f"{what} must be an array with a shape and a dtype (numpy, dask or zarr), got {type(image).__name__}; "
            "convert it with numpy.asarray"
        )
    try:
        dtype = np.dtype(image.dtype)
    except TypeError:  # e.g. a torch tensor
        raise TypeError(f"{what} has dtype {image.dtype}, not a numpy dtype; convert it with numpy.asarray") from None
    if dtype.kind == "c":
        raise ValueError(f"{what} is complex-valued ({dtype}); segment its magnitude (numpy.abs) or one part of it")
    if dtype.kind not in "biuf":
        raise ValueError(f"{what} has dtype {dtype}, not numbers; give an integer, float or boolean image")


def normalize_plane(plane: np.ndarray, low: float = 1.0, high: float = 99.8) -> np.ndarray | None:
    """Map the ``low`` and ``high`` percentiles of ``plane`` to 0 and 1 (float32), clipped to [-1, 3].

    NaN and inf are ignored when computing percentiles and become 0 afterwards, so they cannot
    poison a plane; rare saturated pixels are left out of the percentiles (see the module
    docstring). A boolean plane is read as 0/1. Returns ``None`` for a plane with no finite
    values or no contrast, which callers treat as background.
    """
    levels = percentile_levels(plane, low, high)
    return None if levels is None else apply_levels(plane, levels)


def percentile_levels(values: np.ndarray, low: float = 1.0, high: float = 99.8) -> tuple[float, float] | None:
    """The values :func:`normalize_plane` maps to 0 and 1: the ``low`` / ``high`` percentiles of the finite
    values (a regular subsample of huge arrays), rare saturated pixels left out; None without contrast."""
    data = _as_numbers(values)
    sample = data[np.isfinite(data)] if data.dtype.kind == "f" else data.ravel()
    if sample.size == 0:
        return None
    if sample.size > _MAX_SAMPLES:
        sample = sample[:: sample.size // _MAX_SAMPLES]
    sample = _without_rare_saturation(sample)
    lo, hi = np.percentile(sample, [low, high]).astype(np.float64)
    if not hi > lo:
        hi = float(sample.max())
        if not hi > lo:
            return None
    return float(lo), float(hi)


def apply_levels(values: np.ndarray, levels: tuple[float, float]) -> np.ndarray:
    """``values`` with ``levels`` (from :func:`percentile_levels`) mapped to 0 and 1, clipped, NaN/inf -> 0."""
    data = _as_numbers(values)
    lo, hi = levels
    out = (data.astype(np.float32) - np.float32(lo)) * np.float32(1.0 / (hi - lo))
    np.clip(out, CLIP_LOW, CLIP_HIGH, out=out)
    if data.dtype.kind == "f":
        out[~np.isfinite(data)] = 0.0
    return out


def _as_numbers(values: np.ndarray) -> np.ndarray:
    data = np.asarray(values)
    return data.view(np.uint8) if data.dtype.kind == "b" else data


def _without_rare_saturation(sample: np.ndarray) -> np.ndarray:
    """``sample`` without the values at its integer dtype's maximum, if they are fewer than
    :data:`SATURATED_SHARE` (bool/uint8 masks and widely saturated planes are left as they are)."""
    if sample.dtype.kind not in "iu" or sample.dtype.itemsize < 2:
        return sample
    unsaturated = sample < np.iinfo(sample.dtype).max
    saturated = sample.size - int(np.count_nonzero(unsaturated))
    if 0 < saturated < SATURATED_SHARE * sample.size:
        return sample[unsaturated]
    return sample
