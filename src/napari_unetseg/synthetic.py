"""Synthetic fluorescent nuclei with instance labels, for training and for napari sample data.

Images come from a small microscope model, so that a network trained only on them meets the things it
will see in real images: nuclei (varied size, shape, brightness, texture, touching and clustered) ->
optical blur -> out-of-focus haze, debris, uneven illumination and background -> Poisson-Gaussian
camera noise. Every random choice is drawn per image from ranges (the "style", see `DEFAULT_STYLE`) with
one numpy Generator, so a seed fully determines the output.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree
from skimage.measure import label as connected_regions

__all__ = ["DEFAULT_STYLE", "sample_image_2d", "sample_stack_3d", "synthetic_nuclei_2d", "synthetic_nuclei_3d"]

# Per-image ranges (lo, hi); a scalar passed as a style override fixes the value. Lengths are in pixels.
DEFAULT_STYLE: dict[str, tuple[float, float]] = {
    "radius": (4.0, 30.0),  # mean nucleus radius (log-uniform)
    "radius_cv": (0.05, 0.25),  # size spread within an image
    "coverage": (0.03, 0.65),  # area (volume) fraction the nuclei would fill
    "clustering": (0.0, 0.8),  # fraction of nuclei placed in clusters
    "spacing": (0.75, 1.15),  # closest centre distance / (r_i + r_j); below 1 neighbours overlap
    "aspect": (1.0, 2.0),  # largest axis ratio of the nuclei in an image
    "irregularity": (0.0, 0.25),  # depth of the bumps and dents of the outline
    "brightness_cv": (0.1, 0.45),  # lognormal sigma of the nucleus brightness
    "dim_fraction": (0.0, 0.25),  # fraction of nuclei 2-4x dimmer than the others
    "texture": (0.05, 0.6),  # contrast of the chromatin texture
    "puncta": (0.0, 1.0),  # brightness of small chromatin dots (chromocenters)
    "rim": (-0.3, 0.6),  # brighter (> 0) or darker (< 0) edge
    "dome": (0.0, 0.7),  # fall-off of intensity towards the edge (thin edges in widefield)
    "nucleoli": (0.0, 4.0),  # mean number of nucleoli (dark or bright spots) per nucleus
    "mitotic": (0.0, 0.06),  # fraction of compact, bright mitotic nuclei
    "blur": (0.5, 3.0),  # PSF sigma in xy (log-uniform)
    "haze": (0.0, 0.5),  # unlabelled out-of-focus nuclei per labelled nucleus
    "cytoplasm": (0.0, 0.08),  # faint glow around nuclei, relative to their brightness
    "debris": (0.0, 2.0),  # small bright unlabelled specks per 100 x 100 px
    "background": (0.02, 0.6),  # background level relative to a mean nucleus (log-uniform)
    "illumination": (0.0, 0.4),  # strength of the illumination gradient and vignetting
    "photons": (5.0, 3000.0),  # photons of a mean nucleus (log-uniform): sets the SNR
    "read_noise": (0.5, 4.0),  # camera read noise in photons
    "gain": (0.5, 20.0),  # camera counts per photon
    "offset": (0.0, 2000.0),  # camera offset in counts
    "z_spacing": (1.0, 3.0),  # 3D only: z step / xy pixel size
    "z_scale": (0.5, 1.0),  # 3D only: nucleus height / width
    "axial_blur": (2.0, 4.0),  # 3D only: PSF sigma along z / in xy
    "layer": (0.25, 1.0),  # 3D only: share of the depth holding nuclei (slices above and below get only their glow)
}
_STYLE_3D = {**DEFAULT_STYLE, "radius": (5.0, 20.0), "coverage": (0.03, 0.4)}  # several, separable nuclei per stack
_LOG_UNIFORM = frozenset({"radius", "blur", "background", "photons"})
_MAX_NUCLEI = 1500  # caps the work for tiny, crowded nuclei
_BUMPS = 4  # outline bumps and dents per nucleus
_MAX_NUCLEOLI = 6


class _Style:
    """Draws the per-image parameters from the style ranges."""

    def __init__(self, rng: np.random.Generator, defaults: dict, overrides: dict[str, Any]) -> None:
        unknown = set(overrides) - set(defaults)
        if unknown:
            raise TypeError(f"unknown style keys: {sorted(unknown)}; known: {sorted(defaults)}")
        self.rng = rng
        self.ranges = {k: (v, v) if np.isscalar(v) else tuple(v) for k, v in {**defaults, **overrides}.items()}

    def __call__(self, key: str) -> float:
        lo, hi = self.ranges[key]
        if key in _LOG_UNIFORM:
            return float(np.exp(self.rng.uniform(np.log(lo), np.log(hi))))
        return float(self.rng.uniform(lo, hi))


def _place_centres(rng: np.random.Generator, radius: np.ndarray, extent: np.ndarray, st: _Style) -> np.ndarray:
    """Random centres (uniform plus clusters), then pushed apart until neighbours just touch or overlap."""
    n, ndim = len(radius), len(extent)
    r_mean = radius.mean()
    pts = rng.uniform(-0.5 * r_mean, extent + 0.5 * r_mean, (n, ndim))  # some nuclei cut by the border
    n_clustered = rng.binomial(n, st("clustering"))
    if n_clustered:
        hubs = rng.uniform(0, extent, (max(1, n_clustered // int(rng.integers(3, 12))), ndim))
        spread = r_mean * rng.uniform(1.0, 2.5)
        pts[:n_clustered] = hubs[rng.integers(len(hubs), size=n_clustered)] + rng.normal(0, spread, (n_clustered, ndim))
    sep = st("spacing")
    for _ in range(10):
        i, j = cKDTree(pts).query_pairs(2 * sep * radius.max(), output_type="ndarray").T
        dist = np.linalg.norm(pts[j] - pts[i], axis=1)
        push = np.clip(sep * (radius[i] + radius[j]) - dist, 0, None) / 2
        if not push.size or push.max() < 0.5:
            break
        move = (pts[j] - pts[i]) * (push / np.maximum(dist, 1e-3))[:, None]
        for d in range(ndim):
            pts[:, d] += np.bincount(j, move[:, d], n) - np.bincount(i, move[:, d], n)
        if ndim == 3:  # stay in the layer: crowded neighbours move sideways rather than above each other
            pts[:, 0] = np.clip(pts[:, 0], -0.5 * r_mean, extent[0] + 0.5 * r_mean)
    return pts


def _rotations(rng: np.random.Generator, n: int, ndim: int) -> np.ndarray:
    """Random in-plane rotations (n, ndim, ndim); in 3D with a small tilt out of the xy plane."""
    angle = rng.uniform(0, 2 * np.pi, n)
    rot = np.tile(np.eye(ndim), (n, 1, 1))
    rot[:, -2, -2], rot[:, -2, -1] = np.cos(angle), -np.sin(angle)
    rot[:, -1, -2], rot[:, -1, -1] = np.sin(angle), np.cos(angle)
    if ndim == 3:
        skew = rng.normal(0, 0.15, (n, 3, 3))
        tilt = np.linalg.qr(np.eye(3) + skew - skew.transpose(0, 2, 1))[0]
        rot = rot @ (tilt * np.sign(np.diagonal(tilt, axis1=1, axis2=2))[:, None, :])
    return rot


def _unit_vectors(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Random directions, uniform on the sphere, along the last axis."""
    v = rng.normal(size=shape)
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _nuclei(rng: np.random.Generator, st: _Style, shape: tuple[int, ...], spacing: np.ndarray) -> dict:
    """Per-nucleus parameters (arrays with one row per nucleus), in physical units (xy pixels)."""
    ndim = len(shape)
    extent = np.asarray(shape) * spacing
    offset = np.zeros(ndim)
    if ndim == 3:  # nuclei fill a central layer, as a cell layer does in a real stack
        layer = st("layer")
        offset[0] = extent[0] * (1 - layer) / 2
        extent = extent * np.array([layer, 1.0, 1.0])
    r_mean, z_scale = st("radius"), st("z_scale") if ndim == 3 else 1.0
    unit = np.pi * r_mean**2 if ndim == 2 else 4 / 3 * np.pi * r_mean**3 * z_scale
    n = int(np.clip(round(st("coverage") * extent.prod() / unit), 1, _MAX_NUCLEI))
    radius = r_mean * np.exp(np.clip(rng.normal(0, st("radius_cv"), n), -0.7, 0.7))
    aspect = np.sqrt(rng.uniform(1.0, st("aspect"), n))
    axes = np.stack([radius * aspect, radius / aspect], 1)
    if ndim == 3:
        axes = np.column_stack([radius * z_scale * rng.uniform(0.85, 1.15, n), axes])
    bright = np.exp(rng.normal(0, st("brightness_cv"), n))
    bright[rng.random(n) < st("dim_fraction")] /= rng.uniform(2, 4)
    bright = np.maximum(bright, 0.15)  # dim, yet not invisible: labels must stay learnable
    n_nucleoli = np.minimum(rng.poisson(st("nucleoli"), n), _MAX_NUCLEOLI)
    p = {
        "centre": _place_centres(rng, radius, extent, st) + offset,
        "radius": radius,
        "axes": axes,
        "rot": _rotations(rng, n, ndim),
        "bump_dir": _unit_vectors(rng, (n, _BUMPS, ndim)),
        "bump_amp": rng.normal(0, st("irregularity"), (n, _BUMPS)),
        "bump_kappa": rng.uniform(1.5, 6.0, (n, _BUMPS)),
        "bright": bright,
        "texture": st("texture") * rng.uniform(0.5, 1.5, n),
        "rim": st("rim") + rng.normal(0, 0.1, n),
        "dome": st("dome") * rng.uniform(0.5, 1.0, n),
        "tilt": rng.normal(0, 0.1, (n, ndim)),  # one side of a nucleus a little brighter
        "nucleoli_pos": 0.5 * _unit_vectors(rng, (n, _MAX_NUCLEOLI, ndim)) * rng.random((n, _MAX_NUCLEOLI, 1)),
        "nucleoli_sigma": rng.uniform(0.08, 0.2, (n, _MAX_NUCLEOLI)),
        "nucleoli_amp": rng.uniform(-0.7, 0.8, (n, _MAX_NUCLEOLI)) * (np.arange(_MAX_NUCLEOLI) < n_nucleoli[:, None]),
    }
    return _add_mitoses(rng, p, st("mitotic"))


def _add_mitoses(rng: np.random.Generator, p: dict, fraction: float) -> dict:
    """Turns some nuclei into compact, bright, elongated mitotic figures; half become a pair of daughters."""
    n = len(p["radius"])
    mit = np.flatnonzero(rng.random(n) < fraction)
    size = rng.uniform(0.45, 0.7, len(mit))
    stretch = np.sqrt(rng.uniform(1.8, 3.5, len(mit)))
    p["axes"][mit, -2:] = (p["radius"][mit] * size)[:, None] * np.stack([stretch, 1 / stretch], 1)
    p["axes"][mit, :-2] *= size[:, None]
    p["radius"][mit] *= size
    p["bright"][mit] = rng.uniform(2.0, 4.0, len(mit))
    p["texture"][mit] = rng.uniform(0.8, 1.4, len(mit))
    p["bump_amp"][mit] *= 1.5
    p["rim"][mit], p["dome"][mit], p["nucleoli_amp"][mit] = 0.0, 0.0, 0.0
    pairs = mit[rng.random(len(mit)) < 0.5]
    p = {k: v[np.r_[np.arange(n), pairs]] for k, v in p.items()}
    gap = p["rot"][pairs, :, -1] * (p["axes"][pairs, -1] * rng.uniform(1.2, 2.0, len(pairs)))[:, None]
    p["centre"][pairs] -= gap
    p["centre"][n:] += gap
    return p


def _outline_reach(p: dict) -> np.ndarray:
    """Largest normalised radius of each outline: only bumps (positive amplitudes) push it beyond 1."""
    return 1 + np.clip(p["bump_amp"], 0, None).sum(1)


def _candidates(shape: tuple[int, ...], spacing: np.ndarray, p: dict, members: np.ndarray) -> tuple[np.ndarray, ...]:
    """Image pixels within reach of the given nuclei, evaluated in one box shared by all (vectorised):
    flat image index, nucleus index and body coordinates q (ndim, m), in units of the nucleus axes."""
    ndim = len(shape)
    centre, reach = p["centre"][members], (p["axes"] * _outline_reach(p)[:, None]).max(1)[members]
    half = np.ceil(reach.max() / spacing).astype(int) + 1
    first = np.round(centre / spacing).astype(int) - half  # box corner, in pixels
    per_nucleus = (len(members),) + (1,) * ndim
    x = [(first[:, d, None] + np.arange(2 * h + 1)) * spacing[d] - centre[:, d, None] for d, h in enumerate(half)]
    x = [xd.astype(np.float32).reshape(per_nucleus[: d + 1] + (-1,) + (1,) * (ndim - d - 1)) for d, xd in enumerate(x)]
    scale = (p["rot"] / p["axes"][:, None, :])[members].astype(np.float32)
    q = [sum(x[d] * scale[:, d, k].reshape(per_nucleus) for d in range(ndim)) for k in range(ndim)]
    inside = sum(qk * qk for qk in q) < (_outline_reach(p)[members] ** 2).reshape(per_nucleus)
    box_index = np.nonzero(inside)
    pixel = [first[box_index[0], d] + box_index[d + 1] for d in range(ndim)]
    in_image = np.all([(v >= 0) & (v < s) for v, s in zip(pixel, shape)], axis=0)
    q = np.stack([qk[inside][in_image] for qk in q])
    flat = np.ravel_multi_index([v[in_image] for v in pixel], shape)
    return flat, members[box_index[0][in_image]], q


def _rasterise(shape: tuple[int, ...], spacing: np.ndarray, p: dict) -> tuple[np.ndarray, ...]:
    """Pixels inside the nuclei: flat image index, nucleus index, normalised radius d (< 1) and body
    coordinates q. Nuclei are grouped by size so that small ones get small boxes. Where nuclei overlap,
    the pixel goes to the nucleus it lies deepest inside (smallest d), which keeps labels a partition."""
    size_order = np.argsort(p["axes"].max(1))
    groups = [_candidates(shape, spacing, p, g) for g in np.array_split(size_order, min(3, len(size_order)))]
    idx, nuc, q = (np.concatenate(parts, axis=-1) for parts in zip(*groups))
    rho = np.sqrt((q * q).sum(0)) + 1e-6
    direction, amp, kappa = (p[k].astype(np.float32) for k in ("bump_dir", "bump_amp", "bump_kappa"))
    bumps = np.zeros_like(rho)
    for b in range(_BUMPS):  # a bump (or dent) is largest where the outline points along its direction
        cosine = sum(direction[:, b, k][nuc] * q[k] for k in range(len(shape))) / rho
        bumps += amp[:, b][nuc] * np.exp(kappa[:, b][nuc] * (cosine - 1))
    d = rho / np.maximum(1 + bumps, 0.4)
    keep = d < 1
    idx, nuc, d, q = idx[keep], nuc[keep], d[keep], q[:, keep]
    best = np.full(int(np.prod(shape)), np.inf, np.float32)
    np.minimum.at(best, idx, d)
    win = d <= best[idx]
    return idx[win], nuc[win], d[win], q[:, win]


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: np.ndarray) -> np.ndarray:
    """Gaussian-smoothed white noise with unit standard deviation."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape, np.float32), sigma, truncate=2.5)
    return field / (field.std() + 1e-6)


def _nucleus_intensity(
    rng: np.random.Generator, st: _Style, shape: tuple[int, ...], spacing: np.ndarray, p: dict,
    idx: np.ndarray, nuc: np.ndarray, d: np.ndarray, q: np.ndarray,
) -> np.ndarray:
    """Intensity of each nucleus pixel: brightness x radial profile (dome, rim) x chromatin texture and dots
    x nucleoli x a slight tilt. Texture fields are drawn once for the whole image, then sampled."""
    fine = _smooth_noise(rng, shape, rng.uniform(0.6, 1.5) / spacing).ravel()[idx]
    coarse = _smooth_noise(rng, shape, 0.2 * p["radius"].mean() / spacing).ravel()[idx]
    mix = rng.uniform(0.2, 0.8)
    texture = np.exp(p["texture"][nuc] * (mix * fine + (1 - mix) * coarse))
    texture += st("puncta") * np.clip(fine - 2, 0, None)  # the brightest speckles become dots
    depth = (1 - d) * p["radius"][nuc]  # approximate distance to the edge
    rim = 1 + p["rim"][nuc] * np.exp(-((depth / rng.uniform(1, 3)) ** 2))
    profile = (1 - p["dome"][nuc] * (1 - np.sqrt(1 - d * d))) * rim
    spots = np.ones_like(d)
    for j in range(_MAX_NUCLEOLI):
        if not p["nucleoli_amp"][:, j].any():
            break
        dist2 = ((q - p["nucleoli_pos"][nuc, j].T) ** 2).sum(0)
        spots += p["nucleoli_amp"][nuc, j] * np.exp(-dist2 / (2 * p["nucleoli_sigma"][nuc, j] ** 2))
    tilt = 1 + (p["tilt"][nuc].T * q).sum(0)
    return p["bright"][nuc] * profile * texture * np.clip(spots, 0.2, None) * np.clip(tilt, 0.5, None)


def _gaussian_blobs(
    shape: tuple[int, ...], spacing: np.ndarray, centres: np.ndarray, sigmas: np.ndarray, amps: np.ndarray
) -> np.ndarray:
    """Sum of isotropic Gaussian blobs, from separable 1D profiles and one matrix product. Wide blobs are
    evaluated on a grid up to sigma/2 coarser and interpolated back, which keeps many of them cheap."""
    if not len(amps):
        return np.zeros(shape, np.float32)
    step = np.clip(sigmas.min() / (2 * np.asarray(spacing)), 1, 8).astype(int)
    coarse = [max(2, -(-(s - 1) // k) + 1) for s, k in zip(shape, step)]
    profiles = [
        np.exp(-0.5 * ((np.linspace(0, s - 1, c) * sp - centres[:, d, None]) / sigmas[:, None]) ** 2)
        for d, (s, c, sp) in enumerate(zip(shape, coarse, spacing))
    ]
    profiles = [g.astype(np.float32) for g in profiles]
    rest = profiles[-1]
    for g in reversed(profiles[1:-1]):
        rest = (g[:, :, None] * rest[:, None, :]).reshape(len(amps), -1)
    blobs = ((profiles[0] * amps[:, None].astype(np.float32)).T @ rest).reshape(coarse)
    return blobs if tuple(coarse) == tuple(shape) else ndimage.zoom(blobs, np.divide(shape, coarse), order=1)


def _unlabelled_light(
    rng: np.random.Generator, st: _Style, shape: tuple[int, ...], spacing: np.ndarray, p: dict
) -> np.ndarray:
    """Light that must not be segmented: out-of-focus nuclei (haze), cytoplasm glow and small debris."""
    extent = np.asarray(shape) * spacing

    def random_blobs(count: int, sigma: tuple[float, float], amp: tuple[float, float]) -> np.ndarray:
        centres = rng.uniform(0, extent, (count, len(shape)))
        return _gaussian_blobs(shape, spacing, centres, rng.uniform(*sigma, count), rng.uniform(*amp, count))

    r_mean = p["radius"].mean()
    haze = random_blobs(rng.poisson(st("haze") * len(p["radius"])), (0.7 * r_mean, 1.6 * r_mean), (0.05, 0.5))
    debris = random_blobs(rng.poisson(st("debris") * np.prod(shape[-2:]) / 1e4), (0.3, 1.2), (1.0, 4.0))
    glow = _gaussian_blobs(shape, spacing, p["centre"], 1.8 * p["radius"], st("cytoplasm") * p["bright"])
    return haze + debris + glow


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], strength: float) -> np.ndarray:
    """1 + a random linear ramp (in 3D also along z) minus vignetting: smooth, uneven illumination."""
    grids = np.meshgrid(*[np.linspace(-1, 1, s, dtype=np.float32) for s in shape], indexing="ij", sparse=True)
    ramp = sum(g * w for g, w in zip(grids, _unit_vectors(rng, (len(shape),))))
    field = 1 + strength * (ramp - rng.uniform(0, 1) * (grids[-1] ** 2 + grids[-2] ** 2))
    return np.clip(field, 0.3, None)


def _camera(rng: np.random.Generator, st: _Style, signal: np.ndarray) -> np.ndarray:
    """Poisson photon noise, Gaussian read noise, gain and offset: counts of a camera."""
    mean = np.maximum(signal, 0) * np.float32(st("photons"))
    photons = mean + np.sqrt(mean) * rng.standard_normal(signal.shape, np.float32)  # Poisson when bright ...
    few = mean < 30
    photons[few] = rng.poisson(mean[few])  # ... and exact where photons are few
    photons += st("read_noise") * rng.standard_normal(signal.shape, np.float32)
    return np.maximum(st("offset") + st("gain") * photons, 0).astype(np.float32)


def _synthesise(
    shape: tuple[int, ...], spacing: np.ndarray, rng: np.random.Generator, st: _Style
) -> tuple[np.ndarray, np.ndarray]:
    """Renders one image or stack; `spacing` is the voxel size in xy pixels (z may be coarser)."""
    p = _nuclei(rng, st, shape, spacing)
    idx, nuc, d, q = _rasterise(shape, spacing, p)
    labels = np.zeros(int(np.prod(shape)), np.int64)
    labels[idx] = nuc + 1
    nuclei = np.zeros(labels.size, np.float32)
    nuclei[idx] = _nucleus_intensity(rng, st, shape, spacing, p, idx, nuc, d, q)
    psf = st("blur") * np.ones(len(shape))
    if len(shape) == 3:
        psf[0] *= st("axial_blur")
    light = ndimage.gaussian_filter(nuclei.reshape(shape), psf / spacing)
    light += _unlabelled_light(rng, st, shape, spacing, p)
    signal = light * _smooth_field(rng, shape, st("illumination"))
    signal += st("background") * _smooth_field(rng, shape, 0.5)
    return _camera(rng, st, signal), _clean_labels(labels.reshape(shape))


def _clean_labels(labels: np.ndarray) -> np.ndarray:
    """Keeps the largest connected piece of each nucleus and numbers the nuclei 1..N without gaps."""
    regions = connected_regions(labels, background=0, connectivity=1)
    if not regions.any():
        return regions.astype(np.uint32)
    flat_regions, flat_labels = regions.ravel(), labels.ravel()
    size = np.bincount(flat_regions)
    owner = np.zeros(len(size), np.int64)
    owner[flat_regions] = flat_labels
    order = np.lexsort((size[1:], owner[1:])) + 1  # by nucleus, then by size: the last of a run is largest
    keep = np.zeros(len(size), bool)
    keep[order[np.r_[owner[order][1:] != owner[order][:-1], True]]] = True
    keep[0] = False
    lut = (np.cumsum(keep) * keep).astype(np.uint32)
    return lut[regions]


def _generator(seed: int | None, rng: np.random.Generator | None) -> np.random.Generator:
    if seed is not None and rng is not None:
        raise ValueError("pass either seed or rng, not both")
    return rng if rng is not None else np.random.default_rng(seed)


def synthetic_nuclei_2d(
    shape: tuple[int, int] = (256, 256),
    seed: int | None = None,
    *,
    rng: np.random.Generator | None = None,
    **style: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """A random 2D fluorescence image of nuclei and its instance labels.

    Returns (image, labels): image float32 in camera counts (offset included, not normalised); labels
    uint32, 0 = background and 1..N = nuclei. `style` overrides entries of `DEFAULT_STYLE` with a
    (lo, hi) range or a fixed value. The same seed (or the same generator state) gives the same output.
    """
    rng = _generator(seed, rng)
    return _synthesise(tuple(shape), np.ones(2), rng, _Style(rng, DEFAULT_STYLE, style))


def synthetic_nuclei_3d(
    shape: tuple[int, int, int] = (32, 128, 128),
    seed: int | None = None,
    *,
    rng: np.random.Generator | None = None,
    **style: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """A random 3D (Z, Y, X) stack of ellipsoidal, blobby nuclei and its instance labels.

    Like `synthetic_nuclei_2d`; the z step may be coarser than the pixel size (style "z_spacing") and the
    blur is stronger along z ("axial_blur"). Each 3D nucleus carries one id.
    """
    rng = _generator(seed, rng)
    st = _Style(rng, _STYLE_3D, style)
    return _synthesise(tuple(shape), np.array([st("z_spacing"), 1.0, 1.0]), rng, st)


_SAMPLE_STYLE = {
    "radius": 11.0, "radius_cv": 0.15, "coverage": 0.35, "dim_fraction": 0.05, "mitotic": 0.03, "blur": 1.0,
    "illumination": 0.15, "background": 0.1, "photons": 400.0, "gain": 4.0, "offset": 100.0,
}


def _to_uint16(image: np.ndarray) -> np.ndarray:
    return np.clip(np.round(image), 0, np.iinfo(np.uint16).max).astype(np.uint16)


def sample_image_2d() -> tuple[np.ndarray, np.ndarray]:
    """A fixed 256 x 256 sample image (uint16) with its labels (uint32), for napari sample data."""
    image, labels = synthetic_nuclei_2d((256, 256), seed=1, **_SAMPLE_STYLE)
    return _to_uint16(image), labels


def sample_stack_3d() -> tuple[np.ndarray, np.ndarray]:
    """A fixed (24, 192, 192) sample stack (uint16) with z step 2 pixels, and its labels (uint32)."""
    style = {**_SAMPLE_STYLE, "coverage": 0.2, "z_spacing": 2.0, "z_scale": 0.7}
    image, labels = synthetic_nuclei_3d((24, 192, 192), seed=1, **style)
    return _to_uint16(image), labels
