"""Training targets from painted annotations: classes, the paper's weight map, and the loss.

Annotation convention: 0 = not annotated (ignored by the loss), 1 = background.
``instance`` mode: each object painted with its own id >= 2; targets are background / interior /
boundary (classes 0 / 1 / 2). ``semantic`` mode: label k >= 1 is class k (target index k - 1).

What a painted object means depends on how it was painted, so the boundary rule does too:

* An object pixel next to a pixel painted with a *different* value (background or another
  object) is ``boundary``, whatever the style.
* A **closed** object, one painted whole (see :func:`closed_objects`), also gets ``boundary`` along
  its edge against unannotated (0) pixels: painting a whole nucleus says where it ends, even
  with nothing painted around it.
* A **stroke**, a thin line or a dab inside an object, says only "inside object k": its edge
  against unannotated pixels stays ``interior``.

Image borders never count as edges.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import ndimage as ndi
from torch.nn import functional as F

from .checkpoint import INSTANCE_CLASSES, MODES
from .metrics import check_label_image

IGNORE = -1  # target value of pixels the loss ignores


def result_as_annotation(labels: np.ndarray, mode: str) -> np.ndarray:
    """A result (or dense truth) in the painting convention, to correct rather than paint from scratch.

    Instance ids become id + 1 (objects >= 2) and background 1; semantic classes stay as they are.
    A new array: the result is left as it was.
    """
    labels = np.asarray(labels)
    if mode == "instance":
        return np.where(labels > 0, labels.astype(np.uint32) + 1, 1).astype(np.uint32)
    return labels.astype(np.uint8, copy=True)


def check_labels(annotation: np.ndarray) -> None:
    """Refuse an annotation that is not non-negative integer labels (0 = not annotated, 1 = background)."""
    check_label_image(annotation, "annotation")


def closed_objects(
    annotation: np.ndarray, reference: np.ndarray | None = None, min_radius: float = 4.0, min_cover: float = 0.4
) -> np.ndarray:
    """Mask of the object pixels (id >= 2) of a 2D plane whose object was painted whole, not as a stroke.

    An object counts as painted whole when it is thick (a pixel at least ``min_radius`` px from its
    edge: thin lines are strokes) and, if ``reference`` (the labels a model predicts for this plane)
    has an object under it, it covers at least ``min_cover`` of the largest such object, so a dab
    inside a nucleus the model already finds is a stroke, while a whole nucleus is closed even where
    the model split or merged it. Without a reference, thickness alone decides.
    """
    ann = np.asarray(annotation)
    closed = np.zeros(ann.shape, bool)
    ids, compact = np.unique(np.where(ann >= 2, ann, 0), return_inverse=True)
    compact = compact.reshape(ann.shape) + (0 if ids[0] == 0 else 1)
    ref_sizes = np.bincount(np.asarray(reference).ravel()) if reference is not None else None
    for index, box in enumerate(ndi.find_objects(compact), start=1):
        if box is None:
            continue
        mask = compact[box] == index
        if ndi.distance_transform_edt(np.pad(mask, 1)).max() < min_radius:
            continue
        if reference is not None:
            under = np.asarray(reference)[box][mask]
            under = under[under > 0]
            if under.size:
                largest = np.bincount(under).argmax()
                if mask.sum() < min_cover * ref_sizes[largest]:
                    continue
        closed[box] |= mask
    return closed


def painting_advice(annotations: list[np.ndarray], mode: str, fine_tuning: bool) -> list[str]:
    """What a person should know about their painting before training on it, in plain sentences.

    ``annotations``: the painted planes; ``fine_tuning``: training starts from a model of the same
    mode, whose own predictions then stand for what is not painted.
    """
    if mode != "instance":
        return []
    planes = [np.asarray(a).reshape(-1, *np.shape(a)[-2:]) for a in annotations]
    planes = [plane for stack in planes for plane in stack if plane.any()]
    advice = []
    objects = sum(len(np.unique(plane[plane >= 2])) for plane in planes)
    thin = sum(len(np.unique(plane[(plane >= 2) & ~closed_objects(plane)])) for plane in planes)
    if planes and not any((plane == 1).any() for plane in planes) and fine_tuning:
        advice.append("No background (label 1) is painted: where nothing is painted the model keeps what it "
                      "predicted before, so paint background strokes over any false objects you want gone.")
    if thin:
        advice.append(f"{thin} of {objects} objects are thin strokes: they teach the inside of objects only. "
                      "Paint whole objects to teach where objects end.")
    if 0 < objects < 4:
        advice.append(f"Only {objects} object(s) painted: with 4 or more, some are held out to check that "
                      "fine-tuning really improves the model.")
    return advice


def derive_targets(annotation: np.ndarray, mode: str, closed: np.ndarray | None = None) -> np.ndarray:
    """Per-pixel class indices (int32, ``IGNORE`` = -1 where not annotated) from an annotation.

    ``semantic``: label k -> class k - 1. ``instance``: 1 -> background (0), object pixels ->
    interior (1), or boundary (2) where an 8-neighbour in the same plane is annotated with another
    value, or, for pixels in ``closed`` (objects painted whole, see :func:`closed_objects`), is not
    annotated at all (the module docstring says why).
    """
    annotation = np.asarray(annotation)
    check_labels(annotation)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    ann = annotation.astype(np.int64)
    if mode == "semantic":
        return (ann - 1).astype(np.int32)
    footprint = np.ones((1,) * (ann.ndim - 2) + (3, 3), bool)
    unannotated_high = int(ann.max()) + 1  # stands in for 0 in the minimum filter
    higher = ndi.maximum_filter(ann, footprint=footprint, mode="nearest") > ann  # 0 is never higher
    lower = ndi.minimum_filter(np.where(ann == 0, unannotated_high, ann), footprint=footprint, mode="nearest") < ann
    targets = np.full(ann.shape, IGNORE, np.int32)
    targets[ann == 1] = 0
    objects = ann >= 2
    targets[objects] = 1
    edge = higher | lower
    if closed is not None:
        edge |= closed & (ndi.minimum_filter(ann, footprint=footprint, mode="nearest") == 0)
    targets[objects & edge] = 2
    return targets


def class_weights(targets: np.ndarray, num_classes: int, cap: float = 10.0) -> np.ndarray:
    """Inverse class frequencies over annotated pixels (mean weight 1), capped at ``cap``."""
    counts = np.bincount(targets[targets >= 0].ravel(), minlength=num_classes)[:num_classes].astype(np.float64)
    weights = np.ones(num_classes, np.float32)
    present = counts > 0
    if present.any():
        weights[present] = counts[present].sum() / (present.sum() * counts[present])
    return np.minimum(weights, cap).astype(np.float32)


def weight_map(
    instance_labels: np.ndarray,
    w0: float = 10.0,
    sigma: float = 5.0,
    weights: np.ndarray | None = None,
    targets: np.ndarray | None = None,
) -> np.ndarray:
    """The paper's loss weights for an instance annotation (0 unannotated, 1 background, >= 2 objects).

    ``w = w_c + w0 * exp(-(d1 + d2)^2 / (2 sigma^2))``, the second term on background pixels
    only, with ``d1``/``d2`` the distances to the nearest and second-nearest object, so narrow
    background gaps between touching objects weigh a lot. ``w_c`` balances the class frequencies
    (``weights``: per-class values; computed from this annotation if ``None``). Unannotated
    pixels get 0. Distances are measured within each 2D plane (last two axes). ``targets``: the
    annotation's targets if already derived (e.g. with closed objects), else derived here.
    """
    ann = np.asarray(instance_labels)
    targets = derive_targets(ann, "instance") if targets is None else targets
    wc = class_weights(targets, len(INSTANCE_CLASSES)) if weights is None else np.asarray(weights, np.float32)
    out = np.where(targets >= 0, wc[np.maximum(targets, 0)], 0).astype(np.float32)
    for plane, plane_out in zip(ann.reshape(-1, *ann.shape[-2:]), out.reshape(-1, *ann.shape[-2:])):
        _add_border_term(plane_out, plane, plane == 1, w0, sigma)
    return out


def separation_weights(
    annotation: np.ndarray, objects: int, w0: float = 10.0, sigma: float = 5.0, weights: np.ndarray | None = None
) -> np.ndarray:
    """The paper's weight map for a semantic annotation whose class ``objects`` is made of touching regions.

    Each connected region of label ``objects`` (e.g. the cells of an EM membrane map, label 2)
    counts as one object, every other annotated pixel as a separator (e.g. the membranes):
    ``w = w_c + w0 * exp(-(d1 + d2)^2 / (2 sigma^2))`` on separator pixels, so thin membranes
    between two cells weigh most. ``weights``: per-class ``w_c`` for labels 1..K (index k - 1);
    unannotated pixels (0) get 0. Regions are found within each 2D plane.
    """
    ann = np.asarray(annotation)
    targets = derive_targets(ann, "semantic")
    out = np.where(targets >= 0, 1.0 if weights is None else np.asarray(weights)[np.maximum(targets, 0)], 0.0)
    out = out.astype(np.float32)
    for plane, plane_out in zip(ann.reshape(-1, *ann.shape[-2:]), out.reshape(-1, *ann.shape[-2:])):
        regions, _ = ndi.label(plane == objects)
        separators = (plane > 0) & (plane != objects)
        as_instances = np.where(regions > 0, regions + 1, separators.astype(np.int64))
        _add_border_term(plane_out, as_instances, separators, w0, sigma)
    return out


def _add_border_term(weights: np.ndarray, instances: np.ndarray, where: np.ndarray, w0: float, sigma: float) -> None:
    """Add ``w0 * exp(-(d1 + d2)^2 / (2 sigma^2))`` to ``weights`` at ``where`` (in place).

    ``d1``/``d2``: distances to the nearest and second-nearest object (id >= 2) of the 2D plane
    ``instances``.
    """
    d1, d2 = _two_nearest_objects(instances, radius=math.ceil(4 * sigma))
    weights[where] += (w0 * np.exp(-((d1 + d2)[where] ** 2) / (2 * sigma**2))).astype(np.float32)


def _two_nearest_objects(plane: np.ndarray, radius: int) -> tuple[np.ndarray, np.ndarray]:
    """Distances to the nearest and second-nearest object (id >= 2); inf beyond ``radius``.

    Each object's distance transform is computed only in its bounding box grown by ``radius``:
    farther away the weight term is negligible (below ``w0 * exp(-8)`` for radius = 4 sigma).
    """
    d1 = np.full(plane.shape, np.inf, np.float32)
    d2 = d1.copy()
    ids, compact = np.unique(np.where(plane >= 2, plane, 0), return_inverse=True)
    compact = compact.reshape(plane.shape) + (0 if ids[0] == 0 else 1)
    for index, box in enumerate(ndi.find_objects(compact), start=1):
        if box is None:
            continue
        grown = tuple(slice(max(0, s.start - radius), s.stop + radius) for s in box)
        dist = ndi.distance_transform_edt(compact[grown] != index).astype(np.float32)
        near, second = d1[grown], d2[grown]
        second[...] = np.minimum(second, np.maximum(near, dist))
        near[...] = np.minimum(near, dist)
    return d1, d2


def weighted_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Sum of weight x cross-entropy over annotated pixels (targets >= 0) / their count.

    Ignored pixels (``IGNORE``) contribute neither loss nor gradient, whatever their weight.
    """
    annotated = targets >= 0
    ce = F.cross_entropy(logits.float(), targets.long(), ignore_index=IGNORE, reduction="none")
    return (ce * torch.where(annotated, weights.float(), 0.0)).sum() / annotated.sum().clamp(min=1)


def soft_cross_entropy(logits: torch.Tensor, probabilities: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy against soft targets ``probabilities`` (N, K, H, W) over the pixels in ``where``.

    Fine-tuning uses it with the parent's own predictions on unpainted pixels, so what the model
    knew there is kept; the mean makes its weight independent of how much was painted.
    """
    ce = -(probabilities * F.log_softmax(logits.float(), dim=1)).sum(dim=1)
    return (ce * where).sum() / where.sum().clamp(min=1)
