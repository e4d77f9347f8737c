"""Segmentation quality: pixel scores for class maps, object matching for instance labels.

Everything takes plain label arrays (prediction and truth of the same shape) and returns
JSON-able numbers, so the command line, benchmarks and tests share one definition.

* Semantic class maps: pixel error and per-class IoU; for EM membrane maps (ISBI 2012) the
  maps are reduced to cell / not-cell first and the adapted Rand error is computed on the
  connected components of the cell class, after border thinning: every predicted membrane
  pixel joins its nearest cell, so that the score counts merges and splits of cells rather
  than how wide the predicted membranes are (the ISBI 2012 organisers' revised scoring,
  Arganda-Carreras et al. 2015). The score without thinning is reported too.
* Instance labels: objects are paired one-to-one by IoU (optimal matching), giving precision,
  recall and F1 at IoU 0.5 and their mean over IoU thresholds 0.5 to 0.9.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import sparse
from scipy.optimize import linear_sum_assignment
from scipy.sparse.csgraph import connected_components as _graph_components
from skimage.measure import label as _label_components
from skimage.segmentation import expand_labels

from .options import MODES

#: IoU thresholds 0.50, 0.55, ..., 0.90 for the averaged object scores.
IOU_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(9))


def check_label_image(labels: np.ndarray, what: str = "labels") -> None:
    """Refuse what is not a label image: a non-integer dtype (e.g. a probability map) or negative values.

    ``what`` names the array (or its file) in the message. Booleans count as labels 0 and 1.
    """
    dtype = np.dtype(labels.dtype)
    if dtype.kind not in "biu":
        raise ValueError(f"{what} must hold integer labels, got dtype {dtype} (a probability map? threshold it first)")
    if dtype.kind == "i" and labels.size:
        lowest = int(np.min(labels))
        if lowest < 0:
            raise ValueError(f"{what} holds negative labels (down to {lowest}); labels are 0 or positive integers")


def _pair(prediction: ArrayLike, truth: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Both maps as numpy arrays, refusing different shapes (a silent broadcast would lie)."""
    prediction, truth = np.asarray(prediction), np.asarray(truth)
    if prediction.shape != truth.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from truth shape {truth.shape}")
    return prediction, truth


def _planes(array: np.ndarray) -> Iterator[np.ndarray]:
    """The 2D (Y, X) planes of an array with any number of leading axes."""
    yield from array.reshape(-1, *array.shape[-2:])


# --------------------------------------------------------------------------- class maps


def _class_counts(
    prediction: ArrayLike, truth: ArrayLike, ignore: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Class values present and, per class, pixels right, pixels in truth and pixels predicted.

    Pixels whose truth value is ``ignore`` are left out.
    """
    prediction, truth = _pair(prediction, truth)
    if ignore is not None:
        annotated = truth != ignore
        prediction, truth = prediction[annotated], truth[annotated]
    classes, index = _dense_ids(np.concatenate([truth.ravel(), prediction.ravel()]))
    truth_idx, pred_idx = index[: truth.size], index[truth.size :]
    hits = np.bincount(truth_idx[truth_idx == pred_idx], minlength=len(classes))
    return classes, hits, np.bincount(truth_idx, minlength=len(classes)), np.bincount(pred_idx, minlength=len(classes))


def pixel_error(prediction: ArrayLike, truth: ArrayLike, ignore: int | None = None) -> float:
    """Fraction of pixels whose class differs between ``prediction`` and ``truth`` (0 is perfect).

    Pixels whose truth value is ``ignore`` (e.g. 0 for "not annotated") are left out.
    """
    _, hits, in_truth, _ = _class_counts(prediction, truth, ignore)
    return _error_from(hits, in_truth)


def pixel_iou(prediction: ArrayLike, truth: ArrayLike, ignore: int | None = None) -> dict[int, float]:
    """Intersection over union of the pixels of each class value present in either map."""
    return _iou_from(*_class_counts(prediction, truth, ignore))


def mean_iou(prediction: ArrayLike, truth: ArrayLike, ignore: int | None = None) -> float:
    """Mean of :func:`pixel_iou` over the classes present in ``truth`` (0.0 when none is).

    Training's pixel validation scores held-out painted pixels with it (``ignore`` = not
    annotated). :func:`evaluate`'s ``mean_iou`` averages :func:`pixel_iou` over the classes of
    either map instead, so a class found only in the prediction counts there as an error.
    """
    classes, hits, in_truth, predicted = _class_counts(prediction, truth, ignore)
    present = in_truth > 0
    union = (in_truth + predicted - hits)[present]
    return float(np.mean(hits[present] / union)) if present.any() else 0.0


def _error_from(hits: np.ndarray, in_truth: np.ndarray) -> float:
    total = in_truth.sum()
    return float(1.0 - hits.sum() / total) if total else 0.0


def _iou_from(classes: np.ndarray, hits: np.ndarray, in_truth: np.ndarray, predicted: np.ndarray) -> dict[int, float]:
    union = in_truth + predicted - hits
    return {int(c): float(h / u) for c, h, u in zip(classes, hits, union)}


def connected_components(mask: ArrayLike, per_slice: bool = True) -> np.ndarray:
    """Label the connected regions of a boolean mask (4-connected in the plane, as for ISBI 2012).

    With ``per_slice`` every 2D plane is labelled on its own (serial-section EM, where cells are
    judged per section); otherwise regions connect across all axes (face neighbours only).
    Ids are unique in the whole result.
    """
    mask = np.asarray(mask, dtype=bool)
    if not per_slice or mask.ndim == 2:
        return _label_components(mask, connectivity=1).astype(np.uint32)
    out = np.zeros(mask.shape, dtype=np.uint32)
    offset = 0
    for plane_out, plane in zip(_planes(out), _planes(mask)):
        labels, count = _label_components(plane, connectivity=1, return_num=True)
        plane_out[...] = np.where(labels > 0, labels + offset, 0)
        offset += count
    return out


def thin_borders(segments: ArrayLike, per_slice: bool = True) -> np.ndarray:
    """Give every unlabelled (0) pixel the id of the nearest segment, per 2D plane by default.

    Turns a cell map whose cells are separated by predicted membranes into a partition with
    zero-width borders; planes without any segment stay 0.
    """
    segments = np.asarray(segments)
    reach = max(segments.shape)
    if not per_slice or segments.ndim == 2:
        return expand_labels(segments, reach)
    out = np.empty_like(segments)
    for plane_out, plane in zip(_planes(out), _planes(segments)):
        plane_out[...] = expand_labels(plane, reach)
    return out


def adapted_rand_error(prediction: ArrayLike, truth: ArrayLike, per_slice: bool = False) -> dict[str, float]:
    """Adapted Rand error (1 - F-score of Rand precision and recall) of a segmentation, 0 is perfect.

    Pixels where ``truth`` is 0 are ignored, as in ISBI 2012 and CREMI. Rand precision falls
    when the prediction merges truth segments, Rand recall when it splits them. With
    ``per_slice`` the scores are the means over the 2D planes that contain truth segments.
    """
    prediction, truth = _pair(prediction, truth)
    pairs = list(zip(_planes(prediction), _planes(truth))) if per_slice else [(prediction, truth)]
    scores = [_rand_scores(p, t) for p, t in pairs if t.any()]
    if not scores:  # nothing to find: perfect only if nothing was found either
        perfect = not np.any(prediction)
        return {"adapted_rand_error": 0.0 if perfect else 1.0, "rand_precision": float(perfect), "rand_recall": 1.0}
    error, precision, recall = np.mean(scores, axis=0)
    return {"adapted_rand_error": float(error), "rand_precision": float(precision), "rand_recall": float(recall)}


def _rand_scores(prediction: np.ndarray, truth: np.ndarray) -> tuple[float, float, float]:
    """Adapted Rand error, precision and recall over the pixels where ``truth`` is not 0.

    The error equals :func:`skimage.metrics.adapted_rand_error` (tested), but is computed here
    so that degenerate planes (only 1-pixel segments) give numbers instead of NaN, and because
    scikit-image returns precision and recall swapped (scikit-image issue #6485).
    """
    annotated = truth.ravel() != 0
    truth_idx = _dense_ids(truth.ravel()[annotated])[1]
    pred_idx = _dense_ids(prediction.ravel()[annotated])[1]
    table = sparse.csr_array((np.ones(truth_idx.size), (truth_idx, pred_idx)))  # duplicates are summed
    n = truth_idx.size
    # Ordered pixel pairs in one segment of both / of the truth / of the prediction.
    pairs_in_both = table.data @ table.data - n
    truth_sizes, pred_sizes = table.sum(axis=1), table.sum(axis=0)
    pairs_in_truth = truth_sizes @ truth_sizes - n
    pairs_in_pred = pred_sizes @ pred_sizes - n
    precision = pairs_in_both / pairs_in_pred if pairs_in_pred else 1.0
    recall = pairs_in_both / pairs_in_truth if pairs_in_truth else 1.0
    total = pairs_in_truth + pairs_in_pred
    error = 1.0 - 2.0 * pairs_in_both / total if total else 0.0
    return float(error), float(precision), float(recall)


# --------------------------------------------------------------------------- object matching


def _dense_ids(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The sorted distinct values of ``labels`` and each pixel's index into them (flat).

    Small non-negative integer ids (the usual case) take a linear-time lookup table instead
    of the sort that :func:`numpy.unique` needs.
    """
    flat = labels.ravel()
    if np.issubdtype(flat.dtype, np.integer) and flat.size and flat.min() >= 0 and flat.max() < 4 * flat.size:
        present = np.bincount(flat) > 0
        ids = np.flatnonzero(present)
        lookup = np.cumsum(present) - 1
        return ids.astype(flat.dtype), lookup[flat]
    return np.unique(flat, return_inverse=True)


def object_iou(prediction: ArrayLike, truth: ArrayLike) -> tuple[np.ndarray, np.ndarray, sparse.csr_array]:
    """IoU of every overlapping (truth object, predicted object) pair, as a sparse matrix.

    Returns the truth ids (rows), the prediction ids (columns) and the matrix; label 0 is
    background in both. The overlaps come from a sparse contingency table, so thousands of
    objects stay cheap.
    """
    prediction, truth = _pair(prediction, truth)
    truth_ids, truth_idx = _dense_ids(truth)
    pred_ids, pred_idx = _dense_ids(prediction)
    table = sparse.coo_array(
        (np.ones(truth_idx.size, dtype=np.int64), (truth_idx, pred_idx)), shape=(len(truth_ids), len(pred_ids))
    ).tocsr()  # duplicates are summed: table[i, j] = pixels in truth i and prediction j
    truth_area, pred_area = table.sum(axis=1), table.sum(axis=0)
    # Drop background (id 0, the smallest id when present) from both sides.
    truth_bg, pred_bg = int(truth_ids.size > 0 and truth_ids[0] == 0), int(pred_ids.size > 0 and pred_ids[0] == 0)
    overlaps = sparse.coo_array(table[truth_bg:, pred_bg:])
    rows, cols, overlap = overlaps.row, overlaps.col, overlaps.data
    union = truth_area[rows + truth_bg] + pred_area[cols + pred_bg] - overlap
    iou = sparse.csr_array((overlap / union, (rows, cols)), shape=overlaps.shape)
    return truth_ids[truth_bg:], pred_ids[pred_bg:], iou


def match_objects(iou: sparse.csr_array, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Optimal one-to-one pairs (truth rows, prediction columns) among pairs with IoU > ``threshold``.

    The matching maximises the number of pairs first and their total IoU second. It is solved
    separately on each connected group of candidate pairs; above 0.5 every group is a single
    pair (two disjoint objects cannot both cover more than half of a third), so this is fast.
    """
    candidates = sparse.coo_array(iou)
    keep = candidates.data > threshold
    rows, cols, values = candidates.row[keep], candidates.col[keep], candidates.data[keep]
    n_rows, n_cols = iou.shape
    if rows.size == 0:
        return rows, cols
    graph = sparse.coo_array((np.ones(rows.size), (rows, n_rows + cols)), shape=(n_rows + n_cols,) * 2)
    _, group_of_node = _graph_components(graph, directed=False)
    group = group_of_node[rows]
    edges_per_group = np.bincount(group)
    single = edges_per_group[group] == 1
    matched_rows, matched_cols = [rows[single]], [cols[single]]
    for g in np.flatnonzero(edges_per_group > 1):
        in_group = group == g
        r_ids, r_local = np.unique(rows[in_group], return_inverse=True)
        c_ids, c_local = np.unique(cols[in_group], return_inverse=True)
        # Weight 1 + small IoU bonus: any matching with more pairs outweighs one with fewer.
        bonus = 1.0 / (min(len(r_ids), len(c_ids)) + 1)
        weights = np.zeros((len(r_ids), len(c_ids)))
        weights[r_local, c_local] = 1.0 + bonus * values[in_group]
        r_best, c_best = linear_sum_assignment(weights, maximize=True)
        real = weights[r_best, c_best] > 0
        matched_rows.append(r_ids[r_best[real]])
        matched_cols.append(c_ids[c_best[real]])
    return np.concatenate(matched_rows), np.concatenate(matched_cols)


def _object_scores(matched: int, n_truth: int, n_pred: int) -> dict[str, float]:
    """Precision, recall, F1 and the DSB-2018 style AP ``TP / (TP + FP + FN)`` from counts."""
    if n_truth == 0 and n_pred == 0:  # nothing to find and nothing found
        return {"precision": 1.0, "recall": 1.0, "f1": 1.0, "ap": 1.0}
    return {
        "precision": matched / n_pred if n_pred else 0.0,
        "recall": matched / n_truth if n_truth else 0.0,
        "f1": 2 * matched / (n_truth + n_pred),
        "ap": matched / (n_truth + n_pred - matched),
    }


def object_matching(
    prediction: ArrayLike,
    truth: ArrayLike,
    per_slice: bool = False,
    thresholds: Sequence[float] = IOU_THRESHOLDS,
) -> dict[str, Any]:
    """Object-level scores of instance labels: precision/recall/F1 at the first threshold, means over all.

    A predicted object is a true positive if it is paired (one-to-one, optimally) with a truth
    object whose IoU exceeds the threshold. With ``per_slice`` each 2D plane is matched on its
    own and the counts are pooled, so an object spanning five planes counts five times.
    """
    prediction, truth = _pair(prediction, truth)
    pairs = zip(_planes(prediction), _planes(truth)) if per_slice else [(prediction, truth)]
    matched = np.zeros(len(thresholds), dtype=np.int64)
    n_truth = n_pred = 0
    for pred_part, truth_part in pairs:
        truth_ids, pred_ids, iou = object_iou(pred_part, truth_part)
        n_truth += len(truth_ids)
        n_pred += len(pred_ids)
        matched += [len(match_objects(iou, t)[0]) for t in thresholds]
    by_threshold = {f"{t:.2f}": _object_scores(int(m), n_truth, n_pred) for t, m in zip(thresholds, matched)}
    first = by_threshold[f"{thresholds[0]:.2f}"]
    return {
        "iou_threshold": float(thresholds[0]),
        **first,
        "mean_f1": float(np.mean([s["f1"] for s in by_threshold.values()])),
        "mean_ap": float(np.mean([s["ap"] for s in by_threshold.values()])),
        "n_truth": n_truth,
        "n_prediction": n_pred,
        "by_threshold": by_threshold,
    }


# --------------------------------------------------------------------------- painted objects


def painted_object_score(labels: ArrayLike, annotation: ArrayLike, closed: ArrayLike) -> float:
    """How well predicted instance ``labels`` reproduce painted objects of one plane, 0 to 1.

    ``annotation``: painted values (0 = not scored, 1 = background, 2+ = objects); ``closed``: the
    pixels of objects painted whole. Each painted object is paired with the predicted object that
    covers most of it; its quality is that object's IoU with the painting when painted whole, or
    the share of the stroke it covers when painted as a stroke (0 when the predicted object also
    takes most of another painted object: a merge). An object scores half for being found (quality
    >= 0.5) and half its quality. Background pixels count as one more item, scored by the share
    predicted as background. Returns the mean over items (1.0 when nothing is scored).
    """
    labels, annotation = _pair(labels, annotation)
    closed = np.asarray(closed, bool).ravel()
    painted_ids, painted = _dense_ids(np.where(annotation >= 2, annotation, 0))
    predicted_ids, predicted = _dense_ids(labels)
    overlap = sparse.coo_array(
        (np.ones(painted.size), (painted, predicted)), shape=(len(painted_ids), len(predicted_ids))
    ).toarray()
    overlap[:, predicted_ids == 0] = 0  # background is no object
    predicted_sizes = np.bincount(predicted, minlength=len(predicted_ids))
    objects = np.flatnonzero(painted_ids >= 2)
    owners = overlap[objects].argmax(axis=1)
    items = []
    for k, owner in zip(objects, owners):
        hit, size = overlap[k, owner], int((painted == k).sum())
        if hit == 0:
            quality = 0.0
        elif closed[painted == k].mean() >= 0.5:
            quality = hit / (size + predicted_sizes[owner] - hit)
        else:
            quality = 0.0 if (owners == owner).sum() > 1 else hit / size
        items.append(0.5 * (quality >= 0.5) + 0.5 * quality)
    background = annotation == 1
    if background.any():
        items.append(float((labels[background] == 0).mean()))
    return float(np.mean(items)) if items else 1.0


def object_changes(labels: ArrayLike, reference: ArrayLike) -> tuple[int, int]:
    """Objects of ``labels`` that ``reference`` lacks and objects of ``reference`` that ``labels`` lacks
    (no partner at IoU 0.5), e.g. what fine-tuning added and removed on the slice in view."""
    reference_ids, label_ids, iou = object_iou(labels, reference)
    found, partners = match_objects(iou, 0.5)
    return len(label_ids) - len(partners), len(reference_ids) - len(found)


# --------------------------------------------------------------------------- agreement of two runs

#: Labels count as the same result when this share of pixels agrees (foreground for instances) ...
MIN_PIXEL_AGREEMENT = 0.995
#: ... and, for instances, objects match with this F1 at IoU 0.5.
MIN_OBJECT_F1 = 0.99


def agreement(labels: ArrayLike, reference: ArrayLike, mode: str) -> dict[str, Any]:
    """How closely ``labels`` reproduce ``reference`` (e.g. a faster path against float32).

    ``pixel_agreement``: share of pixels with the same class (instances: the same
    foreground/background call); ``instance_f1``: object F1 at IoU 0.5 per plane (None for
    class maps); ``same``: both above :data:`MIN_PIXEL_AGREEMENT` / :data:`MIN_OBJECT_F1`.
    """
    labels, reference = _pair(labels, reference)
    if mode == "instance":
        pixel = float(((labels > 0) == (reference > 0)).mean())
        f1 = object_matching(labels, reference, per_slice=labels.ndim > 2, thresholds=(0.5,))["f1"]
    else:
        pixel, f1 = float((labels == reference).mean()), None
    same = pixel >= MIN_PIXEL_AGREEMENT and (f1 is None or f1 >= MIN_OBJECT_F1)
    return {"pixel_agreement": pixel, "instance_f1": f1, "same": same}


# --------------------------------------------------------------------------- one entry point


def evaluate(
    prediction: ArrayLike,
    truth: ArrayLike,
    mode: str = "instance",
    *,
    per_slice: bool | None = None,
    foreground: tuple[int, int] | None = None,
    ignore: int | None = None,
) -> dict[str, Any]:
    """All scores for one prediction against its ground truth, as a JSON-able dict.

    ``mode="instance"``: object matching (``precision``, ``recall``, ``f1`` at IoU 0.5,
    ``mean_f1`` and ``mean_ap`` over IoU 0.5-0.9) plus the adapted Rand error. 3D stacks are
    matched as 3D objects unless ``per_slice`` is true.

    ``mode="semantic"``: ``pixel_error``, per-class ``iou`` and ``mean_iou``. ``foreground``
    = (value in prediction, value in truth) of the "cell" class, e.g. ``(2, 255)`` for ISBI 2012,
    reduces both maps to cell / not-cell first and adds the adapted Rand error of the cells'
    connected components, found per 2D section unless ``per_slice`` is false; ``iou`` then has
    the keys ``"0"`` (not cell, e.g. membrane) and ``"1"`` (cell). The Rand scores are taken
    after border thinning (see the module docstring); ``adapted_rand_error_unthinned`` counts
    predicted membrane pixels as one segment, as scikit-image does. ``ignore`` is a truth value
    (e.g. 0 for "not annotated") whose pixels are left out of the pixel scores. Both maps must be
    non-negative integer labels (:func:`check_label_image`).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    prediction, truth = _pair(prediction, truth)
    check_label_image(prediction, "prediction")
    check_label_image(truth, "truth")
    if mode == "instance":
        slices = bool(per_slice) and truth.ndim > 2
        return {
            "mode": mode,
            "per_slice": slices,
            **object_matching(prediction, truth, per_slice=slices),
            **adapted_rand_error(prediction, truth, per_slice=slices),
        }

    slices = (per_slice is None or per_slice) and truth.ndim > 2
    result: dict[str, Any] = {"mode": mode, "per_slice": slices}
    if foreground is not None:
        pred_cells, truth_cells = prediction == foreground[0], truth == foreground[1]
        pred_segments = connected_components(pred_cells, slices)
        truth_segments = connected_components(truth_cells, slices)
        result.update(adapted_rand_error(thin_borders(pred_segments, slices), truth_segments, per_slice=slices))
        unthinned = adapted_rand_error(pred_segments, truth_segments, per_slice=slices)
        result["adapted_rand_error_unthinned"] = unthinned["adapted_rand_error"]
        binary_truth = truth_cells.astype(np.uint8)
        if ignore is not None:
            binary_truth[truth == ignore] = 2
            ignore = 2
        prediction, truth = pred_cells.astype(np.uint8), binary_truth
    classes, hits, in_truth, predicted = _class_counts(prediction, truth, ignore)
    iou = _iou_from(classes, hits, in_truth, predicted)
    result["pixel_error"] = _error_from(hits, in_truth)
    result["iou"] = {str(c): v for c, v in iou.items()}
    result["mean_iou"] = float(np.mean(list(iou.values()))) if iou else 1.0
    return result
