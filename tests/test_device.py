"""Device choice and memory fitting, in the one module that handles devices."""

import pytest
import torch

from napari_unetseg import device as dev


def test_auto_picks_the_fastest_available_and_cpu_always_works():
    assert dev.get_device("auto").type == dev.available_devices()[0]
    assert dev.available_devices()[-1] == "cpu"
    assert dev.get_device("cpu") == torch.device("cpu")


def test_missing_gpu_is_explained(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(dev, "_mps_available", lambda: False)
    report = dev.explain_devices()
    assert report.devices == ["cpu"]
    assert "No GPU" in report.why_no_gpu and "No GPU" in report.summary()
    with pytest.raises(dev.DeviceUnavailableError, match="'cuda' is not available: No GPU"):
        dev.get_device("cuda")


def test_cpu_keeps_the_requested_sizes():
    cpu = torch.device("cpu")
    assert dev.fit_to_memory(cpu, 16, 8, 1024) == (8, 1024)
    assert dev.fit_to_memory(cpu, 16, None, 1024) == (dev.CPU_BATCH_SIZE, 1024)


def test_gpu_batch_and_tile_shrink_to_free_memory(monkeypatch):
    gpu = torch.device("cuda")
    per_tile = dev.activation_bytes(16, 1024)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (int(per_tile * 2 * 5.5), 10**12))
    assert dev.fit_to_memory(gpu, 16, None, 1024) == (5, 1024)
    assert dev.fit_to_memory(gpu, 16, 3, 1024) == (3, 1024)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (per_tile // 2, 10**12))
    assert dev.fit_to_memory(gpu, 16, 8, 1024) == (1, 512)  # a 1024 tile needs 4x the half of free memory
