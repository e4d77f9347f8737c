"""Scores on hand-made label maps whose right answers can be worked out on paper."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import sparse
from skimage.metrics import adapted_rand_error as skimage_adapted_rand_error

from napari_unetseg.metrics import (
    IOU_THRESHOLDS,
    adapted_rand_error,
    connected_components,
    evaluate,
    match_objects,
    object_iou,
    object_matching,
    pixel_error,
    pixel_iou,
    thin_borders,
)


def three_squares() -> np.ndarray:
    """Objects 1, 2 (stacked vertically, touching) and 3, each 8 x 8 pixels."""
    labels = np.zeros((32, 32), np.uint32)
    labels[2:10, 2:10] = 1
    labels[10:18, 2:10] = 2
    labels[22:30, 22:30] = 3
    return labels


def membrane_grid(size: int = 32, step: int = 8) -> np.ndarray:
    """ISBI-style truth: 255 = cell, 0 = one-pixel membrane lines every ``step`` pixels."""
    truth = np.full((size, size), 255, np.uint8)
    truth[::step, :] = 0
    truth[:, ::step] = 0
    return truth


def test_perfect_match_scores_one():
    truth = three_squares()
    scores = evaluate(truth.copy(), truth)
    assert scores["precision"] == scores["recall"] == scores["f1"] == 1.0
    assert scores["mean_f1"] == scores["mean_ap"] == 1.0
    assert scores["adapted_rand_error"] == 0.0
    assert scores["n_truth"] == scores["n_prediction"] == 3


def test_ids_need_not_agree():
    truth = three_squares()
    prediction = np.where(truth > 0, truth * 1000 + 7, 0)
    assert evaluate(prediction, truth)["f1"] == 1.0


def test_merged_pair_gives_known_precision_and_recall():
    truth = three_squares()
    prediction = truth.copy()
    prediction[prediction == 2] = 1  # objects 1 and 2 merged: IoU 0.5 with each, not > 0.5
    scores = object_matching(prediction, truth)
    assert scores["precision"] == pytest.approx(1 / 2)
    assert scores["recall"] == pytest.approx(1 / 3)
    assert scores["f1"] == pytest.approx(2 * 1 / (3 + 2))
    assert scores["ap"] == pytest.approx(1 / (3 + 2 - 1))


def test_unequal_split_matches_the_larger_part_only_at_low_thresholds():
    truth = np.zeros((20, 20), np.uint32)
    truth[0:10, 0:10] = 1
    prediction = truth.copy()
    prediction[0:3, 0:10] = 2  # parts of 70 and 30 pixels: IoU 0.7 and 0.3
    scores = object_matching(prediction, truth)
    assert scores["by_threshold"]["0.50"] == pytest.approx({"precision": 0.5, "recall": 1.0, "f1": 2 / 3, "ap": 0.5})
    assert scores["by_threshold"]["0.70"]["f1"] == 0.0  # IoU must exceed the threshold
    assert scores["mean_f1"] == pytest.approx(np.mean([2 / 3] * 4 + [0.0] * 5))


def test_matching_is_optimal_not_greedy():
    # Greedy by IoU would pair (0, 0) and leave truth 1 unmatched; the optimum pairs all three.
    iou = sparse.csr_array(np.array([[0.45, 0.35, 0.0], [0.3, 0.0, 0.0], [0.0, 0.0, 0.9]]))
    rows, cols = match_objects(iou, 0.2)
    assert sorted(zip(rows.tolist(), cols.tolist())) == [(0, 1), (1, 0), (2, 2)]
    rows, cols = match_objects(iou, 0.5)
    assert list(zip(rows.tolist(), cols.tolist())) == [(2, 2)]


def test_object_iou_is_sparse_and_skips_background():
    truth = three_squares()
    prediction = np.roll(truth, 2, axis=1)
    truth_ids, pred_ids, iou = object_iou(prediction, truth)
    assert truth_ids.tolist() == pred_ids.tolist() == [1, 2, 3]
    assert iou.nnz == 3
    assert iou[0, 0] == pytest.approx(48 / 80)


def test_many_objects_are_matched_quickly():
    # 10,000 objects of 4 x 4 pixels, shifted by one pixel: IoU = 12 / 20 = 0.6 for each.
    truth = np.kron(np.arange(1, 10_001, dtype=np.uint32).reshape(100, 100), np.ones((4, 4), np.uint32))
    prediction = np.roll(truth, 1, axis=1)
    scores = object_matching(prediction, truth)
    assert scores["n_truth"] == 10_000
    assert scores["by_threshold"]["0.55"]["f1"] == pytest.approx(1.0)
    assert scores["by_threshold"]["0.60"]["f1"] == 0.0


def test_3d_objects_by_default_and_per_slice_on_request():
    truth = np.zeros((3, 16, 16), np.uint32)
    truth[:, 4:12, 4:12] = 1  # one object through all three slices
    prediction = truth * np.arange(1, 4, dtype=np.uint32)[:, None, None]  # a new id in every slice
    in_3d = evaluate(prediction, truth)
    assert in_3d["per_slice"] is False
    assert in_3d["f1"] == 0.0  # each slice covers a third of the 3D object
    per_slice = evaluate(prediction, truth, per_slice=True)
    assert per_slice["f1"] == 1.0
    assert per_slice["n_truth"] == 3


def test_empty_maps():
    empty = np.zeros((8, 8), np.uint32)
    assert evaluate(empty, empty)["f1"] == 1.0
    assert evaluate(empty, three_squares()[:8, :8])["recall"] == 0.0


def test_pixel_error_and_iou_on_a_known_map():
    prediction = np.array([[1, 1, 2, 2], [1, 1, 2, 2]])
    truth = np.array([[1, 2, 2, 2], [1, 1, 2, 0]])
    assert pixel_error(prediction, truth) == pytest.approx(2 / 8)
    assert pixel_iou(prediction, truth) == pytest.approx({0: 0.0, 1: 3 / 4, 2: 3 / 5})
    assert pixel_error(prediction, truth, ignore=0) == pytest.approx(1 / 7)


def test_adapted_rand_error_zero_when_identical_and_equal_to_scikit_image():
    truth = three_squares()
    assert adapted_rand_error(truth, truth) == {"adapted_rand_error": 0.0, "rand_precision": 1.0, "rand_recall": 1.0}
    rng = np.random.default_rng(0)
    prediction, noisy_truth = rng.integers(0, 6, (24, 24)), rng.integers(0, 4, (24, 24))
    expected = skimage_adapted_rand_error(noisy_truth, prediction)[0]
    assert adapted_rand_error(prediction, noisy_truth)["adapted_rand_error"] == pytest.approx(expected)


def test_rand_precision_drops_for_merges_and_recall_for_splits():
    truth = three_squares()
    merged = np.where(truth == 2, 1, truth)
    merge_scores = adapted_rand_error(merged, truth)
    assert merge_scores["rand_precision"] < 1.0 and merge_scores["rand_recall"] == 1.0
    split = truth.copy()
    split[2:6, 2:10] = 9
    split_scores = adapted_rand_error(split, truth)
    assert split_scores["rand_recall"] < 1.0 and split_scores["rand_precision"] == 1.0


def test_connected_components_per_slice_are_unique_and_4_connected():
    mask = np.zeros((2, 5, 5), bool)
    mask[:, 0, 0] = mask[:, 1, 1] = True  # diagonal neighbours: separate in 4-connectivity
    labels = connected_components(mask)
    assert sorted(np.unique(labels).tolist()) == [0, 1, 2, 3, 4]
    assert connected_components(mask, per_slice=False).max() == 2


def test_semantic_em_map_with_cell_class():
    truth = membrane_grid()
    prediction = np.where(truth == 255, 2, 1).astype(np.uint8)  # classes 1 = membrane, 2 = cell
    perfect = evaluate(prediction, truth, "semantic", foreground=(2, 255))
    assert perfect["pixel_error"] == 0.0
    assert perfect["adapted_rand_error"] == 0.0
    assert perfect["iou"] == {"0": 1.0, "1": 1.0}

    leaky = prediction.copy()
    leaky[9:16, 16] = 2  # a gap in one membrane merges two cells
    scores = evaluate(leaky, truth, "semantic", foreground=(2, 255))
    assert scores["pixel_error"] == pytest.approx(7 / truth.size)
    assert scores["adapted_rand_error"] > 0.0
    assert scores["rand_precision"] < 1.0 and scores["rand_recall"] == 1.0


def test_thick_predicted_membranes_are_not_counted_as_merges():
    truth = membrane_grid()
    membrane = truth == 0
    thick = membrane | np.roll(membrane, 1, axis=0) | np.roll(membrane, 1, axis=1)  # 2 px wide borders
    prediction = np.where(thick, 1, 2).astype(np.uint8)
    scores = evaluate(prediction, truth, "semantic", foreground=(2, 255))
    assert scores["adapted_rand_error"] == 0.0  # every cell found once, borders thinned
    assert scores["adapted_rand_error_unthinned"] > 0.0  # the membrane pixels inside cells form one segment
    assert scores["pixel_error"] == pytest.approx((thick & ~membrane).mean())


def test_thin_borders_fills_every_plane_with_segments_and_leaves_empty_planes():
    segments = np.zeros((2, 5, 5), np.uint32)
    segments[0, 0, 0], segments[0, 4, 4] = 1, 2
    thinned = thin_borders(segments)
    assert thinned[0, 0, 1] == 1 and thinned[0, 4, 3] == 2 and (thinned[0] > 0).all()
    assert not thinned[1].any()


def test_semantic_stack_is_scored_per_section_by_default():
    truth = np.stack([membrane_grid()] * 2)
    prediction = np.where(truth == 255, 2, 1)
    assert evaluate(prediction, truth, "semantic", foreground=(2, 255))["per_slice"] is True
    assert evaluate(prediction, truth, "semantic", foreground=(2, 255), per_slice=False)["per_slice"] is False


def test_results_are_plain_json():
    truth = three_squares()
    for scores in (evaluate(truth, truth), evaluate(truth, truth, "semantic", foreground=(1, 1), ignore=3)):
        json.dumps(scores, allow_nan=False)


def test_bad_arguments():
    with pytest.raises(ValueError, match="shape"):
        evaluate(np.zeros((4, 4)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="mode"):
        evaluate(np.zeros((4, 4)), np.zeros((4, 4)), mode="panoptic")


def test_thresholds_run_from_half_to_nine_tenths():
    assert IOU_THRESHOLDS == (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9)
