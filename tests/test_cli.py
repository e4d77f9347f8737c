"""The ``unetseg`` command line, called as ``main([...])`` with a tiny checkpoint."""

from __future__ import annotations

import io as stdio
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from napari_unetseg import __version__, cli_common, inference
from napari_unetseg.cli import main
from napari_unetseg.cli_common import ProgressBar
from napari_unetseg.io import read_image, write_labels


@pytest.fixture
def images(tmp_path: Path) -> dict[str, Path]:
    """A 2D image, a second 2D image and a 3-slice Z stack, written as plain TIFFs."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    paths = {"a": folder / "a.tif", "b": folder / "b.tif", "stack": folder / "stack.tif"}
    tifffile.imwrite(paths["a"], rng.integers(0, 4000, (48, 40), dtype=np.uint16))
    tifffile.imwrite(paths["b"], rng.integers(0, 255, (32, 32), dtype=np.uint8))
    tifffile.imwrite(paths["stack"], rng.integers(0, 255, (3, 32, 32), dtype=np.uint8), photometric="minisblack")
    return paths


def error_line(capsys: pytest.CaptureFixture) -> str:
    """The whole of stderr, checked to be a single ``unetseg: error:`` line."""
    err = capsys.readouterr().err
    assert err.startswith("unetseg: error: ") and err.count("\n") == 1, err
    return err


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"unetseg {__version__}"


def test_help_lists_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("segment", "evaluate", "devices"):
        assert command in out
    assert main(["segment", "--help"]) == 0
    assert "--stitch-z" in capsys.readouterr().out


def test_no_command_is_a_usage_error(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().err


def test_segment_2d(images, tiny_instance_checkpoint, tmp_path, capsys):
    out = tmp_path / "a_labels.tif"
    assert main(["segment", str(images["a"]), "-o", str(out), "--model", str(tiny_instance_checkpoint)]) == 0
    labels = read_image(out)
    assert labels.shape == (48, 40) and labels.dtype == np.uint32
    err = capsys.readouterr().err
    assert "1/1 planes" in err and f"wrote {out}" in err


def test_segment_3d_with_axes(images, tiny_instance_checkpoint, tmp_path, capsys):
    out = tmp_path / "stack_labels.tif"
    argv = ["segment", str(images["stack"]), "-o", str(out), "-m", str(tiny_instance_checkpoint)]
    assert main([*argv, "--axes", "ZYX", "--stitch-z", "--batch-size", "2", "--quiet"]) == 0
    labels = read_image(out)
    assert labels.shape == (3, 32, 32) and labels.dtype == np.uint32
    assert capsys.readouterr().err == ""


def test_several_inputs_into_a_folder(images, tiny_instance_checkpoint, tmp_path):
    folder = tmp_path / "results"
    argv = ["segment", str(images["a"]), str(images["b"]), "-o", str(folder), "-m", str(tiny_instance_checkpoint), "-q"]
    assert main(argv) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["a_labels.tif", "b_labels.tif"]
    assert read_image(folder / "b_labels.tif").shape == (32, 32)


def test_missing_input_fails_before_any_work(images, tiny_instance_checkpoint, tmp_path, capsys):
    folder = tmp_path / "results"
    missing = tmp_path / "nope.tif"
    argv = ["segment", str(images["a"]), str(missing), "-o", str(folder), "-m", str(tiny_instance_checkpoint)]
    assert main(argv) == 2
    assert str(missing) in error_line(capsys)
    assert not folder.exists()


def test_bad_checkpoints(images, tiny_instance_checkpoint, tmp_path, capsys):
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(tiny_instance_checkpoint.read_bytes()[:2000])
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    out = tmp_path / "out.tif"
    for checkpoint in (truncated, foreign, tmp_path / "missing.pt"):
        assert main(["segment", str(images["a"]), "-o", str(out), "--model", str(checkpoint)]) == 2
        assert checkpoint.name in error_line(capsys)
        assert not out.exists()


def test_existing_output_needs_overwrite(images, tiny_instance_checkpoint, tmp_path, capsys):
    out = write_labels(tmp_path / "a_labels.tif", np.ones((4, 4), np.uint32))
    before = out.read_bytes()
    argv = ["segment", str(images["a"]), "-o", str(out), "-m", str(tiny_instance_checkpoint)]
    assert main(argv) == 2
    assert "--overwrite" in error_line(capsys)
    assert out.read_bytes() == before
    assert main([*argv, "--overwrite", "-q"]) == 0
    assert read_image(out).shape == (48, 40)


def test_all_outputs_are_checked_before_the_first_input(images, tiny_instance_checkpoint, tmp_path, capsys):
    folder = tmp_path / "results"
    write_labels(folder / "b_labels.tif", np.ones((4, 4), np.uint32))
    argv = ["segment", str(images["a"]), str(images["b"]), "-o", str(folder), "-m", str(tiny_instance_checkpoint)]
    assert main(argv) == 2
    assert "b_labels.tif" in error_line(capsys)
    assert not (folder / "a_labels.tif").exists()


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--device", "tpu"], "unknown device"),
        (["--axes", "ZYX"], "a.tif"),
        (["--axes", "QYX"], "a.tif: axes 'QYX': 'Q' is not an axis letter; use T, Z, C, Y, X"),
    ],
)
def test_bad_options_are_one_line_errors(images, tiny_instance_checkpoint, tmp_path, capsys, extra, expected):
    out = tmp_path / "out.tif"
    argv = ["segment", str(images["a"]), "-o", str(out), "-m", str(tiny_instance_checkpoint), *extra]
    assert main(argv) == 2
    assert expected in error_line(capsys)
    assert not out.exists()


def test_output_may_not_replace_an_input(images, tiny_instance_checkpoint, capsys):
    argv = ["segment", str(images["a"]), "-o", str(images["a"]), "-m", str(tiny_instance_checkpoint), "--overwrite"]
    assert main(argv) == 2
    assert "input" in error_line(capsys)


def test_ctrl_c_exits_130_without_output(images, tiny_instance_checkpoint, tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(inference, "segment", interrupted)  # the command imports it when it runs
    out = tmp_path / "out.tif"
    assert main(["segment", str(images["a"]), "-o", str(out), "-m", str(tiny_instance_checkpoint)]) == 130
    assert capsys.readouterr().err.strip().endswith("unetseg: interrupted")
    assert not out.exists()


def test_evaluate_prints_json(tmp_path, capsys):
    truth = np.zeros((32, 32), np.uint32)
    truth[4:12, 4:12] = 1
    truth[20:28, 20:28] = 2
    prediction = np.where(truth == 1, 5, 0).astype(np.uint32)  # finds one of the two objects
    write_labels(tmp_path / "truth.tif", truth)
    write_labels(tmp_path / "prediction.tif", prediction)
    assert main(["evaluate", str(tmp_path / "prediction.tif"), str(tmp_path / "truth.tif")]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert {"precision", "recall", "f1", "mean_f1", "mean_ap", "adapted_rand_error"} <= scores.keys()
    assert scores["precision"] == 1.0 and scores["recall"] == 0.5

    argv = ["evaluate", str(tmp_path / "prediction.tif"), str(tmp_path / "truth.tif"), "--mode", "semantic"]
    assert main([*argv, "--foreground", "5,1"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert {"pixel_error", "iou", "mean_iou", "adapted_rand_error"} <= scores.keys()


def test_evaluate_shape_mismatch(tmp_path, capsys):
    write_labels(tmp_path / "a.tif", np.zeros((8, 8), np.uint32))
    write_labels(tmp_path / "b.tif", np.zeros((8, 9), np.uint32))
    assert main(["evaluate", str(tmp_path / "a.tif"), str(tmp_path / "b.tif")]) == 2
    assert "shape" in error_line(capsys)


def test_devices(capsys):
    assert main(["devices"]) == 0
    assert "PyTorch" in capsys.readouterr().out


def test_progress_bar_redraws_only_on_a_terminal():
    class Terminal(stdio.StringIO):
        def isatty(self) -> bool:
            return True

    log, terminal = stdio.StringIO(), Terminal()
    for stream in (log, terminal):
        bar = ProgressBar("x.tif", stream)
        bar(2, 4)
        bar(4, 4)
        bar.close()
    assert "\r" not in log.getvalue() and log.getvalue().count("\n") == 1
    assert "x.tif [" in log.getvalue() and "4/4 planes" in log.getvalue()
    assert terminal.getvalue().startswith("\rx.tif [") and terminal.getvalue().endswith("\n")


def test_progress_with_a_time_budget_follows_the_clock(monkeypatch):
    """``train --max-seconds 15``: 3 of 300 iterations after 10 s is two thirds done, 5 s left."""
    now = [100.0]
    monkeypatch.setattr(cli_common.time, "monotonic", lambda: now[0])
    log = stdio.StringIO()
    bar = ProgressBar("train", log, unit="iterations", budget=15)
    now[0] += 10
    bar(3, 300)
    assert f"[{'#' * 16}{' ' * 8}] 3/300 iterations 10s of 15s" in bar.line
    assert bar.line.endswith("ETA 5s")
    unbounded = ProgressBar("train", log, unit="iterations")
    now[0] += 10
    unbounded(3, 300)
    assert unbounded.line.endswith("ETA 16m30s") and "of" not in unbounded.line


def test_console_script_runs():
    script = Path(sys.executable).with_name("unetseg")
    assert script.exists(), f"console script missing next to {sys.executable}"
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"unetseg {__version__}"
