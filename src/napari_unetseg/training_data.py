"""Training data from painted annotations: the annotated planes, their targets, the held-out part.

The annotation convention and the target rules are in :mod:`.targets`. Everything here is plain
numpy, so the loop in :mod:`.training` only samples patches from the :class:`Plane` objects made here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from .checkpoint import INSTANCE_CLASSES, Checkpoint, ModelInfo
from .model import UNet
from .normalize import check_image, normalize_plane
from .targets import IGNORE, check_labels

MAX_CLASSES = 255  # semantic results are uint8 class maps
VAL_BLOCK = 32  # side of the square blocks of painted pixels held out for pixel validation
#: Instance annotations with at least this many painted objects are validated on held-out objects.
MIN_VALIDATION_OBJECTS = 4
MAX_VALIDATION_OBJECTS = 8
VALIDATION_OBJECT_FRACTION = 0.25
#: Painted pixels within this many px of a held-out object's box are held out with it.
HELD_OUT_MARGIN = 8
#: Context around the held-out pixels when their plane is segmented for validation.
VALIDATION_CONTEXT = 48


@dataclass
class Plane:
    """One annotated 2D plane and everything training derives from it."""

    image: np.ndarray  # normalised float32 (Y, X)
    annotation: np.ndarray  # painted values as given
    targets: np.ndarray | None = None  # training targets, IGNORE where unused
    closed: np.ndarray | None = None  # object pixels painted whole (instance mode)
    parent_probabilities: np.ndarray | None = None  # (K, Y, X) float32: the parent's view, for distillation
    unpainted: np.ndarray | None = None  # pixels the parent's view is kept on (not painted, not held out)
    val_targets: np.ndarray | None = None  # held-out targets, IGNORE elsewhere
    val_annotation: np.ndarray | None = None  # held-out painted values, 0 elsewhere
    weights: np.ndarray | None = None
    pixels: np.ndarray | None = None  # flat indices of the training pixels


def as_pairs(image: Any, annotation: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    """Validated ``(image, annotation)`` arrays; lists or tuples of arrays give several pairs."""
    if isinstance(image, (list, tuple)):
        if not isinstance(annotation, (list, tuple)) or len(annotation) != len(image):
            raise ValueError("give as many annotations as images")
        return [pair for img, ann in zip(image, annotation) for pair in as_pairs(img, ann)]
    img, ann = np.asarray(image), np.asarray(annotation)
    check_image(img)
    check_labels(ann)
    if img.ndim == ann.ndim + 1 and img.shape[-1] in (3, 4) and img.shape[:-1] == ann.shape:
        img = np.nanmean(img.astype(np.float32), axis=-1)  # RGB(A) -> grey, as inference does
    if img.shape != ann.shape:
        raise ValueError(f"image shape {img.shape} and annotation shape {ann.shape} differ")
    if not 2 <= img.ndim <= 4:
        raise ValueError(f"need 2D (Y,X), 3D (Z,Y,X) or 4D (T,Z,Y,X) data, got shape {img.shape}")
    return [(img, ann)]


def compact_object_ids(annotation: np.ndarray) -> np.ndarray:
    """An instance annotation with its object ids renumbered 2, 3, ... in order (0 and 1 kept).

    Ids may be any integers (e.g. from another tool, near 2**31): after this nothing downstream
    depends on the largest id, only on the number of objects. The annotation is not modified.
    """
    objects = annotation >= 2
    ids, inverse = np.unique(annotation[objects], return_inverse=True)
    if ids.size == 0 or int(ids[-1]) == ids.size + 1:  # no objects, or already 2..n+1
        return annotation
    out = np.where(objects, 0, annotation).astype(np.min_scalar_type(ids.size + 1))
    out[objects] = inverse + 2
    return out


def annotated_planes(pairs: list[tuple[np.ndarray, np.ndarray]], norm: dict[str, float]) -> list[Plane]:
    """Every 2D plane with painted pixels, normalised like inference does (blank planes -> 0)."""
    planes = []
    for img, ann in pairs:
        shape = ann.shape[-2:]
        for img_plane, ann_plane in zip(img.reshape(-1, *shape), ann.reshape(-1, *shape)):
            if ann_plane.any():
                normed = normalize_plane(img_plane, norm.get("low", 1.0), norm.get("high", 99.8))
                normed = np.zeros(shape, np.float32) if normed is None else normed
                planes.append(Plane(normed, ann_plane))
    if not planes:
        raise ValueError("nothing is annotated: paint some pixels (1 = background, 2+ = objects or classes)")
    return planes


#: Whole painted objects needed before their size is recorded as the model's object size.
MIN_OBJECTS_FOR_SIZE = 3


def painted_diameter(planes: list[Plane]) -> float | None:
    """Median equivalent diameter (pixels) of the objects painted whole, or None below
    :data:`MIN_OBJECTS_FOR_SIZE` of them (strokes and dabs say nothing about an object's size)."""
    areas = []
    for p in planes:
        if p.closed is None or not p.closed.any():
            continue
        sizes = np.bincount(np.where(p.closed, p.annotation, 0).ravel().astype(np.int64))[2:]
        areas.extend(sizes[sizes > 0].tolist())
    if len(areas) < MIN_OBJECTS_FOR_SIZE:
        return None
    return round(float(2.0 * np.sqrt(np.median(areas) / np.pi)), 1)


def painted_values(planes: list[Plane]) -> set[int]:
    """The painted values (0 left out) of all planes."""
    return set(np.unique(np.concatenate([np.unique(p.annotation) for p in planes])).tolist()) - {0}


def check_classes(mode: str, values: set[int], keeps_parent_view: bool) -> None:
    """Refuse annotations that cannot teach ``mode``. Instance mode needs background painted unless
    the parent's predictions stand in for it where nothing is painted (``keeps_parent_view``)."""
    if mode == "semantic" and len(values) < 2:
        raise ValueError(f"semantic mode needs at least 2 classes annotated, found only label(s) {sorted(values)}")
    if mode == "instance" and not any(v >= 2 for v in values):
        raise ValueError("instance mode needs at least one object painted with an id >= 2")
    if mode == "instance" and 1 not in values and not keeps_parent_view:
        raise ValueError("instance mode needs some background painted with label 1")


def class_names(mode: str, max_label: int, given: list[str] | None, parent: ModelInfo | None) -> list[str]:
    """The output classes: instance mode's three, else one per label value up to ``max_label``."""
    if mode == "instance":
        return list(INSTANCE_CLASSES)
    if max_label > MAX_CLASSES:
        raise ValueError(f"semantic labels are classes 1..{MAX_CLASSES}, but label {max_label} is annotated")
    if given:
        if len(given) < max_label:
            raise ValueError(f"{len(given)} class names given but label {max_label} is annotated")
        return list(given)
    names = list(parent.class_names) if parent is not None and parent.mode == "semantic" else []
    return names + [f"class {k}" for k in range(len(names) + 1, max_label + 1)]


def resolve_parent(model: Any) -> tuple[UNet | None, ModelInfo | None]:
    """The network and metadata to start from: ``None``, a UNet, a Checkpoint, a path or a built-in name."""
    if model is None or isinstance(model, UNet):
        return model, None
    if isinstance(model, (str, os.PathLike)):
        from .models import resolve_model  # local import: the registry reads package files

        model = resolve_model(model)
    if isinstance(model, Checkpoint):
        return model.model, model.info
    raise ValueError(f"model must be a Checkpoint, a UNet, a path or a built-in name, got {type(model).__name__}")


# ---------------------------------------------------------------------------- held-out data


def _classes(planes: list[Plane], masks: list[np.ndarray], held: bool) -> set[int]:
    parts = [p.targets[m == held] for p, m in zip(planes, masks)]
    return set(np.unique(np.concatenate(parts)).tolist()) - {IGNORE}


def _hold_out(planes: list[Plane], masks: list[np.ndarray]) -> None:
    """Move the painted pixels under ``masks`` from the training targets to the held-out ones."""
    for p, m in zip(planes, masks):
        p.val_targets = np.where(m, p.targets, IGNORE).astype(np.int32)
        p.val_annotation = np.where(m, p.annotation, 0)
        p.targets = np.where(m, IGNORE, p.targets).astype(np.int32)
        if p.unpainted is not None:
            p.unpainted &= ~m


def split_blocks(
    planes: list[Plane], fraction: float, max_blocks: int, rng: np.random.Generator
) -> list[tuple[int, int, int]]:
    """Hold out painted pixels for pixel validation (in place); return the scored blocks (plane, top, left).

    With 4+ annotated planes whole planes are held out, else random 32 px blocks holding about
    ``fraction`` of the painted pixels (blocks rather than single pixels, so that held-out pixels
    are not just neighbours of training pixels). Nothing is held out with too little annotation
    (< 400 pixels or < 3 blocks) or when training would lose a class.
    """
    counts = [{(y, x): int((p.targets[y : y + VAL_BLOCK, x : x + VAL_BLOCK] >= 0).sum())
               for y in range(0, p.targets.shape[0], VAL_BLOCK) for x in range(0, p.targets.shape[1], VAL_BLOCK)}
              for p in planes]
    blocks = [(k, y, x) for k, c in enumerate(counts) for (y, x), n in c.items() if n]
    total = sum(sum(c.values()) for c in counts)
    if fraction <= 0 or total < 400 or len(blocks) < 3:
        return []
    classes = _classes(planes, [np.zeros(p.targets.shape, bool) for p in planes], held=False)
    for _ in range(10):
        order = [blocks[i] for i in rng.permutation(len(blocks))]
        if len(planes) >= 4:
            held = set(rng.permutation(len(planes))[: max(1, round(fraction * len(planes)))].tolist())
            masks = [np.full(p.targets.shape, k in held) for k, p in enumerate(planes)]
            chosen = [b for b in order if b[0] in held]
        else:
            masks, chosen, held_pixels = [np.zeros(p.targets.shape, bool) for p in planes], [], 0
            for k, y, x in order:
                if held_pixels >= fraction * total or len(chosen) >= max_blocks:
                    break
                if held_pixels + counts[k][y, x] <= 2 * fraction * total:
                    masks[k][y : y + VAL_BLOCK, x : x + VAL_BLOCK] = True
                    held_pixels += counts[k][y, x]
                    chosen.append((k, y, x))
        if chosen and _classes(planes, masks, held=False) == classes:
            _hold_out(planes, masks)
            return chosen[:max_blocks]
    return []


def split_objects(planes: list[Plane], rng: np.random.Generator) -> list[tuple[int, tuple[slice, slice]]]:
    """Hold out whole painted objects (with the painted pixels just around them) for object validation.

    About a quarter of the painted objects (1 to 8) are held out, when at least
    :data:`MIN_VALIDATION_OBJECTS` are painted and training keeps every class. Returns the windows
    (plane index, (rows, columns)) to segment when scoring: the held-out pixels with context.
    """
    objects = [(k, int(v)) for k, p in enumerate(planes) for v in np.unique(p.annotation[p.annotation >= 2])]
    if len(objects) < MIN_VALIDATION_OBJECTS:
        return []
    count = int(np.clip(round(VALIDATION_OBJECT_FRACTION * len(objects)), 1, MAX_VALIDATION_OBJECTS))
    classes = _classes(planes, [np.zeros(p.targets.shape, bool) for p in planes], held=False)
    for _ in range(10):
        chosen = [objects[i] for i in rng.permutation(len(objects))[:count]]
        masks = []
        for k, p in enumerate(planes):
            ids = [v for j, v in chosen if j == k]
            mask = np.zeros(p.annotation.shape, bool)
            for box in ndi.find_objects(np.isin(p.annotation, ids).astype(np.uint8)):
                mask[tuple(slice(max(0, s.start - HELD_OUT_MARGIN), s.stop + HELD_OUT_MARGIN) for s in box)] = True
            mask &= ~((p.annotation >= 2) & ~np.isin(p.annotation, ids))  # other objects stay whole in training
            masks.append(mask & (p.annotation > 0))
        if _classes(planes, masks, held=False) == classes:
            _hold_out(planes, masks)
            windows = []
            for k, mask in enumerate(masks):
                for box in ndi.find_objects(mask.astype(np.uint8)):
                    windows.append((k, tuple(slice(max(0, s.start - VALIDATION_CONTEXT), s.stop + VALIDATION_CONTEXT)
                                             for s in box)))
            return windows
    return []


def describe(pairs: list[tuple[np.ndarray, np.ndarray]], planes: list[Plane], mode: str) -> dict[str, Any]:
    """Plain-data summary of the training data for the checkpoint's provenance."""
    # counted sparsely: the work depends on the painted pixels, not on the largest id
    labels, counts = np.unique(np.concatenate([p.annotation[p.annotation > 0] for p in planes]), return_counts=True)
    per_label = {str(k): int(c) for k, c in zip(labels.tolist(), counts.tolist())}
    shapes = [list(img.shape) for img, _ in pairs]
    summary = f"{len(planes)} annotated plane(s) of {shapes}, {int(counts.sum())} painted pixels ({mode})"
    return {"summary": summary, "shapes": shapes, "planes": len(planes), "pixels_per_label": per_label}
