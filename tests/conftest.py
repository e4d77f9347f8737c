"""Shared fixtures: tiny networks and checkpoints keep the suite fast."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_unetseg.checkpoint import ModelInfo, save_checkpoint
from napari_unetseg.model import UNet

#: The team data (see recipes/team_data.py): ``UNETSEG_TEAM_DATA``, else ``../shared/data`` beside the clone.
SHARED_DATA = Path(os.environ.get("UNETSEG_TEAM_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")


def tiny_unet(num_classes: int = 3, depth: int = 2, seed: int = 0, **kwargs) -> UNet:
    """A few-thousand-parameter UNet with deterministic random weights, in eval mode."""
    torch.manual_seed(seed)
    return UNet(num_classes=num_classes, base_channels=4, depth=depth, **kwargs).eval()


def write_raw_checkpoint(path: Path, model: UNet, info: dict) -> Path:
    """A checkpoint file written without :func:`save_checkpoint`'s checks (to test what loading refuses)."""
    payload = {"format": "napari-unetseg", "format_version": 1, "config": dict(model.config), "info": info,
               "state_dict": model.state_dict()}
    torch.save(payload, path)
    return path


@pytest.fixture
def tiny_instance_checkpoint(tmp_path: Path) -> Path:
    """A saved instance-mode checkpoint of a tiny random network."""
    return save_checkpoint(tmp_path / "tiny-instance.pt", tiny_unet(), ModelInfo(mode="instance", name="tiny"))


@pytest.fixture
def tiny_semantic_checkpoint(tmp_path: Path) -> Path:
    info = ModelInfo(mode="semantic", class_names=["membrane", "cell"], name="tiny-semantic")
    return save_checkpoint(tmp_path / "tiny-semantic.pt", tiny_unet(num_classes=2), info)


def two_touching_discs(size: int = 64, radius: int = 12) -> np.ndarray:
    """Labels 1 and 2: two discs whose edges touch in the middle of a ``size`` square."""
    yy, xx = np.mgrid[:size, :size]
    centre = size // 2
    labels = np.zeros((size, size), np.uint32)
    labels[(yy - centre) ** 2 + (xx - centre + radius) ** 2 <= radius**2] = 1
    labels[(yy - centre) ** 2 + (xx - centre - radius) ** 2 <= radius**2] = 2
    return labels


class ThresholdNet(UNet):
    """Stands in for a trained instance network: bright pixels are objects, their rim is boundary.

    Lets engine tests check labels exactly without training anything.
    """

    def __init__(self) -> None:
        super().__init__(num_classes=3, base_channels=1, depth=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        foreground = (x[:, :1] > 0.5).float()
        interior = -torch.nn.functional.max_pool2d(-foreground, 3, 1, 1)
        return torch.cat([1 - foreground, interior, foreground - interior], dim=1) * 10


def out_of_memory_on(call: int, calls: list[int]):
    """A stand-in for ``PlanePredictor.probabilities`` that runs out of memory on its ``call``-th call (from 1)
    and otherwise runs the real one; each call's batch size goes into ``calls``. Take it before patching."""
    from napari_unetseg.inference import PlanePredictor

    real = PlanePredictor.probabilities

    def probabilities(self, planes, should_stop=None):
        calls.append(self.batch_size)
        if len(calls) == call:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(self, planes, should_stop)

    return probabilities


def disc_image(labels: np.ndarray) -> np.ndarray:
    """A uint16 fluorescence-like image of ``labels``: bright objects on a dark background."""
    return np.where(labels > 0, 1000, 100).astype(np.uint16)


def threshold_unet(base_channels: int = 1, depth: int = 1) -> UNet:
    """A U-Net wired by hand to call pixels above 5/8 of the normalised range objects, with no boundary.

    Only channel 0 of the first and last blocks is used; every other weight is zero, so the
    network costs what a trained one of its size costs and finds every bright disc as one object.
    """
    net = UNet(num_classes=3, base_channels=base_channels, depth=depth, norm="none").eval()
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.zero_()
        for block in (net.inc, net.ups[-1].conv):  # conv, norm, relu, conv, norm, relu
            block[0].weight[0, 0, 1, 1] = 1.0
            block[3].weight[0, 0, 1, 1] = 1.0
        net.inc[0].bias[0] = -0.5  # relu(x - 0.5): 0 on background, up to 0.5 on objects
        net.head.weight[:, 0, 0, 0] = torch.tensor([-20.0, 20.0, 0.0])  # background, interior, boundary
        net.head.bias[:] = torch.tensor([2.5, -2.5, -10.0])
    return net


def blob_stack(planes: int = 10, size: int = 48) -> np.ndarray:
    """uint16 ``(planes, size, size)``: 0 to 4 bright discs per plane that drift through Z (no disc: a blank plane)."""
    yy, xx = np.mgrid[:size, :size]
    stack = np.full((planes, size, size), 100)
    centres = [(10, 10), (10, 36), (36, 10), (36, 36)]
    for z in range(planes):
        for k, (cy, cx) in enumerate(centres[: (z * 3) % 5]):
            stack[z][(yy - cy - z % 2) ** 2 + (xx - cx) ** 2 <= 36 + 4 * k] = 1000
    return stack.astype(np.uint16)


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch) -> Path:
    """Exported ONNX models and probe verdicts go to a new folder for each test, never the user's cache
    (nor another test's: each test starts cold), and not into the test's ``tmp_path``."""
    from napari_unetseg.cache import CACHE_ENV

    folder = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv(CACHE_ENV, str(folder))
    return folder
