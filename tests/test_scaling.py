"""Stacks larger than memory and more than one machine: streaming into zarr and dask.distributed.

One LocalCluster with two worker processes serves the module. The network is a hand-wired
U-Net that thresholds the image, so every plane has real objects and ids can be compared exactly.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import zarr

from napari_unetseg import io, outputs
from napari_unetseg.checkpoint import ModelInfo, save_checkpoint
from napari_unetseg.cli import main
from napari_unetseg.engine_settings import EngineSettings
from napari_unetseg.inference import segment
from napari_unetseg.io import create_labels_zarr, read_image
from napari_unetseg.model import UNet

distributed = pytest.importorskip("distributed")
from napari_unetseg.distributed import local_client, segment_distributed  # noqa: E402

pytestmark = pytest.mark.timeout(120)
CPU = EngineSettings(device="cpu")


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


@pytest.fixture(scope="module")
def client():
    with local_client(2) as client:
        yield client


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return save_checkpoint(tmp_path / "threshold.pt", threshold_unet(), ModelInfo(mode="instance", name="threshold"))


@pytest.fixture
def stack_store(tmp_path: Path) -> Path:
    """The blob stack as a zarr store, one chunk per plane."""
    image = blob_stack()
    path = tmp_path / "stack.zarr"
    zarr.create_array(store=str(path), shape=image.shape, chunks=(1, 48, 48), dtype=image.dtype)[:] = image
    return path


class KillOnce:
    """An array-like that kills the worker process the ``nth`` time plane ``plane`` is read or written.

    Counts go into files in ``marks`` (shared by all processes), so it kills once in the whole
    run, and never in the test process itself.
    """

    def __init__(self, array, marks: Path, plane: int, on: str, nth: int = 1) -> None:
        self.array, self.marks, self.plane, self.on, self.nth = array, marks, plane, on, nth
        self.shape, self.dtype, self.chunks = array.shape, array.dtype, getattr(array, "chunks", None)
        self.test_process = os.getpid()

    def _count(self, key, action: str) -> bool:
        """Record one ``action`` on the plane of ``key``; True when this one should kill."""
        if action != self.on or key[0] != self.plane or os.getpid() == self.test_process:
            return False
        seen = len(list(self.marks.glob(f"{action}-*"))) + 1
        (self.marks / f"{action}-{seen}").touch()
        return seen == self.nth

    def __getitem__(self, key):
        if self._count(key, "read"):
            os.kill(os.getpid(), signal.SIGKILL)
        return self.array[key]

    def __setitem__(self, key, value) -> None:
        self.array[key] = value
        if self._count(key, "write"):  # after writing: the rerun must not add the id offset again
            os.kill(os.getpid(), signal.SIGKILL)


def test_streamed_zarr_output_equals_in_memory(tmp_path, model):
    image = blob_stack()
    results = {}
    for stitch in (False, True):
        expected = segment(image, model, device="cpu", stitch_z=stitch)
        out = create_labels_zarr(tmp_path / f"out-{stitch}.zarr", expected.shape, expected.dtype)
        assert segment(image, model, device="cpu", stitch_z=stitch, out=out) is out
        np.testing.assert_array_equal(out[:], expected)
        results[stitch] = expected
    per_plane = [set(np.unique(plane)) - {0} for plane in results[False]]
    assert [len(ids) for ids in per_plane] == [0, 3, 1, 4, 2, 0, 3, 1, 4, 2]
    assert set().union(*per_plane) == set(range(1, 21)), "ids are unique and compact"
    objects_3d = np.unique(results[True])
    assert objects_3d.tolist() == list(range(len(objects_3d))) and len(objects_3d) > 1, "3D ids are 1..N"
    assert all(len(np.flatnonzero((results[True] == i).any(axis=(1, 2)))) >= 2 for i in objects_3d[1:])


def test_dask_input_streams_into_zarr(tmp_path, model):
    da = pytest.importorskip("dask.array")
    image = blob_stack()
    out = create_labels_zarr(tmp_path / "out.zarr", image.shape, np.uint32)
    segment(da.from_array(image, chunks=(1, 48, 48)), model, device="cpu", out=out)
    np.testing.assert_array_equal(out[:], segment(image, model, device="cpu"))


def model_loads() -> int:
    """How many times this worker process has loaded a model."""
    from napari_unetseg.distributed import _load_predictor

    return _load_predictor.cache_info().misses


@pytest.mark.parametrize("stitch", [False, True])
def test_two_workers_give_the_single_process_labels(tmp_path, client, model, stack_store, stitch):
    expected = segment(blob_stack(), model, device="cpu", stitch_z=stitch, z_method="linking")
    out = create_labels_zarr(tmp_path / "labels.zarr", expected.shape, expected.dtype)
    seen = []
    before = client.run(model_loads)
    segment_distributed(
        stack_store, out, model, client, CPU, planes_per_task=3, stitch_z=stitch,
        progress=lambda done, total: seen.append((done, total)),
    )
    np.testing.assert_array_equal(out[:], expected)
    assert len(seen) == 3 and seen[-1] == (10, 10)  # 3 planes a task, rounded up to one batch of 4
    loads = [count - before[worker] for worker, count in client.run(model_loads).items()]
    assert 1 <= sum(loads) and max(loads) == 1  # 3 tasks, each worker loaded the model at most once


def test_killed_workers_tasks_are_rerun(tmp_path, client, model):
    image = blob_stack()
    expected = segment(image, model, device="cpu")
    marks = tmp_path / "marks"
    marks.mkdir()
    out = create_labels_zarr(tmp_path / "labels.zarr", expected.shape, expected.dtype)
    segment_distributed(
        KillOnce(image, marks, plane=1, on="read"),  # dies while segmenting
        KillOnce(out, marks, plane=7, on="write", nth=2),  # dies after giving plane 7 its id offset
        model, client, CPU, planes_per_task=4,
    )
    assert sorted(p.name for p in marks.iterdir()) == ["read-1", "read-2", "write-1", "write-2", "write-3"]
    np.testing.assert_array_equal(out[:], expected)


def test_segment_on_a_scheduler_from_the_command_line(tmp_path, client, model, stack_store, capsys):
    single, spread = tmp_path / "single.tif", tmp_path / "spread.zarr"
    argv = ["segment", str(stack_store), "-m", str(model), "--device", "cpu", "--axes", "ZYX", "--stitch-z",
            "--z-method", "linking"]
    assert main([*argv, "-o", str(single), "-q"]) == 0
    assert main([*argv, "-o", str(spread), "--scheduler", client.scheduler.address]) == 0
    assert "10/10 planes" in capsys.readouterr().err
    labels = read_image(spread)
    assert isinstance(labels, zarr.Array) and labels.chunks == (1, 48, 48)
    np.testing.assert_array_equal(labels[:], read_image(single))


def test_workers_option_starts_a_local_cluster(tmp_path, model, stack_store, capsys):
    out = tmp_path / "labels.zarr"
    argv = ["segment", str(stack_store), "-o", str(out), "-m", str(model), "--device", "cpu", "--workers", "1"]
    assert main(argv) == 0
    assert "10/10 planes" in capsys.readouterr().err
    np.testing.assert_array_equal(read_image(out)[:], segment(blob_stack(), model, device="cpu"))


def test_unreachable_scheduler_is_a_one_line_error(tmp_path, model, stack_store, capsys, monkeypatch):
    import napari_unetseg.distributed as engine

    monkeypatch.setattr(engine, "CONNECT_TIMEOUT_S", 0.5)
    out = tmp_path / "labels.zarr"
    argv = ["segment", str(stack_store), "-o", str(out), "-m", str(model), "--scheduler", "tcp://127.0.0.1:9"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("unetseg: error: cannot reach the dask scheduler at tcp://127.0.0.1:9")
    assert err.count("\n") == 1
    assert not out.exists()


def test_cluster_options_without_dask_distributed(tmp_path, model, stack_store, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # as if it were not installed
    monkeypatch.delitem(sys.modules, "napari_unetseg.distributed")
    argv = ["segment", str(stack_store), "-o", str(tmp_path / "labels.zarr"), "-m", str(model), "--workers", "2"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "pip install 'napari-unetseg[distributed]'" in err and err.count("\n") == 1
    assert not (tmp_path / "labels.zarr").exists()


def test_output_format_follows_the_suffix_or_the_size(tmp_path, model, monkeypatch):
    ome = tmp_path / "cells.ome.zarr"
    group = zarr.open_group(str(ome), mode="w")
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{
        "axes": [{"name": n, "type": "space"} for n in "zyx"], "datasets": [{"path": "0"}, {"path": "1"}]
    }]}
    group.create_array("0", shape=(10, 48, 48), dtype=np.uint16)[:] = blob_stack()
    group.create_array("1", shape=(10, 24, 24), dtype=np.uint16)  # a lower level, never used
    expected = segment(blob_stack(), model, device="cpu")
    argv = ["segment", str(ome), "-m", str(model), "--device", "cpu", "-q"]

    assert main([*argv, "-o", str(tmp_path / "small")]) == 0  # a folder: small results become TIFF
    np.testing.assert_array_equal(read_image(tmp_path / "small" / "cells_labels.tif"), expected)
    monkeypatch.setattr(io, "LARGE_RESULT_BYTES", 0)
    monkeypatch.setattr(outputs, "LARGE_RESULT_BYTES", 0)
    assert main([*argv, "-o", str(tmp_path / "large")]) == 0  # ... and large ones zarr
    np.testing.assert_array_equal(read_image(tmp_path / "large" / "cells_labels.zarr")[:], expected)
    assert main([*argv, "-o", str(tmp_path / "named.tif")]) == 0  # a name decides: large, yet TIFF
    with tifffile.TiffFile(tmp_path / "named.tif") as tif:
        assert len(tif.pages) == 10 and np.array_equal(tif.asarray(), expected)
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert leftovers == ["cells.ome.zarr", "large", "named.tif", "small", "threshold.pt"]
