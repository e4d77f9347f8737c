"""The widget's side of bioimage.io packages: "Export…" next to the model picker, loading and opening packages."""

from __future__ import annotations

import zipfile

import pytest

napari = pytest.importorskip("napari")
pytest.importorskip("pytestqt")
pytest.importorskip("onnxruntime")

from test_bioimageio import make_package  # noqa: E402
from test_widget import notes  # noqa: E402, F401  (a fixture used by name)

from napari_unetseg._widget import _reader  # noqa: E402
from napari_unetseg._widget._main import UNetSegWidget  # noqa: E402
from napari_unetseg.bioimageio_load import load_package  # noqa: E402

pytestmark = pytest.mark.gui


@pytest.fixture
def widget(make_napari_viewer_proxy, tiny_instance_checkpoint, notes, tmp_path, monkeypatch) -> UNetSegWidget:
    from napari_unetseg import versions

    monkeypatch.setenv(versions.ENV_VAR, str(tmp_path / "versions"))
    viewer = make_napari_viewer_proxy()
    widget = UNetSegWidget(viewer)
    viewer.window.add_dock_widget(widget, name="U-Net Segmentation")
    widget.models.add_file(tiny_instance_checkpoint)
    return widget


def test_export_button_writes_a_package_that_loads_back(qtbot, widget, notes, tmp_path, monkeypatch):
    picker = widget.models
    monkeypatch.setattr(type(picker), "ask_export_path", lambda self: str(tmp_path / "tiny"))
    picker.export_button.clicked.emit()
    assert not picker.export_button.enabled  # busy while the worker writes
    qtbot.waitUntil(lambda: any("Exported" in message for _, message in notes), timeout=120_000)
    assert notes[-1] == ("info", f"Exported tiny to {tmp_path / 'tiny.zip'} (bioimage.io package).")
    qtbot.waitUntil(lambda: picker.export_button.enabled, timeout=10_000)
    assert load_package(tmp_path / "tiny.zip").info.name == "tiny"

    monkeypatch.setattr(type(picker), "ask_checkpoint_path", lambda self: str(tmp_path / "tiny.zip"))
    picker.load_button.clicked.emit()
    assert picker.current().key == str(tmp_path / "tiny.zip")
    assert picker.info.value.startswith("tiny: instance model")


def test_exporting_another_tools_package_says_why_not(qtbot, widget, notes, tmp_path, monkeypatch):
    picker = widget.models
    picker.add_file(make_package(tmp_path / "tool.zip"))
    picker.export(tmp_path / "again.zip")
    qtbot.waitUntil(lambda: bool(notes) and notes[-1][0] == "error", timeout=60_000)
    assert "was not exported" in notes[-1][1] and "another tool's network" in notes[-1][1]
    assert not (tmp_path / "again.zip").exists()


def test_reader_takes_packages_and_leaves_other_zips(tmp_path):
    package = make_package(tmp_path / "tool.zip")
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as archive:
        archive.writestr("data.csv", "a,b\n")
    assert _reader.get_reader(str(package)) is _reader.read_checkpoint
    assert _reader.get_reader(str(other)) is None
