"""Object size (size.py): the diameter measured from a first pass, and planes shrunk and labels resized back."""

import numpy as np
import pytest

from napari_unetseg.axes import parse_axes, read_plane
from napari_unetseg.checkpoint import Checkpoint, ModelInfo
from napari_unetseg.engine_settings import EngineSettings
from napari_unetseg.inference import PlanePredictor
from napari_unetseg.size import (
    DEFAULT_MODEL_DIAMETER, ZoomedImage, equivalent_diameter, measure_diameter, model_diameter, resize_labels,
    shrink_factor,
)

from conftest import ThresholdNet, disc_image

CPU = EngineSettings(device="cpu", precision="float32", backend="torch")


def _sides_seen(image, diameter) -> tuple[np.ndarray, set[int]]:
    """Labels of ``image`` from :class:`ThresholdNet`, and the sides of the planes the network was given."""
    from napari_unetseg.inference import segment

    sides: set[int] = set()

    class SeeingNet(ThresholdNet):  # the engine may copy the network; the set stays this one
        def forward(self, x):
            sides.add(int(x.shape[-1]))
            return super().forward(x)

    labels = segment(image, Checkpoint(SeeingNet(), ModelInfo(mode="instance")), CPU, diameter=diameter)
    return labels, sides


def _discs(size: int, radius: int, centres) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    labels = np.zeros((size, size), np.uint32)
    for k, (y, x) in enumerate(centres, start=1):
        labels[(yy - y) ** 2 + (xx - x) ** 2 <= radius**2] = k
    return labels


def test_only_objects_well_above_the_models_size_shrink_the_image():
    assert shrink_factor(60.0, 20.0) == pytest.approx(1 / 3)
    assert shrink_factor(30.0, 20.0) == 1.0  # 1.5x: kept
    assert shrink_factor(8.0, 20.0) == 1.0  # small objects are never enlarged
    assert shrink_factor(None, 20.0) == 1.0
    assert model_diameter(None) == DEFAULT_MODEL_DIAMETER and model_diameter(42.0) == 42.0


def test_the_equivalent_diameter_of_discs_is_their_diameter():
    labels = _discs(128, 10, [(30, 30), (90, 90), (30, 95)])
    assert equivalent_diameter([labels]) == pytest.approx(20.0, rel=0.05)
    assert equivalent_diameter([np.zeros((8, 8), np.uint32)]) is None


def test_the_diameter_is_measured_on_the_bright_planes_of_a_stack():
    big = disc_image(_discs(160, 25, [(45, 45), (115, 110)]))
    dim = np.full_like(big, 100)  # out-of-focus planes: nothing to measure there
    stack = np.stack([dim, dim, big, big, dim])
    predictor = PlanePredictor(Checkpoint(ThresholdNet(), ModelInfo(mode="instance")), CPU)
    layout = parse_axes(stack.shape, "ZYX")
    diameter = measure_diameter(stack, layout, predictor.prepare, predictor.probabilities, predictor.labels)
    assert diameter == pytest.approx(50.0, rel=0.1)
    blank = np.full((2, 32, 32), 7, np.uint16)
    assert measure_diameter(blank, parse_axes(blank.shape, "ZYX"), predictor.prepare,
                            predictor.probabilities, predictor.labels) is None


def test_a_zoomed_image_reads_shrunk_planes_and_keeps_channels():
    image = np.zeros((3, 2, 40, 60), np.uint16)  # Z, C, Y, X
    image[1, 0, 10:30, 20:40] = 500
    layout = parse_axes(image.shape, "ZCYX")
    zoomed = ZoomedImage(image, layout, 0.5)
    assert zoomed.shape == (3, 2, 20, 30)
    plane = read_plane(zoomed, layout, (1,))
    assert plane.shape == (2, 20, 30)
    assert plane[0, 5:15, 10:20].min() == pytest.approx(500) and plane[1].max() == 0


def test_labels_resized_back_keep_every_object_and_the_shape():
    small = _discs(40, 6, [(10, 10), (30, 28)])
    large = resize_labels(small, (100, 100))
    assert large.shape == (100, 100) and set(np.unique(large)) == {0, 1, 2}
    assert np.array_equal(resize_labels(large, (40, 40)), small)


def test_read_plane_reads_only_the_window():
    reads = []

    class Recording(np.ndarray):
        def __getitem__(self, selector):
            reads.append(selector)
            return np.asarray(self)[selector]

    image = np.arange(4 * 50 * 50).reshape(4, 50, 50).view(Recording)
    plane = read_plane(image, parse_axes(image.shape, "ZYX"), (2,), (slice(10, 20), slice(5, 25)))
    assert plane.shape == (1, 10, 20) and plane[0, 0, 0] == 2 * 2500 + 10 * 50 + 5
    assert reads == [(2, slice(10, 20), slice(5, 25))]


def test_plan_size_measures_instance_models_only_and_refuses_a_bad_diameter():
    from napari_unetseg.size import plan_size

    image = disc_image(_discs(160, 25, [(45, 45), (115, 110)]))
    layout = parse_axes(image.shape, "YX")
    finder = PlanePredictor(Checkpoint(ThresholdNet(), ModelInfo(mode="instance")), CPU)
    measured = plan_size(image, layout, finder, "auto")
    assert measured.diameter == pytest.approx(50.0, rel=0.1) and measured.zoom == pytest.approx(20 / measured.diameter)
    assert plan_size(image, layout, finder, 60).zoom == pytest.approx(1 / 3)
    assert not plan_size(image, layout, finder, None).rescales
    classes = ModelInfo(mode="semantic", class_names=["a", "b", "c"])
    semantic = PlanePredictor(Checkpoint(ThresholdNet(), classes), CPU)
    assert plan_size(image, layout, semantic, 60) == plan_size(image, layout, semantic, "auto")
    assert not plan_size(image, layout, semantic, 60).rescales
    with pytest.raises(ValueError, match="diameter must be positive"):
        plan_size(image, layout, finder, -3)


def test_segment_shrinks_planes_of_large_objects_and_gives_labels_at_the_images_scale():
    from napari_unetseg.metrics import object_matching

    truth = _discs(160, 25, [(45, 45), (115, 110)])
    image = disc_image(truth)
    labels, sides = _sides_seen(image, "auto")
    assert labels.shape == truth.shape and labels.max() == 2
    assert object_matching(labels, truth, thresholds=(0.9,))["f1"] == 1.0  # both discs, IoU > 0.9
    # measured at half resolution (80 px), then run shrunk so the 50 px discs are the model's 20 px
    shrunk = sides - {80}
    assert 80 in sides and len(shrunk) == 1 and 60 <= shrunk.pop() <= 70  # 160 * 20 / (50 +- 10 %)
    assert _sides_seen(image, None)[1] == {160}
    assert _sides_seen(image, 80)[1] == {40}
    small = disc_image(_discs(160, 8, [(45, 45), (115, 110)]))
    assert _sides_seen(small, "auto")[1] == {80, 160}  # 16 px objects: measured, then kept at their scale
