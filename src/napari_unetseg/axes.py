"""Which axis of an image is which, and reading one 2D plane of it: shared by every engine and front.

An image's axes are named with the letters T, Z, C, Y and X (``"TZYX"``, ``"YXC"``); everything
but Y, X and C is iterated over to give 2D planes. Kept apart from the engine so that the command
line, the cluster path and the widget agree on the same rules.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .options import labels_dtype

SPATIAL_AXES = "YX"
KNOWN_AXES = "TZCYX"


@dataclass(frozen=True)
class AxesLayout:
    """How an image's axes map to planes: ``axes`` names each axis of the image (e.g. ``"TZYXC"``)."""

    axes: str

    @property
    def channel_axis(self) -> int | None:
        return self.axes.index("C") if "C" in self.axes else None

    @property
    def plane_axes(self) -> str:
        """Axes iterated over to get 2D planes, in image order (everything but Y, X and C)."""
        return "".join(a for a in self.axes if a not in "YXC")

    def output_axes(self) -> str:
        return self.axes.replace("C", "")


def parse_axes(shape: Sequence[int], axes: str | None = None) -> AxesLayout:
    """Name the axes of an image of ``shape``: check ``axes`` if given, else infer it.

    Inference: 2D is ``YX``; a last axis of length 3 or 4 is an RGB(A) channel axis; the axis
    before ``YX`` is ``Z`` and the one before that ``T``.
    """
    ndim = len(shape)
    if axes is not None:
        axes = axes.upper()
        unknown = sorted(set(axes) - set(KNOWN_AXES), key=axes.index)
        if unknown:
            letters = ", ".join(repr(letter) for letter in unknown)
            raise ValueError(
                f"axes {axes!r}: {letters} {'is not an axis letter' if len(unknown) == 1 else 'are not axis letters'}; "
                f"use {', '.join(KNOWN_AXES)}"
            )
        if len(set(axes)) != len(axes) or not {"Y", "X"} <= set(axes):
            raise ValueError(f"axes {axes!r} must use each of {', '.join(KNOWN_AXES)} at most once and include Y and X")
        if len(axes) != ndim:
            raise ValueError(f"axes {axes!r} name {len(axes)} axes but the image has {ndim} (shape {tuple(shape)})")
        if axes.index("Y") > axes.index("X"):
            raise ValueError(f"axes {axes!r}: Y must come before X")
        return AxesLayout(axes)
    if ndim < 2:
        raise ValueError(f"need an image with at least 2 dimensions, got shape {tuple(shape)}")
    rgb = ndim >= 3 and shape[-1] in (3, 4)
    spatial = ndim - (1 if rgb else 0)
    if spatial > 4:
        raise ValueError(f"cannot infer the axes of shape {tuple(shape)}; pass axes, e.g. 'TZCYX'")
    inferred = "TZYX"[4 - spatial :] + ("C" if rgb else "")
    return AxesLayout(inferred)


def read_plane(
    image: Any, layout: AxesLayout, index: tuple[int, ...], window: tuple[slice, slice] | None = None
) -> np.ndarray:
    """Read one plane as ``(C, Y, X)`` (C = 1 without a channel axis), touching only that plane
    (only its ``window`` of Y and X slices when given)."""
    region = dict(zip("YX", window or (slice(None), slice(None))))
    selector: list[Any] = []
    position = iter(index)
    for axis in layout.axes:
        selector.append(region.get(axis, slice(None)) if axis in "YXC" else next(position))
    plane = np.asarray(image[tuple(selector)])
    remaining = [a for a in layout.axes if a in "YXC"]
    if "C" not in remaining:
        return plane[np.newaxis]
    return np.moveaxis(plane, remaining.index("C"), 0)


def labels_spec(image_shape: Sequence[int], layout: AxesLayout, mode: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of the labels of an image: its shape minus the channel axis; uint32 ids or uint8 classes."""
    shape = tuple(int(n) for n, a in zip(image_shape, layout.axes) if a != "C")
    return shape, labels_dtype(mode)
