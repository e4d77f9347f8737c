"""Probabilities to labels: touching objects stay apart, Z-linking keeps one id per object."""

import numpy as np
from conftest import two_touching_discs
from scipy import ndimage as ndi

from napari_unetseg.metrics import adapted_rand_error
from napari_unetseg.postprocess import (
    drop_small_objects,
    instances_in_strips,
    probabilities_to_classes,
    probabilities_to_instances,
    stitch_slices,
)
from napari_unetseg.synthetic import synthetic_nuclei_2d


def _ideal_probabilities(labels: np.ndarray) -> np.ndarray:
    """background / interior / boundary probabilities a perfect network would give for ``labels``."""
    from scipy import ndimage as ndi

    boundary = np.zeros(labels.shape, bool)
    for axis in (0, 1):
        for shift in (1, -1):
            boundary |= (labels != np.roll(labels, shift, axis=axis)) & (labels > 0)
    boundary = ndi.binary_dilation(boundary) & (labels > 0)
    probs = np.zeros((3, *labels.shape), np.float32)
    probs[0] = labels == 0
    probs[1] = (labels > 0) & ~boundary
    probs[2] = boundary
    return probs


def test_two_touching_discs_become_two_objects():
    truth = two_touching_discs()
    labels = probabilities_to_instances(_ideal_probabilities(truth))
    assert labels.dtype == np.uint32
    ids = set(np.unique(labels)) - {0}
    assert len(ids) == 2
    for true_id in (1, 2):
        inside = labels[truth == true_id]
        dominant = np.bincount(inside).argmax()
        assert dominant > 0 and (inside == dominant).mean() > 0.9
    merged = probabilities_to_instances(np.stack([truth == 0, truth > 0, np.zeros_like(truth)]).astype(np.float32))
    assert len(set(np.unique(merged)) - {0}) == 1, "without a boundary class the discs merge"


def test_tiny_objects_are_dropped_and_ids_are_sequential():
    truth = np.zeros((40, 40), np.uint32)
    truth[5:15, 5:15] = 1
    truth[30, 30] = 2
    labels = probabilities_to_instances(_ideal_probabilities(truth) * 0 + np.stack(
        [truth == 0, truth > 0, np.zeros_like(truth)]).astype(np.float32), min_size=4)
    assert sorted(np.unique(labels)) == [0, 1]


def test_strips_give_the_whole_plane_objects():
    _, truth = synthetic_nuclei_2d((320, 160), rng=np.random.default_rng(3))
    probs = ndi.gaussian_filter(_ideal_probabilities(truth), (0, 1, 1))  # smooth, like a network's output
    whole = probabilities_to_instances(probs, relative_min_size=0)
    strips = drop_small_objects(instances_in_strips(probs, rows=48, margin=40), 8)  # many strip edges cut objects
    assert whole.max() > 20
    assert np.array_equal(strips > 0, whole > 0)
    assert adapted_rand_error(strips, whole)["adapted_rand_error"] == 0.0  # same objects, other ids
    assert sorted(np.unique(strips))[1:] == list(range(1, whole.max() + 1))


def test_fragments_far_below_the_typical_object_size_are_dropped():
    truth = np.zeros((60, 80), np.uint32)
    for k, x in enumerate((2, 22, 42)):
        truth[2:14, x : x + 12] = k + 1  # three 144 px nuclei
    truth[30:37, 2:7] = 4  # 35 px: 24 % of the median, a fragment
    truth[30:37, 40:46] = 5  # 42 px: 29 %, kept
    ideal = np.stack([truth == 0, truth > 0, np.zeros_like(truth)]).astype(np.float32)
    labels = probabilities_to_instances(ideal)
    assert labels.max() == 4 and not labels[30:37, 2:7].any() and labels[33, 43] > 0
    assert probabilities_to_instances(ideal, relative_min_size=0).max() == 5


def test_class_map_uses_painted_label_values():
    probs = np.zeros((2, 4, 4), np.float32)
    probs[0, :2] = 1
    probs[1, 2:] = 1
    classes = probabilities_to_classes(probs)
    assert classes.dtype == np.uint8
    assert (classes[:2] == 1).all() and (classes[2:] == 2).all()


def test_decision_weights_move_the_class_boundary():
    membrane = np.linspace(0.05, 0.95, 10, dtype=np.float32)[None, :]  # membrane probability 0.05 ... 0.95
    probs = np.stack([membrane, 1 - membrane])
    plain = probabilities_to_classes(probs)
    calibrated = probabilities_to_classes(probs, [0.35, 0.65])  # membrane only above 0.65
    assert plain[0].tolist() == [2] * 5 + [1] * 5
    assert calibrated[0].tolist() == [2] * 7 + [1] * 3


def test_stitching_links_an_object_through_z_and_keeps_others_apart():
    stack = np.zeros((3, 20, 20), np.uint32)
    stack[0, 2:10, 2:10] = 1
    stack[1, 3:11, 3:11] = 5
    stack[2, 3:10, 2:9] = 9
    stack[1, 14:18, 14:18] = 6  # appears only in slice 1
    stack[2, 14:18, 2:6] = 10  # no overlap with anything above
    original = stack.copy()
    linked = stitch_slices(stack)
    assert np.array_equal(stack, original), "input must not be modified"
    assert set(np.unique(linked[:, 2:10, 2:10])) - {0} == {1}
    assert linked[1, 15, 15] == 6 and linked[2, 15, 3] == 10
    # 4D (T, Z, Y, X): time points are linked independently
    both = stitch_slices(np.stack([stack, stack + (stack > 0) * 100]))
    assert both[1, 2, 5, 5] == 101
