"""The one segmentation engine (iter_segment): id offset, Z-linking through the output, out-of-memory
back-off; and the uncertainty generator. Stand-in networks make every expected label exact."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import ThresholdNet, disc_image, out_of_memory_on

from napari_unetseg.checkpoint import Checkpoint, ModelInfo
from napari_unetseg.device import OutOfMemoryError
from napari_unetseg.engine_settings import EngineSettings
from napari_unetseg.inference import PlanePredictor, SegmentationCancelled, iter_segment, segment
from napari_unetseg.postprocess import stitch_slices
from napari_unetseg.uncertainty import iter_uncertainty

CPU = EngineSettings(device="cpu")


def _threshold() -> Checkpoint:
    return Checkpoint(ThresholdNet(), ModelInfo(mode="instance"))


def _two_columns(depth: int = 6, size: int = 40) -> np.ndarray:
    """Labels of two discs that run through every slice: two 3D objects, each 2D in every plane."""
    yy, xx = np.mgrid[:size, :size]
    plane = np.zeros((size, size), np.uint32)
    plane[(yy - 20) ** 2 + (xx - 10) ** 2 <= 36] = 1
    plane[(yy - 20) ** 2 + (xx - 29) ** 2 <= 36] = 2
    return np.stack([plane] * depth)


def _objects(labels: np.ndarray) -> int:
    return len(np.unique(labels[labels > 0]))


def test_ids_start_after_the_offset():
    image = disc_image(_two_columns(depth=2))
    steps = list(iter_segment(image, _threshold(), CPU, id_offset=40))
    ids = np.unique(np.concatenate([p.labels[p.labels > 0] for s in steps for p in s.planes]))
    assert ids.tolist() == [41, 42, 43, 44]


@pytest.mark.parametrize("first", [0, 3, 5])
def test_z_linking_through_a_zarr_output_in_any_plane_order(first):
    zarr = pytest.importorskip("zarr")
    truth = _two_columns()
    image = disc_image(truth)
    order = [(first,)] + [(z,) for z in range(truth.shape[0]) if z != first]  # the slice on screen first
    out = zarr.zeros(truth.shape, chunks=(1, 40, 40), dtype=np.uint32)
    steps = list(iter_segment(image, _threshold(), CPU.with_changes(batch_size=1), plane_order=order, out=out,
                              link_z=True))
    linked = out[:]
    assert _objects(linked) == 2  # one id per column, where each plane alone has two objects of its own
    assert all(set(np.unique(plane[plane > 0])) == set(np.unique(linked[linked > 0])) for plane in linked)
    unlinked = np.zeros_like(linked)
    for step in iter_segment(image, _threshold(), CPU.with_changes(batch_size=1), plane_order=order, out=unlinked):
        pass
    assert _objects(unlinked) == 2 * truth.shape[0]
    np.testing.assert_array_equal(linked, stitch_slices(unlinked))  # what linking the whole stack gives
    assert steps[0].planes[0].index == (first,)  # the slice on screen is shown first (unlinked until it can be)
    assert {p.index for s in steps for p in s.planes} == {(z,) for z in range(truth.shape[0])}


def test_z_linking_needs_an_output():
    with pytest.raises(ValueError, match="needs an output array"):
        next(iter_segment(disc_image(_two_columns()), _threshold(), CPU, link_z=True))


def test_out_of_memory_halves_the_batch_and_goes_on(monkeypatch):  # float32: no bfloat16 probe runs the fake
    image = disc_image(_two_columns(depth=8))
    expected = segment(image, _threshold(), device="cpu", batch_size=4, precision="float32")
    calls: list[int] = []
    monkeypatch.setattr(PlanePredictor, "probabilities", out_of_memory_on(2, calls))
    out = np.zeros(expected.shape, np.uint32)
    steps = list(iter_segment(image, _threshold(), CPU.with_changes(precision="float32"), out=out))
    notes = [s.note for s in steps if s.note]
    assert notes == ["Out of memory on cpu: continuing with batch size 2."]
    assert calls[:2] == [4, 4] and set(calls[2:]) == {2}
    assert steps[-1].done == steps[-1].total == 8
    assert _objects(out) == _objects(expected) == 16
    np.testing.assert_array_equal(out > 0, expected > 0)


def test_segment_backs_off_too_and_fails_clearly_at_batch_one(monkeypatch, caplog):
    image = disc_image(_two_columns(depth=4))
    real = PlanePredictor.probabilities

    def needs_batch_one(self, planes, should_stop=None):
        if self.batch_size > 1:
            raise RuntimeError("out of memory")
        return real(self, planes, should_stop)

    monkeypatch.setattr(PlanePredictor, "probabilities", needs_batch_one)
    labels = segment(image, _threshold(), device="cpu", batch_size=4, precision="float32")
    assert _objects(labels) == 8
    assert "continuing with batch size 1" in caplog.text

    def always(self, planes, should_stop=None):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(PlanePredictor, "probabilities", always)
    with pytest.raises(OutOfMemoryError, match="even with batch size 1; try a smaller tile size or the CPU"):
        segment(image, _threshold(), device="cpu", batch_size=2, precision="float32")


def test_uncertainty_is_zero_on_blank_planes_and_high_only_on_object_rims():
    image = disc_image(_two_columns(depth=3)).astype(np.float32)
    image[1] = 7.0  # a blank plane: nothing to hesitate about
    steps = list(iter_uncertainty(image, _threshold(), CPU.with_changes(batch_size=2)))
    assert [s.done for s in steps] == [2, 3] and steps[-1].total == 3
    planes = dict(p for s in steps for p in s.planes)
    assert sorted(planes) == [(0,), (1,), (2,)]
    assert not planes[(1,)].any()
    entropy = planes[(0,)]
    assert entropy.dtype == np.float32 and 0 <= entropy.min() and entropy.max() <= 1
    assert entropy[20, 10] < 0.01 and entropy[0, 0] < 0.01  # sure inside an object and on the background


def test_3d_objects_report_progress_batch_by_batch_and_stop_when_asked():
    image = disc_image(_two_columns(depth=12))
    seen: list[tuple[int, int]] = []
    labels = segment(image, _threshold(), device="cpu", stitch_z=True, diameter=None, precision="float32",
                     progress=lambda done, total: seen.append((done, total)))
    assert _objects(labels) == 2
    # XY planes, then XZ and YZ planes every SIDE_STRIDE (2) rows and columns of 40, the last one too
    assert seen[-1] == (12 + 21 + 21, 12 + 21 + 21)
    assert len(seen) >= 8 and [d for d, _ in seen] == sorted(d for d, _ in seen)  # batches of up to 8 planes
    with pytest.raises(SegmentationCancelled):
        segment(image, _threshold(), device="cpu", stitch_z=True, diameter=None, precision="float32",
                should_stop=lambda: True)


def test_uncertainty_halves_the_batch_on_out_of_memory_and_gives_the_same_entropy(monkeypatch):
    image = disc_image(_two_columns(depth=6)).astype(np.float32)
    image[3] = 7.0  # a blank plane (zero entropy) among planes with some: a plane put in the wrong place shows
    settings = CPU.with_changes(batch_size=4, precision="float32")
    expected = dict(p for s in iter_uncertainty(image, _threshold(), settings) for p in s.planes)
    calls: list[int] = []
    monkeypatch.setattr(PlanePredictor, "probabilities", out_of_memory_on(1, calls))
    steps = list(iter_uncertainty(image, _threshold(), settings))
    assert [s.note for s in steps if s.note] == ["Out of memory on cpu: continuing with batch size 2."]
    assert calls == [4, 2, 2, 2] and [s.done for s in steps] == [0, 2, 4, 6]
    planes = dict(p for s in steps for p in s.planes)
    assert sorted(planes) == sorted(expected) == [(z,) for z in range(6)]
    assert [bool(expected[(z,)].any()) for z in range(6)] == [True, True, True, False, True, True]
    for index, plane in expected.items():
        np.testing.assert_allclose(planes[index], plane, atol=1e-6)

    def always(self, planes, should_stop=None):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(PlanePredictor, "probabilities", always)
    with pytest.raises(OutOfMemoryError, match="even with batch size 1"):
        list(iter_uncertainty(image, _threshold(), settings))
