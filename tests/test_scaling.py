"""Stacks larger than memory and more than one machine: streaming into zarr and dask.distributed.

One LocalCluster with two worker processes serves the module. The network is a hand-wired
U-Net that thresholds the image (conftest.threshold_unet), so every plane has real objects and ids
can be compared exactly.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import zarr

from napari_unetseg import io, outputs
from napari_unetseg.checkpoint import ModelInfo, save_checkpoint
from napari_unetseg.cli import main
from napari_unetseg.engine_settings import EngineSettings
from napari_unetseg.inference import segment
from napari_unetseg.io import create_labels_zarr, read_image

from conftest import blob_stack, out_of_memory_on, threshold_unet

distributed = pytest.importorskip("distributed")
from napari_unetseg.distributed import local_client, segment_distributed  # noqa: E402

pytestmark = pytest.mark.timeout(120)
CPU = EngineSettings(device="cpu")


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
        stack_store, out, model, client, CPU, planes_per_task=3, stitch_z=stitch, z_method="linking",
        progress=lambda done, total: seen.append((done, total)),
    )
    np.testing.assert_array_equal(out[:], expected)
    assert len(seen) == 3 and seen[-1] == (10, 10)  # 3 planes a task, rounded up to one batch of 4
    loads = [count - before[worker] for worker, count in client.run(model_loads).items()]
    assert 1 <= sum(loads) and max(loads) == 1  # 3 tasks, each worker loaded the model at most once


def spheres_in_slabs(monkeypatch) -> np.ndarray:
    """Nine spheres (radius 6, apart) at all depths of a stack, with a slab budget that cuts it into slabs
    (cores of one overlap, about one object diameter), so some spheres straddle slab boundaries."""
    from napari_unetseg import slabs

    z, y, x = np.indices((60, 48, 56))
    stack = np.full((60, 48, 56), 100, np.uint16)
    centres = [(cz, cy, cx) for cz in (8, 24, 40) for cy, cx in ((16, 16), (16, 40))]
    for cz, cy, cx in centres + [(cz + 8, 30, 28) for cz in (8, 24, 40)]:
        stack[(z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2 <= 36] = 1000
    monkeypatch.setattr(slabs, "SLAB_BUDGET_BYTES", 1_000_000)  # planned on the client (and by one process)
    return stack


def test_workers_give_the_single_process_3d_objects_slab_by_slab(tmp_path, client, model, monkeypatch):
    stack = spheres_in_slabs(monkeypatch)
    expected = segment(stack, model, CPU, stitch_z=True)  # consensus, in Z-slabs
    assert np.unique(expected).tolist() == list(range(10))  # one id per sphere, 1..N
    out = create_labels_zarr(tmp_path / "labels.zarr", expected.shape, expected.dtype)
    seen = []
    segment_distributed(stack, out, model, client, CPU, stitch_z=True,
                        progress=lambda done, total: seen.append((done, total)))
    np.testing.assert_array_equal(out[:], expected)
    assert len(seen) >= 3 and seen[-1] == (60, 60)  # a task per slab, counting the planes of its core


def test_a_killed_worker_numbering_3d_objects_is_rerun_without_harm(tmp_path, client, model, monkeypatch):
    stack = spheres_in_slabs(monkeypatch)
    expected = segment(stack, model, CPU, stitch_z=True)
    marks = tmp_path / "marks"
    marks.mkdir()
    out = create_labels_zarr(tmp_path / "labels.zarr", expected.shape, expected.dtype)
    # plane 30's first write is its slab's own ids, the second its numbers: the worker dies after that one
    segment_distributed(stack, KillOnce(out, marks, plane=30, on="write", nth=2), model, client, CPU, stitch_z=True)
    assert sorted(p.name for p in marks.iterdir()) == ["write-1", "write-2"]  # not written a third time
    np.testing.assert_array_equal(out[:], expected)


def test_workers_shrink_large_objects_as_one_process_does(tmp_path, client, model):
    """The client measures the objects' size once; every task rescales its planes by it."""
    yy, xx = np.mgrid[:192, :192]
    discs = ((yy - 60) ** 2 + (xx - 60) ** 2 <= 30**2) | ((yy - 130) ** 2 + (xx - 135) ** 2 <= 30**2)
    stack = np.stack([np.where(discs, 1000, 100)] * 6).astype(np.uint16)  # 60 px objects, 3x the model's
    expected = segment(stack, model, CPU)
    unscaled = segment(stack, model, CPU, diameter=None)
    assert not np.array_equal(expected, unscaled)  # the single process did rescale
    out = create_labels_zarr(tmp_path / "labels.zarr", expected.shape, expected.dtype)
    segment_distributed(stack, out, model, client, CPU, planes_per_task=2)
    np.testing.assert_array_equal(out[:], expected)


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


def test_a_worker_out_of_memory_halves_its_batch_and_gives_the_same_labels(tmp_path, model, monkeypatch):
    """The cluster path backs off as one process does (predict_with_backoff); workers in this process so the
    fake out-of-memory reaches them."""
    from distributed import Client

    from napari_unetseg.device import OutOfMemoryError
    from napari_unetseg.inference import PlanePredictor

    settings = CPU.with_changes(precision="float32")  # no bfloat16 probe runs the fake
    expected = segment(blob_stack(), model, settings)
    assert expected.max() == 20  # every bright disc found: labels that could be wrong
    calls: list[int] = []
    monkeypatch.setattr(PlanePredictor, "probabilities", out_of_memory_on(2, calls))
    out = create_labels_zarr(tmp_path / "labels.zarr", expected.shape, expected.dtype)
    with Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=":0") as client:
        # diameter None: the client's first pass (diameter "auto") would also meet the fake
        segment_distributed(blob_stack(), out, model, client, settings, diameter=None, planes_per_task=8)
        assert calls[:2] == [4, 4] and set(calls[2:]) == {2}  # halved, and the run went on
        np.testing.assert_array_equal(out[:], expected)

        def always(self, planes, should_stop=None):
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

        monkeypatch.setattr(PlanePredictor, "probabilities", always)
        with pytest.raises(OutOfMemoryError, match="even with batch size 1"):
            segment_distributed(blob_stack(), out, model, client, settings.with_changes(tile_size=512), diameter=None)


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
