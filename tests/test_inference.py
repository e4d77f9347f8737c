"""The inference engine: shapes, dtypes, odd values, tiling, progress and stop."""

import numpy as np
import pytest

from napari_unetseg.checkpoint import Checkpoint, ModelInfo
from napari_unetseg.axes import parse_axes
from napari_unetseg.engine_settings import EngineSettings
from napari_unetseg.inference import PlanePredictor, SegmentationCancelled, iter_segment, segment

from conftest import ThresholdNet, disc_image, tiny_unet, two_touching_discs


def _checkpoint(mode="instance", **kwargs) -> Checkpoint:
    classes = 3 if mode == "instance" else 2
    names = ["background", "interior", "boundary"] if mode == "instance" else ["a", "b"]
    return Checkpoint(tiny_unet(num_classes=classes, **kwargs), ModelInfo(mode=mode, class_names=names))


def _blobs(shape, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(100, 20, size=shape).astype(np.float32)


def _discs(planes: int = 1, size: int = 32) -> np.ndarray:
    """Planes of bright discs that :class:`ThresholdNet` segments into objects (``(planes, size, size)``)."""
    return disc_image(np.stack([two_touching_discs(size, radius=size // 5)] * planes))


def _objects_found(checkpoint: Checkpoint, image: np.ndarray) -> np.ndarray:
    """The reference labels for a comparison, checked to hold objects (a comparison of two empty results proves nothing)."""
    labels = segment(image, checkpoint, device="cpu")
    assert labels.max() > 0
    return labels


@pytest.mark.parametrize(
    "shape, axes, expected",
    [
        ((40, 50), None, (40, 50)),
        ((3, 40, 50), None, (3, 40, 50)),
        ((2, 3, 24, 20), None, (2, 3, 24, 20)),
        ((24, 20, 3), None, (24, 20)),
        ((2, 24, 20, 3), None, (2, 24, 20)),
        ((2, 24, 20), "CYX", (24, 20)),
        ((3, 2, 24, 20), "ZCYX", (3, 24, 20)),
        ((5, 7), "YX", (5, 7)),
    ],
)
def test_output_has_the_image_shape_without_channels(shape, axes, expected):
    labels = segment(_blobs(shape), _checkpoint(), axes=axes, device="cpu")
    assert labels.shape == expected
    assert labels.dtype == np.uint32


def test_axes_inference_and_checks():
    assert parse_axes((10, 10)).axes == "YX"
    assert parse_axes((4, 10, 10)).axes == "ZYX"
    assert parse_axes((2, 4, 10, 10)).axes == "TZYX"
    assert parse_axes((10, 10, 3)).axes == "YXC"
    with pytest.raises(ValueError, match="name 2 axes"):
        parse_axes((4, 10, 10), "YX")
    with pytest.raises(ValueError, match="'Q' is not an axis letter; use T, Z, C, Y, X"):
        parse_axes((10, 10), "QYX")  # the letter first, not the count
    with pytest.raises(ValueError, match="'Q', 'W' are not axis letters"):
        parse_axes((4, 10, 10), "QWYX")
    with pytest.raises(ValueError, match="include Y and X"):
        parse_axes((4, 10, 10), "ZYZ")
    with pytest.raises(ValueError, match="at least 2"):
        parse_axes((10,))
    with pytest.raises(ValueError, match="cannot infer"):
        parse_axes((2, 2, 2, 2, 10, 10))


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.int32, np.float32, np.float64])
def test_any_numeric_dtype_gives_the_same_labels(dtype):
    base = (_discs(2) // 10).astype(np.int64)  # 10 and 100: fits every dtype
    checkpoint = Checkpoint(ThresholdNet(), ModelInfo())
    reference = _objects_found(checkpoint, base.astype(np.float32))
    assert np.array_equal(segment(base.astype(dtype), checkpoint, device="cpu"), reference)


def test_nan_and_inf_do_not_poison_a_plane():
    image = _blobs((32, 32))
    clean = segment(image, _checkpoint("semantic"), device="cpu")
    dirty = image.copy()
    dirty[3, 4] = np.nan
    dirty[10, 10] = np.inf
    dirty[20, 5] = -np.inf
    labels = segment(dirty, _checkpoint("semantic"), device="cpu")
    assert set(np.unique(labels)) <= {1, 2}
    far = np.ones_like(labels, bool)
    far[:26, :20] = False  # changed pixels only influence their neighbourhood
    assert np.array_equal(labels[far], clean[far])


def test_constant_and_empty_planes_give_background():
    image = _blobs((3, 32, 32))
    image[1] = 7.0
    image[2] = np.nan
    for mode in ("instance", "semantic"):
        labels = segment(image, _checkpoint(mode), device="cpu")
        assert not labels[1].any() and not labels[2].any()


def test_instance_ids_are_unique_across_planes():
    planes = np.zeros((4, 48, 48), np.uint32)
    for z in range(4):
        planes[z, 4 : 14 + z, 4:20] = 1
        planes[z, 30:40, 25 + z : 45] = 2
    labels = segment(disc_image(planes), Checkpoint(ThresholdNet(), ModelInfo()), device="cpu", batch_size=3)
    per_plane = [set(np.unique(p)) - {0} for p in labels]
    assert [len(ids) for ids in per_plane] == [2, 2, 2, 2]
    assert len(set().union(*per_plane)) == 8


def test_touching_objects_end_to_end_and_z_stitching():
    discs = two_touching_discs(64, 12)
    gap = discs.copy()
    gap[:, 31:33] = 0  # the paper's thin gap between touching objects
    stack = np.stack([gap, gap, gap])
    checkpoint = Checkpoint(ThresholdNet(), ModelInfo())
    flat = segment(disc_image(stack), checkpoint, device="cpu")
    assert len(np.unique(flat)) == 7  # background + 2 objects in each of 3 slices
    linked = segment(disc_image(stack), checkpoint, device="cpu", stitch_z=True)
    assert len(np.unique(linked)) == 3
    assert linked[0, 32, 20] == linked[2, 32, 20] != linked[1, 32, 44]


@pytest.mark.parametrize("padding, depth, tile", [("same", 2, 48), ("same", 3, 64), ("valid", 2, 80)])
def test_tiled_probabilities_equal_untiled(padding, depth, tile):
    checkpoint = _checkpoint(depth=depth, padding=padding)
    plane = np.random.default_rng(2).random((1, 150, 97), dtype=np.float32)
    settings = EngineSettings(device="cpu", batch_size=3, tile_size=tile, precision="float32")
    tiled_predictor = PlanePredictor(checkpoint, settings)
    assert len(tiled_predictor.plan(150, 97).tiles) > 4
    tiled = tiled_predictor.probabilities([plane])[0]
    whole_predictor = PlanePredictor(checkpoint, EngineSettings(device="cpu", tile_size=4096, precision="float32"))
    assert len(whole_predictor.plan(150, 97).tiles) == 1
    whole = whole_predictor.probabilities([plane])[0]
    assert tiled.shape == whole.shape == (3, 150, 97)
    np.testing.assert_allclose(tiled, whole, atol=1e-5)


def test_progress_after_each_batch_and_stop_within_one_batch():
    image = _blobs((10, 24, 24))
    calls = []
    segment(image, _checkpoint(), device="cpu", batch_size=3, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(3, 10), (6, 10), (9, 10), (10, 10)]

    seen = []
    with pytest.raises(SegmentationCancelled):
        segment(
            image, _checkpoint(), device="cpu", batch_size=2,
            progress=lambda d, t: seen.append(d), should_stop=lambda: len(seen) >= 2,
        )
    assert seen == [2, 4]


def test_iter_segment_follows_a_requested_plane_order():
    image = _blobs((5, 16, 16))
    settings = EngineSettings(device="cpu", batch_size=1)
    steps = list(iter_segment(image, _checkpoint(), settings, plane_order=[(3,), (0,)]))
    assert [p.index for s in steps for p in s.planes] == [(3,), (0,)]
    assert steps[-1].done == steps[-1].total == 2


class _CountingArray:
    """An array-like that records which planes were read, like a lazy zarr or dask array."""

    def __init__(self, data):
        self.data, self.shape, self.dtype, self.reads = data, data.shape, data.dtype, []

    def __getitem__(self, key):
        self.reads.append(key)
        return self.data[key]


def test_lazy_arrays_are_read_one_plane_at_a_time():
    lazy = _CountingArray(_blobs((2, 3, 16, 16)))
    segment(lazy, _checkpoint(), device="cpu", diameter=None)
    assert len(lazy.reads) == 6
    assert all(isinstance(k[0], int) and isinstance(k[1], int) for k in lazy.reads)
    # measuring the objects' size first reads every plane once more, still one at a time
    measured = _CountingArray(_blobs((2, 3, 16, 16)))
    segment(measured, _checkpoint(), device="cpu")
    assert len(measured.reads) == 12
    assert all(isinstance(k[0], int) and isinstance(k[1], int) for k in measured.reads)


def test_dask_input():
    da = pytest.importorskip("dask.array")
    image = _discs(3)
    checkpoint = Checkpoint(ThresholdNet(), ModelInfo())
    expected = _objects_found(checkpoint, image)
    assert np.array_equal(segment(da.from_array(image, chunks=(1, 32, 32)), checkpoint, device="cpu"), expected)


def test_multichannel_models_and_channel_mismatch():
    image = _blobs((2, 24, 24))
    two_channel = _checkpoint(in_channels=2)
    assert segment(image, two_channel, axes="CYX", device="cpu").shape == (24, 24)
    with pytest.raises(ValueError, match="expects 2 channel"):
        segment(image[0], two_channel, device="cpu")


def test_unknown_device_is_refused():
    # the settings refuse it before any work (EngineSettings checks every front's values)
    with pytest.raises(ValueError, match="device must be one of auto, cuda, mps, cpu .*got 'tpu'"):
        segment(_blobs((8, 8)), _checkpoint(), device="tpu")


def test_engine_settings_and_keyword_overrides_are_one_thing():
    image = disc_image(np.stack([two_touching_discs(48, 8)] * 2))
    checkpoint = Checkpoint(ThresholdNet(), ModelInfo())
    settings = EngineSettings(device="cpu", batch_size=1, precision="float32")
    expected = segment(image, checkpoint, settings)
    assert expected.max() == 4  # two discs in each of two planes
    np.testing.assert_array_equal(segment(image, checkpoint, device="cpu", batch_size=1, precision="float32"), expected)
    np.testing.assert_array_equal(segment(image, checkpoint, settings.with_changes(batch_size=4), batch_size=1),
                                  expected)
    with pytest.raises(TypeError, match="not an engine setting: batch"):
        segment(image, checkpoint, batch=2)
