"""Z-slab streaming (slabs.py): a stack cut into slabs gives the objects of the stack held whole."""

from __future__ import annotations

import numpy as np
from test_volume import intensity_network, no_plane_labels, spheres

from napari_unetseg.metrics import agreement, object_matching
from napari_unetseg.slabs import (
    BYTES_PER_VOXEL,
    iter_segment_slabs,
    plan_slabs,
    slab_layout,
)
from napari_unetseg.volume import plan_volume, segment_volume


def run_slabs(stack: np.ndarray, memory_budget: int, **options) -> tuple[np.ndarray, int, list[int]]:
    """Labels written slab by slab, the objects counted, and the planes of each write."""
    labels, writes = np.zeros(stack.shape, np.uint32), []

    def write(start: int, planes: np.ndarray) -> None:
        labels[start : start + len(planes)] = planes
        writes.append(len(planes))

    steps = iter_segment_slabs(stack, intensity_network, no_plane_labels, write, diameter=None,
                               memory_budget=memory_budget, **options)
    while True:
        try:
            next(steps)
        except StopIteration as end:
            return labels, end.value[0], writes


def column_of_spheres(depth: int = 60) -> np.ndarray:
    """Spheres (radius 7) stacked along Z, two per layer, some straddling any boundary a slab may have."""
    centres = [(z, y, x) for z in range(6, depth - 5, 12) for y, x in ((16, 16), (16, 40))]
    centres += [(z + 6, 30, 28) for z in range(6, depth - 12, 12)]
    return spheres((depth, 48, 56), centres, radius=7.0)


def test_slabs_tile_the_stack_and_overlap() -> None:
    slabs = plan_slabs(25, 10, 3)
    assert [(s.start, s.stop, s.core_start, s.core_stop) for s in slabs] == [(0, 13, 0, 10), (7, 23, 10, 20),
                                                                            (17, 25, 20, 25)]


def test_a_stack_that_fits_is_one_slab_and_the_in_memory_result() -> None:
    stack = column_of_spheres()
    whole, _ = segment_volume(stack, intensity_network, no_plane_labels, diameter=None)
    labels, objects, writes = run_slabs(stack, memory_budget=2**40)
    assert writes == [len(stack)]
    np.testing.assert_array_equal(labels, whole)
    assert objects == int(whole.max()) == len(np.unique(whole)) - 1 > 10


def test_slab_streaming_gives_the_in_memory_objects_with_compact_ids() -> None:
    depth, memory_budget, cores = 60, 1_000_000, [22, 22, 16]  # the budget holds less than 3 overlaps
    stack = column_of_spheres(depth)
    whole, _ = segment_volume(stack, intensity_network, no_plane_labels, diameter=None)
    labels, objects, writes = run_slabs(stack, memory_budget=memory_budget)
    assert writes == cores  # really cut into slabs, objects straddling each boundary
    assert np.unique(labels).tolist() == list(range(objects + 1))  # 1..N, no gaps
    assert objects == int(whole.max())
    # "equals": the same 3D objects (3D object F1 >= 0.99 at IoU 0.5) and metrics.agreement's voxel bar (99.5 %);
    # where touching objects meet near a slab boundary the watershed line may move by a voxel or so
    assert object_matching(labels, whole)["f1"] >= 0.99
    assert agreement(labels, whole, "instance")["pixel_agreement"] >= 0.995
    ious = object_matching(labels, whole, thresholds=(0.9,))
    assert ious["f1"] >= 0.99  # every object also at IoU 0.9


def test_slab_depth_follows_the_memory_budget() -> None:
    plane_bytes = BYTES_PER_VOXEL * 48 * 56
    isotropic = plan_volume(None, None)
    assert slab_layout((60, 48, 56), isotropic, 20.0, 60 * plane_bytes) == (60, 0)  # fits: one slab
    assert slab_layout((60, 48, 56), isotropic, 20.0, 10 * plane_bytes) == (22, 22)  # cores never thinner than the overlap
    assert slab_layout((200, 48, 56), isotropic, 20.0, 84 * plane_bytes) == (84 - 2 * 22, 22)
    stretched = plan_volume((3.0, 1.0, 1.0), None)  # a Z step of 3 px: the overlap counts input planes
    assert slab_layout((200, 48, 56), stretched, 20.0, 3 * 40 * plane_bytes) == (40 - 2 * 9, 9)
