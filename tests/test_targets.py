"""Targets follow what a painting means: whole objects, strokes, corrections; the held-out object score."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unetseg.metrics import object_changes, painted_object_score
from napari_unetseg.targets import IGNORE, closed_objects, derive_targets, painting_advice, result_as_annotation

_ = IGNORE
B, I, E = 0, 1, 2  # background, interior, boundary (edge)


def disc(shape: tuple[int, int], centre: tuple[int, int], radius: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def test_an_object_painted_whole_ends_where_the_painting_ends() -> None:
    """Style (a): nothing painted around the object, yet its edge is taught as boundary."""
    annotation = np.zeros((6, 6), np.uint8)
    annotation[1:5, 1:5] = 2
    expected = [
        [_, _, _, _, _, _],
        [_, E, E, E, E, _],
        [_, E, I, I, E, _],
        [_, E, I, I, E, _],
        [_, E, E, E, E, _],
        [_, _, _, _, _, _],
    ]
    assert derive_targets(annotation, "instance", closed=annotation >= 2).tolist() == expected


def test_a_stroke_teaches_the_inside_only() -> None:
    """Style (c): the same pixels painted as a stroke are all interior; unpainted stays ignored."""
    annotation = np.zeros((6, 6), np.uint8)
    annotation[1:5, 1:5] = 2
    targets = derive_targets(annotation, "instance", closed=np.zeros((6, 6), bool))
    assert (targets[1:5, 1:5] == I).all() and (targets[annotation == 0] == IGNORE).all()
    assert np.array_equal(targets, derive_targets(annotation, "instance"))


def test_painted_neighbours_make_boundary_in_every_style() -> None:
    """Styles (b) and (d): an object's edge against background or another object is boundary; a
    stroke's edge against unpainted pixels is not."""
    annotation = np.array(
        [
            [0, 0, 0, 0, 0, 0],
            [0, 2, 2, 3, 3, 1],
            [0, 2, 2, 3, 3, 1],
            [0, 2, 2, 3, 3, 1],
            [0, 0, 0, 0, 0, 0],
        ],
        np.uint8,
    )
    expected = [
        [_, _, _, _, _, _],
        [_, I, E, E, E, B],
        [_, I, E, E, E, B],
        [_, I, E, E, E, B],
        [_, _, _, _, _, _],
    ]
    assert derive_targets(annotation, "instance").tolist() == expected
    closed = derive_targets(annotation, "instance", closed=annotation == 3)
    assert closed[1:4, 3:5].tolist() == [[E, E], [E, E], [E, E]]  # object 3 is 2 px wide: all edge
    assert closed[1:4, 1].tolist() == [I, I, I]  # object 2 stays a stroke


def test_closed_objects_tells_whole_objects_from_strokes() -> None:
    shape = (64, 96)
    annotation = np.zeros(shape, np.uint16)
    annotation[disc(shape, (16, 16), 9)] = 2  # a whole nucleus
    annotation[40:43, 5:40] = 3  # a 3 px line: a stroke
    annotation[disc(shape, (32, 70), 5)] = 4  # a dab ...
    reference = np.zeros(shape, np.uint32)
    reference[disc(shape, (32, 70), 16)] = 7  # ... inside a nucleus the model already finds
    reference[disc(shape, (16, 16), 9) & (np.mgrid[: shape[0], : shape[1]][1] < 16)] = 8  # the model split #2
    reference[disc(shape, (16, 16), 9) & (np.mgrid[: shape[0], : shape[1]][1] >= 16)] = 9

    closed = closed_objects(annotation, reference)
    assert closed[annotation == 2].all() and not closed[annotation != 2].any()
    without_model = closed_objects(annotation)  # thickness alone: the dab is thick enough to count
    assert without_model[annotation == 2].all() and without_model[annotation == 4].all()
    assert not without_model[annotation == 3].any()


def test_painting_advice_names_what_the_painting_cannot_teach() -> None:
    shape = (64, 64)
    whole = np.zeros(shape, np.uint8)
    whole[disc(shape, (16, 16), 8)] = 2
    whole[disc(shape, (44, 44), 8)] = 3
    advice = painting_advice([whole], "instance", fine_tuning=True)
    assert any("No background" in line for line in advice)
    assert any("Only 2 object(s)" in line for line in advice)
    assert not any("thin strokes" in line for line in advice)

    strokes = whole.copy()
    strokes[5, 40:60] = 4
    strokes[60, 2:30] = 1
    advice = painting_advice([strokes], "instance", fine_tuning=True)
    assert any(line.startswith("1 of 3 objects are thin strokes") for line in advice)
    assert not any("No background" in line for line in advice)
    assert painting_advice([strokes], "semantic", fine_tuning=True) == []


def test_painted_object_score_counts_found_objects_merges_and_background() -> None:
    annotation = np.zeros((10, 20), np.uint8)
    annotation[2:6, 2:6], annotation[2:6, 10:14], annotation[8, :] = 2, 3, 1
    whole = annotation >= 2
    right = np.zeros((10, 20), np.uint32)
    right[2:6, 2:6], right[2:6, 10:14] = 5, 7
    assert painted_object_score(right, annotation, whole) == 1.0

    merged = right.copy()
    merged[2:6, 2:14] = 5  # one predicted object over both: IoU 16/48 each
    assert painted_object_score(merged, annotation, whole) == pytest.approx((2 * (0.5 / 3) + 1) / 3)
    assert painted_object_score(merged, annotation, ~whole) == pytest.approx(1 / 3)  # strokes: a merge scores 0

    spill = right.copy()
    spill[8, :] = 9  # a false object over the background stroke
    assert painted_object_score(spill, annotation, whole) == pytest.approx(2 / 3)
    bigger = np.zeros((10, 20), np.uint32)
    bigger[1:7, 1:7], bigger[1:7, 9:15] = 5, 7  # each found, but 16/36 of its pixels painted
    assert painted_object_score(bigger, annotation, ~whole) == 1.0  # strokes only need to be covered
    assert painted_object_score(bigger, annotation, whole) == pytest.approx((2 * 0.5 * 16 / 36 + 1) / 3)


def test_object_changes_counts_objects_added_and_removed() -> None:
    before = np.zeros((8, 20), np.uint32)
    before[1:4, 1:4], before[1:4, 8:12] = 1, 2
    after = np.zeros((8, 20), np.uint32)
    after[1:4, 1:4], after[5:8, 15:19], after[5:8, 1:4] = 4, 5, 6
    assert object_changes(after, before) == (2, 1)
    assert object_changes(before, before) == (0, 0)


def test_soft_cross_entropy_keeps_the_parent_view_only_where_asked() -> None:
    import torch
    from torch.nn import functional as F

    from napari_unetseg.targets import soft_cross_entropy

    torch.manual_seed(0)
    logits = torch.randn(2, 3, 4, 5, requires_grad=True)
    classes = torch.randint(0, 3, (2, 4, 5))
    one_hot = F.one_hot(classes, 3).permute(0, 3, 1, 2).float()
    where = torch.zeros(2, 4, 5, dtype=torch.bool)
    where[0, :2] = True
    loss = soft_cross_entropy(logits, one_hot, where)
    expected = F.cross_entropy(logits, classes, reduction="none")[where].mean()
    assert torch.allclose(loss, expected)
    loss.backward()
    assert (logits.grad[:, :, ~where[0]].abs().sum() == 0) and logits.grad[0][:, where[0]].abs().sum() > 0


def test_a_result_becomes_an_annotation_to_correct_and_is_left_as_it_was():
    result = np.array([[0, 1, 1], [0, 0, 7]], np.uint32)
    assert result_as_annotation(result, "instance").tolist() == [[1, 2, 2], [1, 1, 8]]
    classes = np.array([[1, 2], [2, 1]], np.uint8)
    annotation = result_as_annotation(classes, "semantic")
    annotation[0, 0] = 0
    assert annotation.dtype == np.uint8 and classes[0, 0] == 1  # a copy: the result layer keeps its data
    assert result.tolist() == [[0, 1, 1], [0, 0, 7]]
