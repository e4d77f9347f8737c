"""Data augmentation for training, as in the U-Net paper: elastic deformation plus cheap extras.

Every geometric change (flips, 90-degree rotations, elastic deformation) is expressed as one
field of sampling coordinates, so a patch is cut out of a whole plane, transformed and resampled
in a single :func:`scipy.ndimage.map_coordinates` call per array. The image is interpolated
linearly (order 1 needs no spline prefilter, so the cost depends on the patch size only, not on
the plane size); labels and weights use nearest neighbour, so labels keep their original values.
Without elastic deformation all coordinates are integers and the patch is an exact copy.

Intensity changes (scale, shift, gamma, gaussian noise) touch the image only.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import ndimage as ndi


@dataclass
class AugmentConfig:
    """What to randomise per patch; set a field to 0 / False to switch that part off.

    ``elastic_sigma``: standard deviation in pixels of the random displacements of a coarse
    ``elastic_grid`` x ``elastic_grid`` grid (the paper: 10 px on a 3x3 grid), bicubically
    interpolated to every pixel. ``elastic_probability``: share of patches that are deformed.
    ``scale`` / ``shift``: image -> image * U(1-scale, 1+scale) + U(-shift, shift).
    ``gamma``: exponent exp(U(-gamma, gamma)) applied within the patch's intensity range.
    ``noise``: gaussian noise with a standard deviation drawn from U(0, noise).
    """

    flip: bool = True
    rotate90: bool = True
    elastic_probability: float = 0.5
    elastic_sigma: float = 10.0
    elastic_grid: int = 3
    scale: float = 0.15
    shift: float = 0.1
    gamma: float = 0.25
    noise: float = 0.03

    @classmethod
    def geometry_only(cls, **changes: float) -> AugmentConfig:
        """A config that changes geometry but never intensities (handy for checks)."""
        return cls(**{"scale": 0.0, "shift": 0.0, "gamma": 0.0, "noise": 0.0, **changes})

    @classmethod
    def none(cls) -> AugmentConfig:
        """No augmentation at all: patches are exact crops."""
        return cls(flip=False, rotate90=False, elastic_probability=0.0, scale=0.0, shift=0.0, gamma=0.0, noise=0.0)


def elastic_displacement(
    shape: tuple[int, int], rng: np.random.Generator, sigma: float = 10.0, grid: int = 3
) -> np.ndarray:
    """Smooth random displacement field ``(2, H, W)`` in pixels.

    Displacements are drawn N(0, sigma^2) on a coarse ``grid`` x ``grid`` lattice spanning the
    patch and upsampled with cubic splines, so the field is smooth (no tearing). The spline is
    separable, so upsampling is two small matrix products.
    """
    grid = max(2, int(grid))
    coarse = rng.normal(0.0, sigma, size=(2, grid, grid))
    rows, cols = _upsampling_matrix(shape[0], grid), _upsampling_matrix(shape[1], grid)
    return np.einsum("yi,cij,xj->cyx", rows, coarse, cols).astype(np.float32)


@lru_cache(maxsize=16)
def _upsampling_matrix(length: int, grid: int) -> np.ndarray:
    """``(length, grid)`` weights of the cubic spline through ``grid`` points (edge values extended)."""
    where = np.linspace(0, grid - 1, length)[np.newaxis]
    return np.stack([ndi.map_coordinates(unit, where, order=3, mode="nearest") for unit in np.eye(grid)], axis=1)


def patch_coordinates(
    out_shape: tuple[int, int],
    center: tuple[int, int],
    rng: np.random.Generator | None = None,
    config: AugmentConfig | None = None,
) -> np.ndarray:
    """Source coordinates ``(2, H, W)`` of a randomly transformed ``out_shape`` patch around ``center``.

    Pixel ``(H // 2, W // 2)`` of the patch comes from ``center`` before the elastic
    displacement; flips and rotations keep integer coordinates. With ``rng=None`` this is a
    plain crop. 90-degree rotations are only used for square patches.
    """
    height, width = out_shape
    rel = np.stack(
        np.meshgrid(np.arange(height) - height // 2, np.arange(width) - width // 2, indexing="ij")
    ).astype(np.float32)
    if rng is not None:
        config = config or AugmentConfig()
        rel = _flip_rotate(rel, rng, config, square=height == width)
        if config.elastic_sigma > 0 and rng.random() < config.elastic_probability:
            rel += elastic_displacement(out_shape, rng, config.elastic_sigma, config.elastic_grid)
    rel[0] += center[0]
    rel[1] += center[1]
    return rel


def _flip_rotate(rel: np.ndarray, rng: np.random.Generator, config: AugmentConfig, square: bool) -> np.ndarray:
    """Randomly mirror and rotate relative coordinates (exact: integers stay integers)."""
    dy, dx = rel
    if config.flip and rng.random() < 0.5:
        dy = -dy
    if config.flip and rng.random() < 0.5:
        dx = -dx
    turns = int(rng.integers(4)) if config.rotate90 and square else 0
    for _ in range(turns):
        dy, dx = dx, -dy
    return np.stack([dy, dx])


def sample_image(image: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """Linear interpolation of a 2D image at ``coords``, mirrored beyond its border (float32)."""
    return ndi.map_coordinates(
        np.asarray(image, np.float32), coords, order=1, mode="mirror", prefilter=False
    )


def sample_labels(labels: np.ndarray, coords: np.ndarray, fill: float = 0) -> np.ndarray:
    """Nearest-neighbour sampling of a 2D label (or weight) map; outside the map is ``fill``."""
    return ndi.map_coordinates(labels, coords, order=0, mode="constant", cval=fill, prefilter=False)


def augment_intensity(image: np.ndarray, rng: np.random.Generator, config: AugmentConfig | None = None) -> np.ndarray:
    """Random contrast scale, brightness shift, gamma and gaussian noise for a normalised patch."""
    config = config or AugmentConfig()
    out = np.asarray(image, np.float32)
    if config.gamma > 0:
        out = _random_gamma(out, float(np.exp(rng.uniform(-config.gamma, config.gamma))))
    if config.scale > 0 or config.shift > 0:
        out = out * np.float32(1 + rng.uniform(-config.scale, config.scale)) + np.float32(
            rng.uniform(-config.shift, config.shift)
        )
    if config.noise > 0:
        out = out + rng.normal(0.0, rng.uniform(0.0, config.noise), size=out.shape).astype(np.float32)
    return out.astype(np.float32, copy=False)


def _random_gamma(image: np.ndarray, gamma: float) -> np.ndarray:
    """``image ** gamma`` after mapping the patch's own range to [0, 1], then mapped back."""
    lo, hi = float(image.min()), float(image.max())
    if not hi > lo:
        return image
    unit = (image - np.float32(lo)) / np.float32(hi - lo)
    return (np.power(unit, np.float32(gamma)) * np.float32(hi - lo) + np.float32(lo)).astype(np.float32)


def augment_pair(
    image: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    config: AugmentConfig | None = None,
    label_fill: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Augment a 2D image and its labels with the same geometric transform; same shape out.

    Label values come only from ``labels`` (or ``label_fill`` where the transform looks
    outside the image); the image also gets the intensity changes.
    """
    image = np.asarray(image)
    labels = np.asarray(labels)
    if image.shape != labels.shape or image.ndim != 2:
        raise ValueError(f"need a 2D image and labels of the same shape, got {image.shape} and {labels.shape}")
    config = config or AugmentConfig()
    center = (image.shape[0] // 2, image.shape[1] // 2)
    coords = patch_coordinates(image.shape, center, rng, config)
    out_image = augment_intensity(sample_image(image, coords), rng, config)
    return out_image, sample_labels(labels, coords, label_fill)
