"""The compute core stays free of napari and Qt; the package and the command start light."""

import subprocess
import sys
from pathlib import Path

import pytest


def run_python(code: str) -> None:
    """Run ``code`` in a fresh interpreter and fail with its output unless it exits 0."""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_core_imports_without_napari_or_qt():
    run_python(
        "import sys, napari_unetseg, napari_unetseg.inference, napari_unetseg.checkpoint, "
        "napari_unetseg.postprocess, napari_unetseg.tiling, napari_unetseg.models, napari_unetseg.training, "
        "napari_unetseg.training_data, napari_unetseg.validation, napari_unetseg.targets, napari_unetseg.metrics, "
        "napari_unetseg.io, napari_unetseg.cli, napari_unetseg.provenance, napari_unetseg.measurements, "
        "napari_unetseg.volume, napari_unetseg.uncertainty;"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "('napari', 'qtpy', 'magicgui', 'PyQt5', 'PyQt6', 'PySide2', 'PySide6', 'vispy')];"
        "print(bad); sys.exit(1 if bad else 0)"
    )


def test_package_import_is_light_and_public_names_resolve():
    code = (
        "import sys, napari_unetseg as p, napari_unetseg._sample_data;"
        "assert 'torch' not in sys.modules, 'torch imported eagerly';"
        "assert callable(p.segment) and callable(p.train) and p.UNet.__name__ == 'UNet';"
        "assert 'torch' in sys.modules"
    )
    run_python(code)


def test_help_and_usage_errors_answer_without_loading_torch():
    code = (
        "import contextlib, io, sys\n"
        "from napari_unetseg.cli import main\n"
        "for argv in (['--help'], ['segment', '--help'], ['train', '--help'], ['models', '--help'], ['segment']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
        "        status = main(argv)\n"
        "    assert status == (2 if argv == ['segment'] else 0), (argv, status)\n"
        "heavy = [m for m in ('torch', 'onnxruntime', 'zarr', 'scipy', 'skimage') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    run_python(code)


def test_the_plugin_names_no_qt_binding_and_all_brings_one():
    """The napari plugin template's rule: a user's napari has its Qt; only the ``all`` extra adds one."""
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    bindings = ("pyqt5", "pyqt6", "pyside2", "pyside6", "napari[pyqt", "napari[pyside", "napari[qt", "napari[all")
    plugin = project["dependencies"] + extras["napari"]
    assert not [req for req in plugin if req.lower().replace(" ", "").startswith(bindings)], plugin
    assert any(req.startswith("napari[all]") for req in extras["all"]), extras["all"]
