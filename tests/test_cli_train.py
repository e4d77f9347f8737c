"""``unetseg train``: writes a usable checkpoint, and bad annotations end with exit status 2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_unetseg.checkpoint import load_checkpoint
from napari_unetseg.cli import main

from conftest import two_touching_discs


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    """A 64x64 image of two touching discs and sparse strokes: background 1, objects 2 and 3."""
    truth = two_touching_discs(64, 12)
    image = np.where(truth > 0, 900, 100).astype(np.uint16)
    strokes = np.zeros_like(truth)
    strokes[2:6, :] = 1
    strokes[28:36, 12:28] = truth[28:36, 12:28] + 1
    strokes[28:36, 36:52] = truth[28:36, 36:52] + 1
    image_path, labels_path = tmp_path / "image.tif", tmp_path / "strokes.tif"
    tifffile.imwrite(image_path, image)
    tifffile.imwrite(labels_path, strokes.astype(np.uint16))
    return image_path, labels_path


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("unetseg: error: ") and err.count("\n") == 1, err
    return err


def test_fine_tune_writes_a_loadable_checkpoint(pair, tiny_instance_checkpoint, tmp_path, capsys):
    out = tmp_path / "tuned.pt"
    code = main(["train", *map(str, pair), "-o", str(out), "--init", str(tiny_instance_checkpoint),
                 "--iterations", "3", "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    tuned = load_checkpoint(out)
    assert tuned.info.mode == "instance"
    assert tuned.model.config == load_checkpoint(tiny_instance_checkpoint).model.config
    assert "wrote" in capsys.readouterr().err
    assert main(["train", *map(str, pair), "-o", str(out), "--init", str(tiny_instance_checkpoint)]) == 2
    assert "already exists" in error_line(capsys)


@pytest.mark.parametrize(
    "bad, message",
    [
        (lambda s: s[:32], "shape"),
        (lambda s: np.zeros_like(s), "nothing is annotated"),
        (lambda s: (s > 0).astype(np.uint16), "id >= 2"),
        (lambda s: s.astype(np.float32) + 0.5, "labels"),
    ],
)
def test_bad_annotations_exit_2(pair, tiny_instance_checkpoint, tmp_path, capsys, bad, message):
    image_path, labels_path = pair
    broken = tmp_path / "broken.tif"
    tifffile.imwrite(broken, bad(tifffile.imread(labels_path)))
    out = tmp_path / "never.pt"
    code = main(["train", str(image_path), str(broken), "-o", str(out), "--init", str(tiny_instance_checkpoint),
                 "--iterations", "2", "--device", "cpu"])
    assert code == 2
    assert message in error_line(capsys)
    assert not out.exists()


def test_semantic_with_one_class_exits_2(pair, tiny_semantic_checkpoint, tmp_path, capsys):
    image_path, labels_path = pair
    one_class = tmp_path / "one.tif"
    tifffile.imwrite(one_class, (tifffile.imread(labels_path) > 0).astype(np.uint16))
    assert main(["train", str(image_path), str(one_class), "-o", str(tmp_path / "x.pt"),
                 "--init", str(tiny_semantic_checkpoint), "--mode", "semantic"]) == 2
    assert "at least 2 classes" in error_line(capsys)


def test_missing_image_exits_2(pair, tmp_path, capsys):
    assert main(["train", str(tmp_path / "nope.tif"), str(pair[1]), "-o", str(tmp_path / "x.pt")]) == 2
    assert "nope.tif" in error_line(capsys)


def test_a_fine_tune_that_does_not_improve_says_so_in_plain_words(tmp_path, tiny_instance_checkpoint, capsys,
                                                                   monkeypatch):
    from napari_unetseg.training import Trainer

    monkeypatch.setattr(Trainer, "validate", lambda self: 0.9 if self.done == 0 else 0.3)
    yy, xx = np.mgrid[:64, :64]
    truth = np.zeros((64, 64), np.uint16)
    for k, (y, x) in enumerate([(16, 16), (16, 48), (48, 16), (48, 48)], start=1):
        truth[(yy - y) ** 2 + (xx - x) ** 2 <= 81] = k  # four objects: one is held out
    image_path, labels_path = tmp_path / "image.tif", tmp_path / "objects.tif"
    tifffile.imwrite(image_path, np.where(truth > 0, 900, 100).astype(np.uint16))
    tifffile.imwrite(labels_path, np.where(truth > 0, truth + 1, 0).astype(np.uint16))  # whole objects only
    out = tmp_path / "tuned.pt"
    code = main(["train", str(image_path), str(labels_path), "-o", str(out), "--init", str(tiny_instance_checkpoint),
                 "--iterations", "2", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "note: No background (label 1) is painted" in err
    assert "did not improve on your held-out annotations" in err and "tiny kept as it was" in err
    kept = load_checkpoint(out)
    assert kept.info.training["metrics"]["verdict"] == "worse" and kept.info.training["best_iteration"] == 0


def test_a_time_budget_that_ends_first_is_said_with_what_was_kept(pair, tiny_instance_checkpoint, tmp_path, capsys):
    out = tmp_path / "tuned.pt"
    code = main(["train", *map(str, pair), "-o", str(out), "--init", str(tiny_instance_checkpoint),
                 "--iterations", "100000", "--max-seconds", "1", "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 0, err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"wrote {out}: the 1s time budget ended after ") and " of 100000 iterations; " in last
    kept = load_checkpoint(out).info.training["best_iteration"]
    assert (f"(weights of iteration {kept} of " in last if kept else "tiny kept as it was" in last)
    assert "of 1s" in err  # the bar counted the time


def test_a_finished_run_says_how_many_iterations_and_which_were_kept(pair, tmp_path, capsys):
    out = tmp_path / "new.pt"
    assert main(["train", *map(str, pair), "-o", str(out), "--iterations", "2", "--device", "cpu"]) == 0
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"wrote {out}: trained 2 iterations, kept the weights of iteration ")
