"""3D objects from 2D planes (volume.py): the pipeline with a stand-in network whose probabilities follow the intensity."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unetseg.postprocess import BACKGROUND, BOUNDARY, INTERIOR, probabilities_to_instances
from napari_unetseg.size import CANDIDATE_PLANES
from napari_unetseg.volume import estimate_diameter, labels_at_input, plan_volume, segment_volume


def intensity_network(planes: list[np.ndarray]) -> list[np.ndarray]:
    """Probabilities of a network that calls bright pixels interior, mid-grey boundary, dark background."""
    out = []
    for plane in planes:
        value = np.clip(plane[0], 0.0, 1.0)
        probabilities = np.zeros((3, *value.shape), np.float32)
        probabilities[INTERIOR] = np.clip((value - 0.5) * 4, 0, 1)
        probabilities[BACKGROUND] = np.clip((0.35 - value) * 4, 0, 1)
        probabilities[BOUNDARY] = 1 - probabilities[INTERIOR] - probabilities[BACKGROUND]
        out.append(probabilities)
    return out


def no_plane_labels(probabilities: np.ndarray) -> np.ndarray:
    raise AssertionError("the size estimate was not asked for")


def spheres(shape, centres, radius, z_step=1.0) -> np.ndarray:
    z, y, x = np.indices(shape).astype(np.float32)
    image = np.zeros(shape, np.float32)
    for cz, cy, cx in centres:
        distance = np.sqrt(((z - cz) * z_step) ** 2 + (y - cy) ** 2 + (x - cx) ** 2)
        image = np.maximum(image, np.clip(1.2 - distance / radius, 0, 1))  # bright core, dim rim
    return image * 1000


def test_two_touching_spheres_come_out_as_two_objects() -> None:
    image = spheres((24, 48, 64), [(12, 24, 20), (12, 24, 42)], radius=10.5)
    labels, _ = segment_volume(image, intensity_network, no_plane_labels, diameter=None)
    assert labels.dtype == np.uint32 and labels.shape == image.shape
    assert sorted(np.unique(labels).tolist()) == [0, 1, 2]
    assert labels[12, 24, 20] != labels[12, 24, 42]


def test_one_sphere_spanning_12_slices_is_one_object_with_compact_ids() -> None:
    image = spheres((20, 40, 40), [(10, 20, 20)], radius=7.0)
    labels, _ = segment_volume(image, intensity_network, no_plane_labels, diameter=None)
    assert np.unique(labels).tolist() == [0, 1]
    slices = np.flatnonzero((labels == 1).any(axis=(1, 2)))
    assert len(slices) >= 12


def test_a_stack_with_no_contrast_gives_no_objects() -> None:
    labels, _ = segment_volume(np.full((8, 32, 32), 500.0), intensity_network, no_plane_labels, diameter=None)
    assert not labels.any()


def test_an_anisotropic_stack_is_resampled_to_cubic_voxels_and_back() -> None:
    z_step = 3.0
    image = spheres((8, 48, 64), [(4, 24, 20), (4, 24, 42)], radius=10.5, z_step=z_step)
    labels, plan = segment_volume(image, intensity_network, no_plane_labels, voxel_size=(z_step, 1, 1), diameter=None)
    assert plan.zoom == (3.0, 1.0, 1.0)
    assert labels.shape == image.shape
    assert sorted(np.unique(labels).tolist()) == [0, 1, 2]


def test_large_objects_are_shrunk_to_the_model_size_small_ones_never_enlarged() -> None:
    assert plan_volume(None, 60.0, model_diameter=20.0).zoom == pytest.approx((1 / 3, 1 / 3, 1 / 3))
    assert not plan_volume(None, 8.0, model_diameter=20.0).resamples
    assert not plan_volume(None, 25.0, model_diameter=20.0).resamples
    with pytest.raises(ValueError, match="positive"):
        plan_volume((0, 1, 1), None)


def counting(network):
    """``network`` that also records the height and width of every plane it is given."""
    seen: list[tuple[int, int]] = []

    def run(planes: list[np.ndarray]) -> list[np.ndarray]:
        seen.extend(plane.shape[-2:] for plane in planes)
        return network(planes)

    return run, seen


def test_a_stretched_stack_runs_its_own_z_planes_and_every_few_side_planes() -> None:
    z_step = 3.0
    image = spheres((8, 48, 64), [(4, 24, 20), (4, 24, 42)], radius=10.5, z_step=z_step)
    network, seen = counting(intensity_network)
    labels, _ = segment_volume(image, network, no_plane_labels, voxel_size=(z_step, 1, 1), diameter=None)
    assert sorted(np.unique(labels).tolist()) == [0, 1, 2]
    assert seen.count((48, 64)) == 8  # the input's 8 Z planes, not 24 interpolated ones
    side = [shape for shape in seen if shape != (48, 64)]
    assert set(side) == {(24, 64), (24, 48)}
    # every 5th row and column (2 x the Z step is 6, but at most a quarter of the model's 20 px objects),
    # and the last: rows 0, 5, ..., 45 and 47; columns 0, 5, ..., 60 and 63
    assert len(side) == 11 + 14


def test_labels_come_back_to_the_input_planes_symmetrically() -> None:
    # an object on planes 3..12 of a volume stretched 2x along Z, centred on input Z 3.5: the input planes'
    # centres (volume Z 0.5, 2.5, ..., 14.5) cover it on planes 2..5, as many below its centre as above
    labels = np.zeros((16, 4, 4), np.uint32)
    labels[3:13] = 7
    background = np.where(labels > 0, 0.2, 0.9).astype(np.float32)
    back = labels_at_input(labels, background, (8, 4, 4))
    assert [int(plane.max()) for plane in back] == [0, 0, 7, 7, 7, 7, 0, 0]
    assert labels_at_input(labels, background, (16, 2, 2)).shape == (16, 2, 2)  # same depth: XY resized only


def test_the_object_size_is_measured_on_a_few_planes_read_one_at_a_time() -> None:
    # a stack larger than memory is read a plane at a time: the size estimate must not read it all
    image = spheres((60, 96, 96), [(30, 48, 48)], radius=20.0)
    reads: list[int] = []

    class Planes:
        def __len__(self) -> int:
            return len(image)

        def __getitem__(self, z: int) -> np.ndarray:
            reads.append(z)
            return image[z]

    diameter = estimate_diameter(Planes(), intensity_network, probabilities_to_instances)
    # an object reaches where the stand-in network's background falls under 0.5 (1.2 - d / r > 0.225):
    # d < 0.975 r, so about 39 px across in the middle planes
    assert diameter is not None and 31.0 < diameter < 47.0
    assert len(reads) <= CANDIDATE_PLANES + 1  # the candidates, and one plane for the shape
