"""Synthetic nuclei: seeded, clean instance labels that match the picture, and fixed napari samples."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_unetseg.synthetic import (
    sample_image_2d,
    sample_stack_3d,
    synthetic_nuclei_2d,
    synthetic_nuclei_3d,
)

SEEDS = range(8)


def _assert_clean_labels(labels: np.ndarray) -> None:
    """Ids are exactly 0..N with none missing, and each id is one connected piece."""
    ids = np.unique(labels)
    assert ids[-1] >= 1
    np.testing.assert_array_equal(ids, np.arange(ids[-1] + 1))
    for i, box in enumerate(ndimage.find_objects(labels), start=1):
        assert ndimage.label(labels[box] == i)[1] == 1, f"id {i} is split"


def _touching_pairs(labels: np.ndarray) -> set[tuple[int, int]]:
    """Pairs of different ids that share an edge between neighbouring pixels."""
    pairs = set()
    for axis in range(labels.ndim):
        a = np.moveaxis(labels, axis, 0)[:-1].ravel()
        b = np.moveaxis(labels, axis, 0)[1:].ravel()
        touch = (a > 0) & (b > 0) & (a != b)
        pairs.update(zip(np.minimum(a, b)[touch].tolist(), np.maximum(a, b)[touch].tolist()))
    return pairs


def test_same_seed_same_output_and_rng_equivalent():
    image, labels = synthetic_nuclei_2d((96, 128), seed=3)
    again = synthetic_nuclei_2d((96, 128), seed=3)
    from_rng = synthetic_nuclei_2d((96, 128), rng=np.random.default_rng(3))
    other = synthetic_nuclei_2d((96, 128), seed=4)
    for image_b, labels_b in (again, from_rng):
        np.testing.assert_array_equal(image, image_b)
        np.testing.assert_array_equal(labels, labels_b)
    assert not np.array_equal(image, other[0])


def test_seed_and_rng_together_or_unknown_style_are_rejected():
    with pytest.raises(ValueError):
        synthetic_nuclei_2d(seed=1, rng=np.random.default_rng(1))
    with pytest.raises(TypeError, match="radiuss"):
        synthetic_nuclei_2d(seed=1, radiuss=5)


@pytest.mark.parametrize("seed", SEEDS)
def test_2d_shapes_dtypes_and_clean_labels(seed):
    image, labels = synthetic_nuclei_2d((100, 140), seed=seed)
    assert image.shape == labels.shape == (100, 140)
    assert image.dtype == np.float32 and labels.dtype == np.uint32
    assert np.isfinite(image).all() and image.min() >= 0
    _assert_clean_labels(labels)


def test_nuclei_are_brighter_than_their_surroundings():
    ratios = []
    for seed in SEEDS:
        image, labels = synthetic_nuclei_2d((128, 128), seed=seed, coverage=(0.1, 0.4))
        ratios.append(image[labels > 0].mean() / image[labels == 0].mean())
    assert min(ratios) > 1.0
    assert np.median(ratios) > 1.2


def test_crowded_nuclei_touch_yet_stay_separate_instances():
    _, labels = synthetic_nuclei_2d((160, 160), seed=0, radius=8.0, coverage=0.6, spacing=0.8, clustering=0.5)
    assert len(_touching_pairs(labels)) >= 10
    _assert_clean_labels(labels)


def test_style_radius_sets_nucleus_size():
    def median_area(radius: float) -> float:
        labels = synthetic_nuclei_2d((192, 192), seed=5, radius=radius, coverage=0.3)[1]
        return float(np.median(np.bincount(labels.ravel())[1:]))

    small, large = median_area(5.0), median_area(20.0)
    assert 30 < small < 160  # ~pi * 5^2, less where cut by the border or a neighbour
    assert large > 8 * small


def test_fixed_low_photon_count_makes_noisier_images():
    def background_noise(photons: float) -> float:
        image, labels = synthetic_nuclei_2d((128, 128), seed=2, photons=photons, coverage=0.1, haze=0.0, debris=0.0)
        background = image[ndimage.binary_erosion(labels == 0, iterations=6)]
        return float(background.std() / (image[labels > 0].mean() - background.mean()))

    assert background_noise(5.0) > 3 * background_noise(2000.0)


def test_3d_stack_labels_are_consistent_and_anisotropic():
    image, labels = synthetic_nuclei_3d((20, 64, 64), seed=1, z_spacing=3.0, radius=8.0, coverage=0.2)
    assert image.shape == labels.shape == (20, 64, 64)
    assert image.dtype == np.float32 and labels.dtype == np.uint32
    _assert_clean_labels(labels)  # one 3D component per id
    assert image[labels > 0].mean() > image[labels == 0].mean()
    extents = np.array([[s.stop - s.start for s in box] for box in ndimage.find_objects(labels)])
    inner = extents[(extents[:, 0] < 20) & (extents[:, 1] < 64)]  # not cut by the stack's ends
    assert np.median(inner[:, 0]) < np.median(inner[:, 1]) / 2  # z step 3x the pixel size: fewer slices
    np.testing.assert_array_equal(labels, synthetic_nuclei_3d((20, 64, 64), seed=1, z_spacing=3.0, radius=8.0, coverage=0.2)[1])


def test_3d_nuclei_fill_a_layer_with_glow_only_slices_above_and_below():
    image, labels = synthetic_nuclei_3d((40, 64, 64), seed=3, z_spacing=2.0, radius=6.0, z_scale=0.6,
                                        coverage=0.3, layer=0.3)
    occupied = np.flatnonzero(labels.reshape(40, -1).any(axis=1))
    assert occupied.size and occupied.min() > 3 and occupied.max() < 36  # empty slices at both ends
    nearest, far = image[occupied.min() - 1], image[0]
    assert nearest.mean() > far.mean()  # the slice next to the layer still sees its out-of-focus light


def test_sample_data_is_fixed():
    image, labels = sample_image_2d()
    assert image.shape == labels.shape == (256, 256)
    assert image.dtype == np.uint16 and labels.dtype == np.uint32
    assert labels.max() >= 20
    np.testing.assert_array_equal(image, sample_image_2d()[0])
    stack, stack_labels = sample_stack_3d()
    assert stack.shape == stack_labels.shape == (24, 192, 192)
    assert stack.dtype == np.uint16 and stack_labels.max() >= 10
    again = sample_stack_3d()
    np.testing.assert_array_equal(stack, again[0])
    np.testing.assert_array_equal(stack_labels, again[1])
