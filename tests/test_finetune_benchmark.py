"""The fine-tuning benchmark paints as a person would, in each style, and only inside its region."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_unetseg.targets import closed_objects

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "finetune_nuclei.py"
spec = importlib.util.spec_from_file_location("finetune_nuclei", SCRIPT)
bench = sys.modules["finetune_nuclei"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def discs(shape: tuple[int, int], centres: list[tuple[int, int]], radius: int) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.uint32)
    for k, (y, x) in enumerate(centres, start=1):
        labels[(yy - y) ** 2 + (xx - x) ** 2 <= radius**2] = k
    return labels


@pytest.fixture
def scene() -> tuple[np.ndarray, np.ndarray]:
    """Six nuclei, one of them (id 3) across the middle line; the left half is the painted region."""
    truth = discs((80, 120), [(15, 15), (15, 45), (40, 60), (65, 15), (65, 42), (20, 95)], 10)
    return truth, bench.left_half(truth.shape)


def test_whole_objects_are_painted_exactly_and_only_inside_the_region(scene) -> None:
    truth, region = scene
    assert bench.paintable_objects(truth, region).tolist() == [1, 2, 4, 5]  # 3 crosses the edge
    annotation = bench.paint("a", truth, truth, region, np.random.default_rng(0), objects=3)
    ids = np.unique(annotation[annotation > 0])
    assert ids.tolist() == [2, 3, 4] and not annotation[~region].any()
    for new_id in ids:
        painted = annotation == new_id
        old = np.unique(truth[painted])
        assert len(old) == 1 and np.array_equal(painted, truth == old[0])  # the whole object, nothing else


def test_background_strokes_keep_away_from_objects(scene) -> None:
    truth, region = scene
    annotation = bench.paint("b", truth, truth, region, np.random.default_rng(1))
    strokes = annotation == 1
    assert strokes.sum() > 100 and not strokes[~region].any()
    assert (ndi.distance_transform_edt(truth == 0)[strokes] > 4).all()
    assert len(np.unique(annotation[annotation >= 2])) == 4


def test_strokes_lie_inside_their_objects_and_read_as_strokes(scene) -> None:
    truth, region = scene
    annotation = bench.paint("c", truth, truth, region, np.random.default_rng(2))
    for new_id in np.unique(annotation[annotation >= 2]):
        mark = annotation == new_id
        owner = np.unique(truth[mark])
        assert len(owner) == 1 and owner[0] > 0  # inside one object
        assert mark.sum() < 0.4 * (truth == owner[0]).sum()
    assert not closed_objects(annotation, truth).any()  # the trainer takes them as strokes


def test_corrections_fix_false_missed_and_merged_objects(scene) -> None:
    truth, region = scene
    result = truth.copy()
    result[truth == 4] = 0  # missed
    result[(truth == 1) | (truth == 2)] = 1  # 1 and 2 merged ...
    result[10:21, 25:36] = 1  # ... through a bridge
    result[45:52, 25:32] = 9  # a false object on background
    annotation = bench.paint_corrections(result, truth, region)
    assert not annotation[~region].any() and not annotation[truth == 3].any()  # 3 crosses the region edge
    assert (annotation[45:52, 25:32] == 1).all()  # the false object painted over as background
    for old in (1, 2, 4, 5):  # the merge is split and the missed object painted in: one id per nucleus
        ids = np.unique(annotation[truth == old])
        assert len(ids) == 1 and ids[0] >= 2
    assert len({int(np.unique(annotation[truth == k])[0]) for k in (1, 2, 4, 5)}) == 4
    assert (annotation[region & (truth == 0) & (result == 0)] == 1).all()
