"""Bad input and faults (issue 13): a clear message every time, nothing lost, nothing hangs.

Each test stands for a class of failure, tried through the command line (``main([...])``, one
``unetseg: error:`` line and exit status 2) and the Python API, on tiny arrays.
"""

from __future__ import annotations

import errno
import os
import pickle
import re
import signal
import subprocess
import sys
import textwrap
import tracemalloc
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from napari_unetseg import io as unetseg_io
from napari_unetseg.checkpoint import Checkpoint, CheckpointError, ModelInfo, load_checkpoint, save_checkpoint
from napari_unetseg.cli import main
from napari_unetseg.inference import segment
from napari_unetseg.io import read_image, write_labels
from napari_unetseg.metrics import evaluate
from napari_unetseg.normalize import normalize_plane
from napari_unetseg.synthetic import synthetic_nuclei_2d
from napari_unetseg.training import Trainer, TrainConfig, train

from conftest import ThresholdNet, tiny_unet, two_touching_discs, write_raw_checkpoint

FAST = {"iterations": 1, "patch_size": 32, "batch_size": 1, "validation_fraction": 0.0, "device": "cpu"}


def error_line(capsys: pytest.CaptureFixture) -> str:
    """All of stderr, checked to be one ``unetseg: error:`` line (and nothing on stdout)."""
    out, err = capsys.readouterr()
    assert err.startswith("unetseg: error: ") and err.count("\n") == 1 and out == "", (out, err)
    return err


def threshold_checkpoint() -> Checkpoint:
    """A stand-in instance model that finds bright objects: labels without training."""
    return Checkpoint(ThresholdNet(), ModelInfo(mode="instance"))


@pytest.fixture
def painted(tmp_path: Path) -> dict[str, Path]:
    """A small image and its annotation (1 = background, 2, 3 = two objects) as TIFFs."""
    objects = two_touching_discs(64, 12)
    image = np.where(objects > 0, 1000, 100).astype(np.uint16)
    paths = {"image": tmp_path / "image.tif", "labels": tmp_path / "labels.tif"}
    tifffile.imwrite(paths["image"], image)
    tifffile.imwrite(paths["labels"], np.where(objects > 0, objects + 1, 1).astype(np.uint8))
    return paths


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` and its bytes."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- 1. messages, not tracebacks


def test_a_boolean_image_is_segmented_as_0_1(tmp_path, tiny_instance_checkpoint, capsys):
    mask = two_touching_discs(48, 10) > 0
    checkpoint = threshold_checkpoint()
    np.testing.assert_array_equal(segment(mask, checkpoint, device="cpu"),
                                  segment(mask.astype(np.uint8), checkpoint, device="cpu"))
    assert segment(mask, checkpoint, device="cpu").max() >= 1
    assert normalize_plane(mask).max() == pytest.approx(1.0)
    tifffile.imwrite(tmp_path / "mask.tif", mask)
    out = tmp_path / "mask_labels.tif"
    model = str(tiny_instance_checkpoint)
    assert main(["segment", str(tmp_path / "mask.tif"), "-o", str(out), "-m", model, "--device", "cpu"]) == 0
    assert read_image(out).shape == mask.shape


def test_a_complex_image_is_refused_by_name(tmp_path, tiny_instance_checkpoint, capsys):
    image = np.ones((32, 32), np.complex64)
    with pytest.raises(ValueError, match="complex"):
        segment(image, threshold_checkpoint(), device="cpu")
    with pytest.raises(ValueError, match="complex"):
        train(image, np.ones((32, 32), np.uint8), **FAST)
    distributed = pytest.importorskip("napari_unetseg.distributed")
    with pytest.raises(ValueError, match="complex"):  # refused before any task is sent
        distributed.segment_distributed(image, None, tiny_instance_checkpoint, client=None)
    tifffile.imwrite(tmp_path / "fft.tif", image)
    out = tmp_path / "fft_labels.tif"
    assert main(["segment", str(tmp_path / "fft.tif"), "-o", str(out), "-m", str(tiny_instance_checkpoint)]) == 2
    assert "fft.tif is complex-valued" in error_line(capsys)
    assert not out.exists()


def test_a_plain_list_or_a_tensor_is_refused_with_a_type_error():
    with pytest.raises(TypeError, match="got list.*numpy.asarray"):
        segment([[0, 1], [1, 0]], threshold_checkpoint(), device="cpu")
    with pytest.raises(TypeError, match="torch.float32, not a numpy dtype.*numpy.asarray"):
        segment(torch.ones(32, 32), threshold_checkpoint(), device="cpu")


@pytest.mark.parametrize(
    "normalization, field",
    [({"low": "1", "high": 99.8}, "low='1'"), ({"low": 1.0, "high": float("nan")}, "high=nan"),
     ({"low": 99.0, "high": 1.0}, "low < high"), ({"low": None, "high": 99.8}, "low=None"),
     ("percentiles", "mapping")],
)
def test_a_checkpoint_with_a_bad_normalisation_is_named_at_load(tmp_path, normalization, field, capsys, painted):
    info = {**asdict(ModelInfo()), "normalization": normalization}
    path = write_raw_checkpoint(tmp_path / "odd.pt", tiny_unet(), info)
    with pytest.raises(CheckpointError, match="odd.pt: normalization") as caught:
        load_checkpoint(path)
    assert field in str(caught.value)
    assert main(["segment", str(painted["image"]), "-o", str(tmp_path / "out.tif"), "-m", str(path)]) == 2
    assert "odd.pt: normalization" in error_line(capsys)
    assert not (tmp_path / "out.tif").exists()


@pytest.mark.parametrize(
    "field, value, message",
    [("mode", "panoptic", "unusable metadata (mode must be one of"), ("colour", "red", "unusable metadata"),
     ("class_names", "ab", "class_names must be a list of names")],
)
def test_other_bad_metadata_is_named_at_load(tmp_path, field, value, message):
    path = write_raw_checkpoint(tmp_path / "odd.pt", tiny_unet(), {**asdict(ModelInfo()), field: value})
    with pytest.raises(CheckpointError, match=f"odd.pt: {re.escape(message)}"):
        load_checkpoint(path)


@pytest.mark.parametrize("weights", [[0.5, 0.3, 0.2], [0.5], [0.5, "x"], [0.5, -1.0]])
def test_decision_weights_that_do_not_fit_the_classes_are_blamed_on_the_checkpoint(tmp_path, weights, capsys, painted):
    info = {**asdict(ModelInfo(mode="semantic", class_names=["membrane", "cell"])), "decision_weights": weights}
    path = write_raw_checkpoint(tmp_path / "sem.pt", tiny_unet(num_classes=2), info)
    with pytest.raises(CheckpointError, match="sem.pt: decision_weights"):
        load_checkpoint(path)
    assert main(["segment", str(painted["image"]), "-o", str(tmp_path / "out.tif"), "-m", str(path)]) == 2
    assert "sem.pt: decision_weights" in error_line(capsys)
    in_memory = Checkpoint(tiny_unet(num_classes=2), ModelInfo(**info))  # built without loading a file
    with pytest.raises(ValueError, match="decision_weights"):
        segment(np.ones((32, 32), np.float32), in_memory, device="cpu")
    with pytest.raises(ValueError, match="decision_weights"):  # and such a checkpoint is never written
        save_checkpoint(tmp_path / "new.pt", tiny_unet(num_classes=2),
                        ModelInfo(mode="semantic", class_names=["membrane", "cell"], decision_weights=weights))
    assert not (tmp_path / "new.pt").exists()


# ---------------------------------------------------------------- 2. no hangs: work follows the objects, not the ids


@pytest.mark.timeout(300)
@pytest.mark.parametrize("dtype, base", [(np.int32, 2**31 - 10), (np.uint32, 2**32 - 10), (np.uint64, 2**64 - 10)])
def test_training_with_huge_object_ids_never_allocates_by_the_largest_id(dtype, base):
    objects = two_touching_discs(64, 12)
    annotation = np.where(objects > 0, objects.astype(np.uint64) + (base - 1), 1).astype(dtype)
    image = np.where(objects > 0, 1000, 100).astype(np.uint16)
    tracemalloc.start()
    try:
        trainer = Trainer(image, annotation, None, TrainConfig(**FAST))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 << 20, f"{peak / 2**20:.0f} MiB for a 64 x 64 annotation"  # a bincount by id needs GiBs
    assert np.array_equal(annotation, np.where(objects > 0, objects.astype(np.uint64) + (base - 1), 1).astype(dtype))
    assert sorted(trainer.data["pixels_per_label"]) == ["1", "2", "3"]  # two objects, however they are numbered
    assert len(list(trainer.steps())) == 1


@pytest.mark.timeout(300)
def test_the_train_command_with_ids_near_2_31_finishes(tmp_path, painted, capsys):
    objects = two_touching_discs(64, 12).astype(np.int64)
    tifffile.imwrite(painted["labels"], np.where(objects > 0, objects + 2**31 - 5, 1).astype(np.uint32))
    out = tmp_path / "big-ids.pt"
    argv = ["train", str(painted["image"]), str(painted["labels"]), "-o", str(out), "--iterations", "1",
            "--device", "cpu", "-q"]
    assert main(argv) == 0, capsys.readouterr().err
    assert load_checkpoint(out).info.training["iterations"] == 1


def test_semantic_labels_beyond_the_class_range_are_refused():
    annotation = np.ones((32, 32), np.int32)
    annotation[:8] = 2**31 - 1
    with pytest.raises(ValueError, match="classes 1..255"):
        Trainer(np.ones((32, 32), np.float32), annotation, None, TrainConfig(mode="semantic", **FAST))


# ---------------------------------------------------------------- 3. no command writes over its inputs


@pytest.mark.parametrize("target", ["image", "labels", "init", "image-symlink", "image-hardlink"])
def test_train_never_writes_over_an_input(tmp_path, painted, tiny_instance_checkpoint, target, capsys):
    output = {"image": painted["image"], "labels": painted["labels"], "init": tiny_instance_checkpoint}.get(target)
    if output is None:
        output = tmp_path / f"{target}.pt"
        (output.symlink_to if target.endswith("symlink") else output.hardlink_to)(painted["image"])
    before = snapshot(tmp_path)
    argv = ["train", str(painted["image"]), str(painted["labels"]), "-o", str(output), "--overwrite",
            "--init", str(tiny_instance_checkpoint), "--iterations", "1", "--device", "cpu"]
    assert main(argv) == 2
    assert "would overwrite the input" in error_line(capsys)
    assert snapshot(tmp_path) == before


def test_train_never_writes_over_the_built_in_model_it_starts_from(painted, capsys):
    from napari_unetseg.models import resolve_model

    shipped = Path(resolve_model("nuclei").path)
    original = shipped.read_bytes()
    argv = ["train", str(painted["image"]), str(painted["labels"]), "-o", str(shipped), "--overwrite",
            "--init", "nuclei", "--iterations", "1", "--device", "cpu"]
    try:
        assert main(argv) == 2
        assert "would overwrite the input" in error_line(capsys)
    finally:
        if shipped.read_bytes() != original:  # never leave a broken package behind, even when failing
            shipped.write_bytes(original)
            pytest.fail("the built-in model was overwritten")


def test_segment_never_writes_over_an_input_through_a_link_or_a_store(tmp_path, tiny_instance_checkpoint, capsys):
    tifffile.imwrite(tmp_path / "a.tif", np.arange(32 * 32, dtype=np.uint16).reshape(32, 32))
    (tmp_path / "link.tif").symlink_to(tmp_path / "a.tif")
    store = unetseg_io.create_labels_zarr(tmp_path / "volume.zarr", (2, 32, 32), np.uint16)
    store[:] = 5
    before = snapshot(tmp_path)
    model = ["-m", str(tiny_instance_checkpoint), "--device", "cpu", "--overwrite"]
    for source, output in (("a.tif", "link.tif"), ("link.tif", "a.tif"), ("volume.zarr", "volume.zarr"),
                           ("volume.zarr", "volume.zarr/labels.zarr")):
        assert main(["segment", str(tmp_path / source), "-o", str(tmp_path / output), *model]) == 2, output
        assert "would overwrite the input" in error_line(capsys)
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------- 4. no wrong results with exit status 0


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
def test_a_few_hot_pixels_leave_the_labels_unchanged(dtype):
    image, _ = synthetic_nuclei_2d((96, 96), seed=1)[:2]
    clean = (image / image.max() * 3000 + 100).astype(dtype)
    hot = clean.copy()
    hot.flat[np.random.default_rng(0).choice(hot.size, 3, replace=False)] = np.iinfo(dtype).max
    expected = segment(clean, "nuclei", device="cpu", precision="float32")
    found = segment(hot, "nuclei", device="cpu", precision="float32")
    assert expected.max() >= 5
    assert ((expected > 0) == (found > 0)).mean() >= 0.99


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
def test_hot_pixels_that_the_percentiles_land_on_do_not_blank_a_small_plane(dtype):
    objects = two_touching_discs(40, 8)
    clean = np.where(objects > 0, 1000, 100).astype(dtype)
    hot = clean.copy()
    hot[[1, 3, 20, 38, 39], [1, 30, 2, 38, 10]] = np.iinfo(dtype).max  # 5 of 1600 pixels: above the 99.8th percentile
    expected = segment(clean, threshold_checkpoint(), device="cpu")
    found = segment(hot, threshold_checkpoint(), device="cpu")
    assert expected.max() == 2 and ((expected > 0) == (found > 0)).mean() >= 0.99


def test_normalised_values_are_clipped():
    plane = np.full((64, 64), 100, np.float32)
    plane[:32] = 200
    plane[0, 0], plane[63, 63] = 1e30, -1e30  # outliers the percentiles (1, 99.8) do not reach
    normed = normalize_plane(plane)
    assert normed[0, 0] == 3.0 and normed[63, 63] == -1.0
    assert normed[10, 10] == pytest.approx(1.0) and normed[40, 40] == pytest.approx(0.0)


@pytest.mark.parametrize("options", [{"iterations": 0}, {"iterations": -3}, {"max_seconds": 0}, {"max_seconds": -1.0}])
def test_a_training_that_could_not_train_is_refused(options):
    image, annotation = np.ones((32, 32), np.float32), np.ones((32, 32), np.uint8)
    name = next(iter(options))
    with pytest.raises(ValueError, match=name):
        train(image, annotation, **{**FAST, **options})
    with pytest.raises(ValueError, match=name):
        TrainConfig(**options)


def test_a_tiny_time_budget_still_trains_one_iteration(painted):
    image, annotation = tifffile.imread(painted["image"]), tifffile.imread(painted["labels"])
    result = train(image, annotation, **{**FAST, "iterations": 50, "max_seconds": 1e-9})
    assert result.info.training["iterations"] == 1 and len(result.history) == 1


@pytest.mark.parametrize("argv", [["--iterations", "0"], ["--iterations", "-2"], ["--max-seconds", "0"],
                                  ["--max-seconds", "-5"], ["--max-seconds", "nan"]])
def test_train_refuses_budgets_that_would_save_untrained_weights(tmp_path, painted, argv, capsys):
    out = tmp_path / "m.pt"
    assert main(["train", str(painted["image"]), str(painted["labels"]), "-o", str(out), *argv]) == 2
    line = error_line(capsys)
    assert argv[0] in line and line.rstrip().endswith("see unetseg train --help")
    assert not out.exists()


@pytest.mark.parametrize(
    "labels, expected",
    [(np.linspace(0, 1, 32 * 32, dtype=np.float32).reshape(32, 32), "must hold integer labels, got dtype float32"),
     (np.where(np.eye(32, dtype=bool), -1, 3).astype(np.int16), "holds negative labels (down to -1)")],
    ids=["probability-map", "negative"],
)
def test_evaluate_refuses_what_is_not_a_label_image(tmp_path, labels, expected, capsys):
    good = np.zeros((32, 32), np.uint16)
    good[4:12, 4:12] = 1
    write_labels(tmp_path / "good.tif", good)
    tifffile.imwrite(tmp_path / "odd.tif", labels)
    for argv in (["odd.tif", "good.tif"], ["good.tif", "odd.tif"]):
        assert main(["evaluate", *(str(tmp_path / name) for name in argv)]) == 2
        assert f"odd.tif {expected}" in error_line(capsys)
    with pytest.raises(ValueError, match=expected.split(" (")[0]):
        evaluate(labels, good)


# ---------------------------------------------------------------- 5. clear messages


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch /tmp/unetseg-bad-input-pwned",))


@pytest.mark.parametrize(
    "make",
    [lambda p: p.write_text("name,score\nnuclei,0.9\n"), lambda p: p.write_bytes(os.urandom(512)),
     lambda p: p.write_bytes(b""), lambda p: p.write_bytes(b"\x80\x04\x95garbage"),
     lambda p: (save_checkpoint(p, tiny_unet(), ModelInfo()), p.write_bytes(p.read_bytes()[:300]))],
    ids=["text", "random", "empty", "broken-pickle", "truncated"],
)
def test_a_file_that_is_not_a_checkpoint_is_called_so(tmp_path, make, painted, capsys):
    path = tmp_path / "model.pt"
    make(path)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path)
    assert str(caught.value) == f"{path}: not a checkpoint (corrupt or another kind of file)"
    assert main(["segment", str(painted["image"]), "-o", str(tmp_path / "out.tif"), "-m", str(path)]) == 2
    line = error_line(capsys)
    assert "not a checkpoint (corrupt or another kind of file)" in line
    assert "weights_only" not in line and "\x1b" not in line


@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_a_pickle_with_code_is_refused_and_never_runs(tmp_path, how, painted, capsys):
    marker = Path("/tmp/unetseg-bad-input-pwned")
    marker.unlink(missing_ok=True)
    path = tmp_path / "evil.pt"
    if how == "pickle":
        path.write_bytes(pickle.dumps(_RunsCode()))
    else:
        torch.save({"format": "napari-unetseg", "payload": _RunsCode()}, path)
    with pytest.raises(CheckpointError, match="evil.pt: refused: the file contains Python objects other than weights"):
        load_checkpoint(path)
    assert main(["segment", str(painted["image"]), "-o", str(tmp_path / "out.tif"), "-m", str(path)]) == 2
    line = error_line(capsys)
    assert "refused" in line and "system" in line and "weights_only" not in line and "\x1b" not in line
    assert not marker.exists()


@pytest.mark.parametrize(
    "argv, command",
    [(["train"], "train"), (["train", "a.tif", "b.tif", "-o", "m.pt", "--iterations", "zero"], "train"),
     (["segment", "a.tif"], "segment"), (["segment", "a.tif", "-o", "b.tif", "--batch-size", "0"], "segment"),
     (["evaluate", "a.tif", "b.tif", "--mode", "neither"], "evaluate"), (["nonsense"], None)],
)
def test_usage_errors_are_one_line_pointing_to_help(argv, command, capsys):
    assert main(argv) == 2
    line = error_line(capsys)
    assert line.rstrip().endswith(f"see unetseg {command} --help" if command else "see unetseg --help")
    assert "usage:" not in line


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_failing_task_on_local_workers_prints_one_line(tmp_path, capfd):
    pytest.importorskip("distributed")
    model = save_checkpoint(tmp_path / "two.pt", tiny_unet(in_channels=2), ModelInfo())
    tifffile.imwrite(tmp_path / "a.tif", np.ones((2, 32, 32), np.uint8), photometric="minisblack")
    out = tmp_path / "out.zarr"
    argv = ["segment", str(tmp_path / "a.tif"), "-o", str(out), "-m", str(model), "--device", "cpu", "--workers", "1"]
    assert main(argv) == 2
    err = capfd.readouterr().err
    assert err == "unetseg: error: " + f"{tmp_path / 'a.tif'}: the model expects 2 channel(s), the image has 1\n"
    assert not out.exists()


# ---------------------------------------------------------------- faults: SIGKILL while writing


_DYING_LABELS = """
import os, signal, sys
import numpy as np

class DyingLabels:
    '''Four 32 x 32 planes; reading the third kills the process, half-way through a write.'''
    shape, dtype, ndim = (4, 32, 32), np.dtype(np.uint32), 3

    def __getitem__(self, index):
        if index[0] == 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return np.full((32, 32), index[0] + 1, np.uint32)
"""

_KILL_SCRIPTS = {
    "tiff": _DYING_LABELS + textwrap.dedent("""
        from napari_unetseg.io import write_labels
        write_labels(sys.argv[1], DyingLabels(), overwrite=True)
    """),
    "zarr": _DYING_LABELS + textwrap.dedent("""
        from napari_unetseg.io import write_labels
        write_labels(sys.argv[1], DyingLabels(), overwrite=True)
    """),
    "checkpoint": textwrap.dedent("""
        import io, os, signal, sys
        import torch
        from napari_unetseg.checkpoint import ModelInfo, save_checkpoint
        from napari_unetseg.model import UNet

        real_save = torch.save

        def save_half_then_die(obj, handle):
            buffer = io.BytesIO()
            real_save(obj, buffer)
            data = buffer.getvalue()
            handle.write(data[: len(data) // 2])
            handle.flush()
            os.kill(os.getpid(), signal.SIGKILL)

        torch.save = save_half_then_die
        save_checkpoint(sys.argv[1], UNet(num_classes=3, base_channels=4, depth=2), ModelInfo(), overwrite=True)
    """),
}


def _existing_result(kind: str, path: Path) -> None:
    """A finished earlier result at ``path`` (what a killed overwrite must leave alone)."""
    if kind == "checkpoint":
        save_checkpoint(path, tiny_unet(), ModelInfo(name="earlier"))
    else:
        write_labels(path, np.full((2, 16, 16), 7, np.uint32))


@pytest.mark.parametrize("kind, name", [("tiff", "labels.tif"), ("zarr", "labels.zarr"), ("checkpoint", "model.pt")])
@pytest.mark.parametrize("earlier", [False, True], ids=["new", "over-an-earlier-result"])
def test_sigkill_while_writing_leaves_no_file_that_looks_complete(tmp_path, kind, name, earlier):
    path = tmp_path / name
    if earlier:
        _existing_result(kind, path)
    before = snapshot(tmp_path)
    done = subprocess.run([sys.executable, "-c", _KILL_SCRIPTS[kind], str(path)], capture_output=True, text=True)
    assert done.returncode == -signal.SIGKILL, done.stderr
    visible = {k: v for k, v in snapshot(tmp_path).items() if not Path(k).parts[0].startswith(".")}
    assert visible == before  # the final name holds the earlier result, or nothing
    if earlier:
        if kind == "checkpoint":
            assert load_checkpoint(path).info.name == "earlier"
        else:
            assert (np.asarray(read_image(path)) == 7).all()
    partial = [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert partial, "the kill should have interrupted a write to a temporary file"


# ---------------------------------------------------------------- faults: a full disk


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_while_writing_labels_is_one_line_and_keeps_earlier_results(
    tmp_path, tiny_instance_checkpoint, capsys, monkeypatch
):
    for name in ("a", "b"):
        tifffile.imwrite(tmp_path / f"{name}.tif", np.random.default_rng(0).integers(0, 999, (32, 32), np.uint16))
    results = tmp_path / "results"
    assert main(["segment", str(tmp_path / "a.tif"), "-o", str(results), "-m", str(tiny_instance_checkpoint),
                 "--device", "cpu", "-q"]) == 0
    earlier = snapshot(results)

    def write_some_then_fill_the_disk(handle, *args, **kwargs):
        handle.write(b"II*\x00" + b"\x00" * 100)
        _disk_full()

    monkeypatch.setattr(unetseg_io.tifffile, "imwrite", write_some_then_fill_the_disk)
    argv = ["segment", str(tmp_path / "a.tif"), str(tmp_path / "b.tif"), "-o", str(results), "-m",
            str(tiny_instance_checkpoint), "--device", "cpu", "-q", "--overwrite"]
    assert main(argv) == 2
    assert error_line(capsys) == f"unetseg: error: {results / 'a_labels.tif'}: No space left on device\n"
    assert snapshot(results) == earlier and sorted(p.name for p in results.iterdir()) == ["a_labels.tif"]


def test_a_full_disk_while_writing_a_zarr_store_removes_it(tmp_path, monkeypatch):
    import zarr

    real_setitem, calls = zarr.Array.__setitem__, []

    def fill_the_disk_on_the_second_plane(self, key, value):
        calls.append(key)
        if len(calls) == 2:
            _disk_full()
        return real_setitem(self, key, value)

    monkeypatch.setattr(zarr.Array, "__setitem__", fill_the_disk_on_the_second_plane)
    with pytest.raises(OSError) as caught:
        write_labels(tmp_path / "labels.zarr", np.ones((3, 16, 16), np.uint32))
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(tmp_path / "labels.zarr")
    assert len(calls) == 2 and list(tmp_path.iterdir()) == []  # the half-written store is gone


def test_a_full_disk_while_saving_a_checkpoint_keeps_the_earlier_one(tmp_path, painted, capsys, monkeypatch):
    out = tmp_path / "model.pt"
    save_checkpoint(out, tiny_unet(), ModelInfo(name="earlier"))
    before = snapshot(tmp_path)

    def save_some_then_fill_the_disk(obj, handle, *args, **kwargs):
        handle.write(b"PK\x03\x04" + b"\x00" * 100)
        _disk_full()

    monkeypatch.setattr(torch, "save", save_some_then_fill_the_disk)
    argv = ["train", str(painted["image"]), str(painted["labels"]), "-o", str(out), "--overwrite",
            "--iterations", "1", "--device", "cpu", "-q"]
    assert main(argv) == 2
    assert error_line(capsys) == f"unetseg: error: {out}: No space left on device\n"
    assert snapshot(tmp_path) == before


def test_out_of_memory_even_at_batch_one_is_one_error_line_and_writes_nothing(
    tmp_path, tiny_instance_checkpoint, capsys, monkeypatch
):
    from napari_unetseg.inference import PlanePredictor

    def out_of_memory(self, *args, **kwargs):
        raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(PlanePredictor, "probabilities", out_of_memory)
    monkeypatch.setattr(PlanePredictor, "probabilities_on", out_of_memory)  # the device post-processing's path
    tifffile.imwrite(tmp_path / "cells.tif", np.random.default_rng(0).integers(0, 900, (4, 48, 48), np.uint16))
    out = tmp_path / "labels.tif"
    argv = ["segment", str(tmp_path / "cells.tif"), "-o", str(out), "-m", str(tiny_instance_checkpoint),
            "--axes", "ZYX", "--device", "cpu", "--precision", "float32", "-q"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[:2] == ["unetseg: warning: Out of memory on cpu: continuing with batch size 2.",
                       "unetseg: warning: Out of memory on cpu: continuing with batch size 1."], err
    assert len(err) == 3 and err[2].startswith("unetseg: error: ") and "batch size 1" in err[2], err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["cells.tif", "tiny-instance.pt"]
