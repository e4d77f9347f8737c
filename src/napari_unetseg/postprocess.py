"""Turn class probabilities into labels: semantic class maps, separated instances, Z-linking."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import watershed

BACKGROUND, INTERIOR, BOUNDARY = 0, 1, 2
#: Objects smaller than this fraction of the plane's median object area are dropped as fragments.
RELATIVE_MIN_SIZE = 0.25
#: Planes with more pixels than this are post-processed strip by strip (bounded memory).
STRIPWISE_PIXELS = 4096 * 4096
STRIP_ROWS = 1024
#: Rows of context above and below a strip; objects up to this tall come out as on the whole plane.
STRIP_MARGIN = 256


def probabilities_to_classes(probabilities: np.ndarray, weights: Sequence[float] | None = None) -> np.ndarray:
    """``(K, H, W)`` probabilities -> class map with values ``1..K`` (label k is class k, as painted).

    ``weights`` (one per class) scale the probabilities before the arg-max: a calibrated decision
    rule (see :class:`~.checkpoint.ModelInfo`'s ``decision_weights``).
    """
    dtype = np.uint8 if probabilities.shape[0] < 255 else np.uint16
    scale = None if weights is None else np.asarray(weights, np.float32).reshape(-1, 1, 1)
    out = np.empty(probabilities.shape[1:], dtype)
    for top in range(0, out.shape[0], STRIP_ROWS):  # strips: argmax's int64 result stays small
        rows = probabilities[:, top : top + STRIP_ROWS]
        out[top : top + STRIP_ROWS] = np.argmax(rows if scale is None else rows * scale, axis=0) + 1
    return out


def probabilities_to_instances(
    probabilities: np.ndarray, threshold: float = 0.5, min_size: int = 8,
    relative_min_size: float = RELATIVE_MIN_SIZE,
) -> np.ndarray:
    """``(3, H, W)`` background / interior / boundary probabilities -> uint32 object ids from 1.

    Objects are grown by seeded watershed from connected interior regions over the foreground
    (interior + boundary), so touching objects separated by a boundary band stay apart.
    Objects smaller than ``min_size`` pixels, or than ``relative_min_size`` times the median
    object area of the plane (fragments: bits of debris, slivers at the edge of a blurred
    nucleus), are dropped. Planes larger than :data:`STRIPWISE_PIXELS` go through
    :func:`instances_in_strips`.
    """
    if probabilities[0].size > STRIPWISE_PIXELS:
        labels = instances_in_strips(probabilities, threshold)
    else:
        labels = _instances(probabilities, threshold)
    return drop_small_objects(labels, min_size, relative_min_size)


def drop_small_objects(labels: np.ndarray, min_size: int, relative_min_size: float = 0.0) -> np.ndarray:
    """Drop objects below ``min_size`` pixels or below ``relative_min_size`` times the median area of
    the objects that reach ``min_size``; renumber the rest 1..N as uint32 (one pass over the pixels).
    """
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return _drop_small(labels, sizes, size_threshold(sizes[1:], min_size, relative_min_size))


def size_threshold(sizes: np.ndarray, min_size: int, relative_min_size: float = 0.0) -> int:
    """The smallest object size kept among objects of ``sizes`` pixels: ``min_size``, or ``relative_min_size``
    times the median size of the objects that reach ``min_size`` when that is more (one rule for every path).
    """
    counted = sizes[sizes >= max(min_size, 1)]
    if relative_min_size > 0 and counted.size:
        return max(min_size, int(relative_min_size * np.median(counted)))
    return min_size


def _instances(probabilities: np.ndarray, threshold: float) -> np.ndarray:
    """Watershed objects of one plane or strip, every size kept."""
    foreground = probabilities[BACKGROUND] < threshold
    interior = (probabilities[INTERIOR] > threshold) & foreground
    seeds, count = ndi.label(interior)
    if count == 0:
        return np.zeros(foreground.shape, np.uint32)
    return watershed(probabilities[BOUNDARY], markers=seeds, mask=foreground)


def instances_in_strips(
    probabilities: np.ndarray, threshold: float = 0.5, rows: int = STRIP_ROWS, margin: int = STRIP_MARGIN
) -> np.ndarray:
    """The watershed of :func:`probabilities_to_instances`, one strip of ``rows`` rows at a time, with
    ``margin`` rows of context (objects of every size: the caller drops small ones).

    Memory is bounded by one strip (the watershed works in float64) rather than the plane. An
    object belongs to the strip holding its first row and gets a new id there; objects that
    began in an earlier strip keep the id they got there, and every strip only fills pixels no
    earlier strip claimed. Objects up to ``margin`` rows tall come out as on the whole plane;
    taller ones are cut at a strip's context edge.
    """
    height, width = probabilities.shape[1:]
    out = np.zeros((height, width), np.uint32)
    next_id = 0
    for top in range(0, height, rows):
        low, high = max(0, top - margin), min(height, top + rows + margin)
        labels = _instances(probabilities[:, low:high], threshold)
        first_rows = np.array([s[0].start + low if s is not None else height for s in ndi.find_objects(labels)])
        region = out[low:high]
        lookup = np.zeros(len(first_rows) + 1, np.uint32)
        owned = (first_rows >= top) & (first_rows < top + rows)
        lookup[1:][owned] = np.arange(next_id + 1, next_id + 1 + int(owned.sum()), dtype=np.uint32)
        next_id += int(owned.sum())
        lookup[1:][first_rows < top] = _earlier_ids(labels, region, first_rows < top)
        ids = lookup[labels]
        free = (ids > 0) & (region == 0)
        region[free] = ids[free]
    return out


def _earlier_ids(labels: np.ndarray, written: np.ndarray, earlier: np.ndarray) -> np.ndarray:
    """For each object flagged in ``earlier`` (indexed by id - 1), the id most of its written pixels have."""
    pick = earlier[np.maximum(labels, 1) - 1] & (labels > 0) & (written > 0)
    pairs, counts = np.unique(np.stack([labels[pick], written[pick]]), axis=1, return_counts=True)
    best = np.zeros(len(earlier) + 1, np.uint32)
    for (label, found), _ in sorted(zip(pairs.T.tolist(), counts.tolist()), key=lambda item: item[1]):
        best[label] = found  # ascending counts: the most frequent id is written last
    return best[1:][earlier]


def _drop_small(labels: np.ndarray, sizes: np.ndarray, min_size: int) -> np.ndarray:
    """Remove objects below ``min_size`` pixels (``sizes``: pixels per id) and renumber the rest 1..N as uint32."""
    keep = sizes >= min_size
    keep[0] = False
    lookup = np.zeros(len(sizes), np.uint32)
    lookup[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.uint32)
    return lookup[labels]


def stitch_slices(labels: np.ndarray, iou_threshold: float = 0.25, axis: int = -3) -> np.ndarray:
    """Link 2D objects across neighbouring slices along ``axis`` so one 3D object keeps one id.

    Works slice after slice (like cellpose's stitching): an object takes the id of the object in
    the previous slice it overlaps best if their IoU exceeds ``iou_threshold``; others keep fresh
    ids. Returns a new uint32 array; the input is not modified. Leading axes (e.g. T) are
    handled independently.
    """
    stack = np.moveaxis(np.asarray(labels), axis, -3)
    out = stack.astype(np.uint32, copy=True)
    lead_shape = out.shape[:-3]
    for lead in np.ndindex(*lead_shape):
        volume = out[lead]
        for z in range(1, volume.shape[0]):
            volume[z] = link_to_previous(volume[z - 1], volume[z], iou_threshold)
    return np.moveaxis(out, -3, axis)


def link_to_previous(previous: np.ndarray, current: np.ndarray, iou_threshold: float = 0.25) -> np.ndarray:
    """Relabel ``current`` so objects overlapping an object of ``previous`` take its id.

    One step of :func:`stitch_slices`, public so results streamed to disk can be linked slice pair
    by slice pair without holding the stack in memory.
    """
    both = (previous > 0) & (current > 0)
    if not both.any():
        return current
    pairs, overlap = np.unique(np.stack([current[both], previous[both]]), axis=1, return_counts=True)
    cur_ids, prev_ids = pairs
    cur_sizes = dict(zip(*np.unique(current[current > 0], return_counts=True)))
    prev_sizes = dict(zip(*np.unique(previous[previous > 0], return_counts=True)))
    iou = overlap / (
        np.array([cur_sizes[c] for c in cur_ids]) + np.array([prev_sizes[p] for p in prev_ids]) - overlap
    )
    mapping: dict[int, int] = {}
    taken: set[int] = set()
    for index in np.argsort(-iou):  # best matches first, each id used once
        cur, prev = int(cur_ids[index]), int(prev_ids[index])
        if iou[index] <= iou_threshold:
            break
        if cur in mapping or prev in taken:
            continue
        mapping[cur] = prev
        taken.add(prev)
    if not mapping:
        return current
    lookup = np.arange(int(current.max()) + 1, dtype=np.uint32)
    for cur, prev in mapping.items():
        lookup[cur] = prev
    return lookup[current]
