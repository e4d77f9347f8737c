"""Post-processing with torch operations gives the CPU path's labels (run here on the CPU, on CUDA when present)."""

import numpy as np
import pytest
import torch
from conftest import ThresholdNet, disc_image, two_touching_discs
from scipy import ndimage as ndi
from test_postprocess import _ideal_probabilities

from napari_unetseg import postprocess_torch
from napari_unetseg.checkpoint import Checkpoint, ModelInfo
from napari_unetseg.axes import parse_axes
from napari_unetseg.engine_settings import EngineSettings
from napari_unetseg.inference import PlanePredictor, predict_planes
from napari_unetseg.metrics import agreement
from napari_unetseg.models import resolve_model
from napari_unetseg.postprocess import probabilities_to_classes, probabilities_to_instances
from napari_unetseg.postprocess_torch import (
    classes_torch,
    compact_ids,
    connected_components,
    device_labels,
    instances_torch,
    resolve_postprocess,
)
from napari_unetseg.synthetic import sample_image_2d, synthetic_nuclei_2d

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _instances(probabilities: np.ndarray, device: str = "cpu", **options) -> np.ndarray:
    batch = torch.from_numpy(np.ascontiguousarray(probabilities)).to(device)
    return instances_torch(batch[None] if batch.ndim == 3 else batch, **options).cpu().numpy().astype(np.uint32)


@pytest.mark.parametrize("device", DEVICES)
def test_components_are_numbered_as_ndi_label_numbers_them(device):
    rng = np.random.default_rng(0)
    masks = ndi.gaussian_filter(rng.random((3, 40, 56)), (0, 1.5, 1.5)) > 0.5  # blobs, some touching the edges
    masks[1, 5:35, 20] = True  # a long thin line: many propagation steps
    labels = compact_ids(connected_components(torch.from_numpy(masks).to(device)), 1, 0.0).cpu().numpy()
    for plane, mask in zip(labels, masks):
        expected, count = ndi.label(mask)
        assert count > 3
        np.testing.assert_array_equal(plane, expected)  # the same ids, pixel for pixel: diagonal pixels stay apart


@pytest.mark.parametrize("device", DEVICES)
def test_touching_discs_give_the_cpu_labels_pixel_for_pixel(device):
    truth = two_touching_discs(64, 12)
    probabilities = _ideal_probabilities(truth)
    labels = _instances(probabilities, device)[0]
    np.testing.assert_array_equal(labels, probabilities_to_instances(probabilities))
    assert sorted(np.unique(labels)) == [0, 1, 2]


def test_smooth_probabilities_give_the_cpu_labels():
    planes = [synthetic_nuclei_2d((160, 192), seed=seed)[1] for seed in (3, 4, 5)]
    probabilities = np.stack([ndi.gaussian_filter(_ideal_probabilities(t), (0, 1, 1)) for t in planes])
    labels = _instances(probabilities)
    expected = np.stack([probabilities_to_instances(p) for p in probabilities])
    assert expected.max() > 20
    assert (labels == expected).mean() >= 0.999  # ids too: only pixels the two floods order differently move
    assert agreement(labels, expected, "instance")["same"]


def test_small_objects_follow_the_cpu_rule_and_ids_start_at_one_in_every_plane():
    plane = np.zeros((60, 60), np.uint32)
    plane[2:14, 2:14] = 1  # 144 px
    plane[20:32, 20:32] = 2
    plane[40:52, 40:52] = 3
    plane[40:44, 5:9] = 4  # 16 px: above min_size, below a quarter of the median
    plane[55:57, 55:57] = 5  # 4 px: below min_size
    flipped = plane[::-1, ::-1]
    probabilities = np.stack([np.stack([p == 0, p > 0, np.zeros_like(p)]) for p in (plane, flipped)]).astype(np.float32)
    labels = _instances(probabilities)
    for got, probs in zip(labels, probabilities):
        np.testing.assert_array_equal(got, probabilities_to_instances(probs))
        assert sorted(np.unique(got)) == [0, 1, 2, 3]
    assert labels[1][flipped == 3].min() == 1  # first in raster order in the flipped plane: id 1
    kept_all = _instances(probabilities, relative_min_size=0.0, min_size=1)
    np.testing.assert_array_equal(kept_all[0], probabilities_to_instances(probabilities[0], 0.5, 1, 0.0))
    assert kept_all[0].max() == 5 and kept_all[0][41, 6] == 3  # raster order: the 16 px square comes third


def test_class_maps_equal_the_cpu_arg_max_with_weights():
    rng = np.random.default_rng(1)
    probabilities = rng.dirichlet(np.ones(3), size=(2, 30, 40)).transpose(0, 3, 1, 2).astype(np.float32)
    weights = [1.0, 2.5, 0.5]
    got = classes_torch(torch.from_numpy(probabilities), weights).numpy()
    expected = np.stack([probabilities_to_classes(p, weights) for p in probabilities])
    np.testing.assert_array_equal(got, expected)
    labels = device_labels(list(torch.from_numpy(probabilities)), "semantic", weights)
    assert [plane.dtype for plane in labels] == [np.uint8, np.uint8]
    np.testing.assert_array_equal(np.stack(labels), expected)


def test_the_sample_image_meets_the_agreement_bar():
    checkpoint = resolve_model("nuclei")
    predictor = PlanePredictor(checkpoint, EngineSettings(device="cpu", precision="float32", backend="torch"))
    image, _ = sample_image_2d()
    probabilities = predictor.probabilities([predictor.prepare(image[None])])[0]
    expected = probabilities_to_instances(probabilities)
    labels = _instances(probabilities)[0]
    assert expected.max() > 30
    assert (labels == expected).mean() >= 0.995
    check = agreement(labels, expected, "instance")
    assert check["same"] and check["instance_f1"] >= 0.99, check


def test_the_predictor_post_processes_whole_batches_on_the_device_with_blank_planes_kept():
    stack = np.zeros((5, 64, 64), np.uint32)
    stack[:] = two_touching_discs(64, 12)
    stack[:, :, 31:33] = 0
    stack[3, 48:62, 2:16] = 3
    image = disc_image(stack)
    image[2] = 100  # a blank plane
    checkpoint = Checkpoint(ThresholdNet(), ModelInfo())
    results = {}
    for where in ("cpu", "device"):
        predictor = PlanePredictor(checkpoint, EngineSettings(device="cpu", batch_size=2, postprocess=where))
        assert predictor.postprocess == where
        planes = [p for batch in predict_planes(image, parse_axes(image.shape), predictor, list(np.ndindex(5)))
                  for p in batch]
        results[where] = np.stack([p.labels for p in planes])
    np.testing.assert_array_equal(results["device"], results["cpu"])
    assert results["device"].dtype == np.uint32
    assert [len(np.unique(p)) - 1 for p in results["device"]] == [2, 2, 0, 3, 2]


class _Runner:
    """A stand-in for FastModel: ThresholdNet's probabilities, on a device of any name."""

    def __init__(self, device: str) -> None:
        self.device = torch.device(device)
        self.network = ThresholdNet()

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.network(batch.float()), dim=1)


def test_auto_uses_the_device_on_cuda_only_when_the_probe_agrees(monkeypatch):
    probes = []

    def small_probe(*args, **kwargs):
        probes.append(probe(*args, size=96))
        return probes[-1]

    probe = postprocess_torch.device_postprocess_agrees
    monkeypatch.setattr(postprocess_torch, "device_postprocess_agrees", small_probe)
    runner, info = _Runner("cpu"), ModelInfo()
    assert resolve_postprocess("auto", runner, runner.network, "instance", info.normalization) == "cpu"
    assert resolve_postprocess("device", runner, runner.network, "instance", info.normalization) == "device"
    cuda = _Runner("cuda")  # only its name says CUDA: the probe runs on the CPU here
    assert resolve_postprocess("auto", cuda, cuda.network, "instance", info.normalization) == "device"
    assert probes == [True]  # the probe ran once, on CUDA only, and agreed
    assert resolve_postprocess("auto", cuda, cuda.network, "instance", info.normalization) == "device"
    assert resolve_postprocess("auto", cuda, cuda.network, "semantic", info.normalization) == "device"
    assert probes == [True]  # the verdict is kept per network; class maps need none
    monkeypatch.setattr(postprocess_torch, "device_postprocess_agrees", lambda *args, **kwargs: False)
    other = _Runner("cuda")
    assert resolve_postprocess("auto", other, other.network, "instance", info.normalization) == "cpu"
    with pytest.raises(ValueError, match="postprocess must be one of auto, cpu, device, got 'gpu'"):
        resolve_postprocess("gpu", runner, runner.network, "instance", info.normalization)
