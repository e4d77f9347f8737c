"""Augmentation: image and labels move together, labels stay labels, intensities change the image only."""

from __future__ import annotations

import numpy as np
import pytest

from napari_unetseg.augment import (
    AugmentConfig,
    augment_intensity,
    augment_pair,
    elastic_displacement,
    patch_coordinates,
    sample_image,
    sample_labels,
)


def blocky_labels(size: int = 48, seed: int = 0) -> np.ndarray:
    """Random 8x8 blocks of labels 0..5: many edges in every direction."""
    rng = np.random.default_rng(seed)
    return np.kron(rng.integers(0, 6, size=(size // 8, size // 8)), np.ones((8, 8), int)).astype(np.int32)


def dihedral(array: np.ndarray) -> list[np.ndarray]:
    """The 8 flips/rotations of a square array."""
    out = []
    for turned in (array, np.rot90(array)):
        out += [turned, turned[::-1], turned[:, ::-1], turned[::-1, ::-1]]
    return out


@pytest.mark.parametrize("seed", range(5))
def test_elastic_keeps_image_and_labels_aligned(seed: int) -> None:
    labels = blocky_labels()
    config = AugmentConfig.geometry_only(elastic_probability=1.0)
    image, out_labels = augment_pair(labels.astype(np.float32), labels, np.random.default_rng(seed), config)
    assert image.shape == out_labels.shape == labels.shape
    # away from label edges linear interpolation of a piecewise constant image is exact
    padded = np.pad(out_labels, 1, mode="edge")
    window = np.lib.stride_tricks.sliding_window_view(padded, (3, 3))
    flat = (window.min(axis=(-2, -1)) == window.max(axis=(-2, -1))) & (out_labels > 0)
    assert flat.sum() > 0.2 * labels.size
    assert np.mean(np.abs(image[flat] - out_labels[flat]) < 1e-4) > 0.95
    # on all labelled pixels (edges too) the image is mostly closest to its own label
    inside = out_labels > 0
    assert np.mean(np.abs(image[inside] - out_labels[inside]) < 0.5) > 0.9


def test_elastic_deformation_really_moves_pixels() -> None:
    labels = blocky_labels()
    config = AugmentConfig.geometry_only(flip=False, rotate90=False, elastic_probability=1.0)
    _, moved = augment_pair(labels.astype(np.float32), labels, np.random.default_rng(1), config)
    assert 0.02 < np.mean(moved != labels) < 0.9


@pytest.mark.parametrize("seed", range(6))
def test_flips_and_rotations_are_exact_on_odd_patches(seed: int) -> None:
    rng = np.random.default_rng(seed)
    image = rng.random((33, 33)).astype(np.float32)
    labels = rng.integers(0, 4, size=(33, 33)).astype(np.uint16)
    config = AugmentConfig.geometry_only(elastic_probability=0.0)
    out_image, out_labels = augment_pair(image, labels, np.random.default_rng(seed), config)
    matches = [k for k, im in enumerate(dihedral(image)) if np.array_equal(out_image, im)]
    assert len(matches) == 1
    assert np.array_equal(out_labels, dihedral(labels)[matches[0]])


@pytest.mark.parametrize("seed", range(5))
def test_labels_keep_their_dtype_and_original_values(seed: int) -> None:
    labels = blocky_labels(seed=seed).astype(np.uint16) * 7
    _, out = augment_pair(np.zeros(labels.shape, np.float32), labels, np.random.default_rng(seed), AugmentConfig())
    assert out.dtype == labels.dtype
    assert set(np.unique(out)) <= set(np.unique(labels)) | {0}


def test_patch_beyond_the_plane_gets_fill_labels_and_mirrored_image() -> None:
    image = np.arange(100, dtype=np.float32).reshape(10, 10)
    labels = np.ones((10, 10), np.int32)
    coords = patch_coordinates((8, 8), (0, 0))  # plain crop centred on the corner
    patch = sample_image(image, coords)
    assert np.array_equal(patch[4:, 4:], image[:4, :4])
    assert np.array_equal(patch[3, 4:], image[1, :4])  # mirrored about row 0
    out = sample_labels(labels, coords, fill=-1)
    assert (out[:4] == -1).all() and (out[4:, 4:] == 1).all()


def test_displacement_field_is_smooth_with_the_requested_spread() -> None:
    rng = np.random.default_rng(0)
    fields = np.stack([elastic_displacement((64, 64), rng, sigma=10.0) for _ in range(50)])
    assert fields.shape == (50, 2, 64, 64)
    assert 5 < fields.std() < 15
    assert np.abs(np.diff(fields, axis=-1)).max() < 3  # no tearing between neighbours


def test_intensity_augmentation_changes_values_only() -> None:
    rng = np.random.default_rng(0)
    image = rng.random((32, 32)).astype(np.float32)
    out = augment_intensity(image, rng, AugmentConfig(noise=0.0))
    assert out.dtype == np.float32 and out.shape == image.shape and np.isfinite(out).all()
    assert not np.allclose(out, image)
    # gamma, scale and shift are monotonic: the order of intensities is kept
    assert np.array_equal(np.argsort(out, axis=None), np.argsort(image, axis=None))
    assert np.array_equal(augment_intensity(image, rng, AugmentConfig.none()), image)


def test_augment_pair_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="same shape"):
        augment_pair(np.zeros((4, 4)), np.zeros((4, 5), int), np.random.default_rng(0))
