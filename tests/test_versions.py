"""The user's model versions: naming, listing, the folder override, and never overwriting."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import tiny_unet

from napari_unetseg import versions
from napari_unetseg.checkpoint import ModelInfo, load_checkpoint


def _save(parent: str, root: Path) -> versions.ModelVersion:
    return versions.save_version(tiny_unet(), ModelInfo(mode="instance", name=parent), parent, root)


def test_names_count_up_per_base_and_never_overwrite(tmp_path):
    first = _save("nuclei", tmp_path)
    second = _save("nuclei", tmp_path)
    third = _save("nuclei-ft1", tmp_path)  # fine-tuning a version continues its base's numbering
    other = _save("em-membranes", tmp_path)
    assert [first.name, second.name, third.name, other.name] == [
        "nuclei-ft1",
        "nuclei-ft2",
        "nuclei-ft3",
        "em-membranes-ft1",
    ]
    assert len({v.path for v in (first, second, third, other)}) == 4
    assert all(v.path.is_file() for v in (first, second, third, other))
    assert [v.name for v in versions.list_versions(tmp_path)] == [
        "em-membranes-ft1",
        "nuclei-ft1",
        "nuclei-ft2",
        "nuclei-ft3",
    ]
    assert [v.number for v in versions.list_versions(tmp_path, base="nuclei-ft7")] == [1, 2, 3]


def test_saved_version_records_name_and_parent(tmp_path):
    info = ModelInfo(mode="instance", name="nuclei")
    version = versions.save_version(tiny_unet(), info, "nuclei", tmp_path)
    loaded = load_checkpoint(version.path)
    assert loaded.info.name == "nuclei-ft1"
    assert loaded.info.training["parent"] == "nuclei"
    assert info.name == "nuclei" and "parent" not in info.training  # the caller's info is left alone


def test_a_name_taken_meanwhile_is_skipped(tmp_path, monkeypatch):
    _save("nuclei", tmp_path)
    real = versions.next_version_name
    calls = []

    def stale(parent, root=None):  # first answer is stale: another process just took it
        calls.append(parent)
        return "nuclei-ft1" if len(calls) == 1 else real(parent, root)

    monkeypatch.setattr(versions, "next_version_name", stale)
    before = (tmp_path / "nuclei-ft1.pt").read_bytes()
    version = _save("nuclei", tmp_path)
    assert version.name == "nuclei-ft2"
    assert (tmp_path / "nuclei-ft1.pt").read_bytes() == before


def test_folder_comes_from_argument_then_environment_then_user_data(tmp_path, monkeypatch):
    monkeypatch.setenv(versions.ENV_VAR, str(tmp_path / "env"))
    assert versions.versions_dir(tmp_path / "arg") == tmp_path / "arg"
    assert versions.versions_dir() == tmp_path / "env"
    monkeypatch.delenv(versions.ENV_VAR)
    default = versions.versions_dir()
    assert default.name == "models" and "napari-unetseg" in str(default)


def test_listing_a_missing_folder_is_empty_and_odd_files_are_kept_apart(tmp_path):
    assert versions.list_versions(tmp_path / "nothing") == []
    (tmp_path / "my model.pt").write_bytes(b"")
    (tmp_path / ".nuclei-ft9.pt.123.tmp").write_bytes(b"")  # a save in progress
    (tmp_path / "notes.txt").write_text("")
    listed = versions.list_versions(tmp_path)
    assert [(v.name, v.number) for v in listed] == [("my model", 0)]
    assert versions.next_version_name("nuclei", tmp_path) == "nuclei-ft1"


@pytest.mark.parametrize(
    "name, base",
    [
        ("nuclei", "nuclei"),
        ("nuclei-ft12", "nuclei"),
        ("/data/My Model.pt", "My_Model"),
        ("a-ft1-ft2", "a-ft1"),
        ("..", "model"),
    ],
)
def test_base_name_is_safe_for_files(name, base):
    assert versions.base_name(name) == base


def test_versions_module_needs_no_gui():
    import subprocess
    import sys

    code = (
        "import sys, napari_unetseg.versions;"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('napari', 'qtpy', 'magicgui', 'PyQt6', 'PyQt5')];"
        "sys.exit(1 if bad else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
