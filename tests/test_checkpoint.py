"""Checkpoints round-trip, refuse code, and fail with messages that name the file."""

import os
import pickle
from dataclasses import asdict
import stat

import numpy as np
import pytest
import torch

from napari_unetseg.checkpoint import CheckpointError, ModelInfo, load_checkpoint, save_checkpoint
from napari_unetseg.io import write_labels

from conftest import tiny_unet, write_raw_checkpoint


def test_round_trip_keeps_weights_and_metadata(tmp_path):
    model = tiny_unet(num_classes=2, seed=3)
    info = ModelInfo(
        mode="semantic",
        class_names=["membrane", "cell"],
        normalization={"low": 0.5, "high": 99.5},
        name="em",
        training={"data": "isbi2012 slices 0-19", "iterations": 10, "metrics": {"pixel_error": 0.1}},
        decision_weights=[0.35, 0.65],
    )
    path = save_checkpoint(tmp_path / "m.pt", model, info)
    loaded = load_checkpoint(path)
    assert loaded.info == info
    assert loaded.model.config == model.config
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value)
    assert not loaded.model.training
    x = torch.rand(1, 1, 16, 16)
    with torch.inference_mode():
        assert torch.allclose(loaded.model(x), model(x))


def test_save_never_overwrites_silently_and_leaves_no_temp_files(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", tiny_unet(), ModelInfo())
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="m.pt"):
        save_checkpoint(path, tiny_unet(seed=1), ModelInfo())
    assert path.read_bytes() == before
    save_checkpoint(path, tiny_unet(seed=1), ModelInfo(), overwrite=True)
    assert path.read_bytes() != before
    assert sorted(os.listdir(tmp_path)) == ["m.pt"]


class _RunsCode:
    def __reduce__(self):
        return (open, ("/tmp/unetseg-pwned", "w"))


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    marker = "/tmp/unetseg-pwned"
    if os.path.exists(marker):
        os.unlink(marker)
    path = tmp_path / "evil.pt"
    torch.save({"format": "napari-unetseg", "payload": _RunsCode()}, path)
    with pytest.raises(CheckpointError, match="evil.pt.*refused"):
        load_checkpoint(path)
    assert not os.path.exists(marker)


def test_plain_pickle_file_is_refused(tmp_path):
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps(_RunsCode()))
    with pytest.raises(CheckpointError, match="plain.pkl"):
        load_checkpoint(path)


def test_truncated_file_gives_a_clear_error(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", tiny_unet(), ModelInfo())
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"m.pt: not a checkpoint \(corrupt or another kind of file\)"):
        load_checkpoint(path)


@pytest.mark.parametrize("content", [b"\x00\x01\x02\x03", b"hello, this is text\n"])
def test_junk_files_give_a_clear_error(tmp_path, content):
    path = tmp_path / "junk.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_checkpoint(path)


def test_weights_that_do_not_fit_the_architecture(tmp_path):
    path = save_checkpoint(tmp_path / "m.pt", tiny_unet(), ModelInfo())
    payload = torch.load(path, weights_only=True)
    payload["config"]["base_channels"] = 8
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="m.pt.*do not fit"):
        load_checkpoint(path)


def test_class_count_must_match_the_mode(tmp_path):
    path = write_raw_checkpoint(tmp_path / "m.pt", tiny_unet(num_classes=2), asdict(ModelInfo(mode="instance")))
    with pytest.raises(CheckpointError, match="needs 3 outputs"):
        load_checkpoint(path)
    with pytest.raises(ValueError, match="needs 3 outputs"):  # and such a file is never written
        save_checkpoint(tmp_path / "new.pt", tiny_unet(num_classes=2), ModelInfo(mode="instance"))
    assert not (tmp_path / "new.pt").exists()


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="nope.pt: no such"):
        load_checkpoint(tmp_path / "nope.pt")


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_saved_checkpoints_follow_the_umask_like_other_outputs(tmp_path, umask):
    """A model saved to a shared folder is readable by colleagues when the umask lets other files be."""
    previous = os.umask(umask)
    try:
        path = save_checkpoint(tmp_path / "shared.pt", tiny_unet(), ModelInfo(mode="instance"))
        labels = write_labels(tmp_path / "labels.tif", np.zeros((8, 8), np.uint32))
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(labels.stat().st_mode)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left
