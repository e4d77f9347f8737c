"""bioimage.io packages: export (contents, reference test), re-import (same labels), other tools' packages, refusals."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import yaml

from napari_unetseg.bioimageio import export_package, scale_range
from napari_unetseg.bioimageio_load import PackageError, is_package, load_package
from napari_unetseg.cli import main
from napari_unetseg.inference import segment
from napari_unetseg.models import resolve_model
from napari_unetseg.normalize import normalize_plane
from napari_unetseg.synthetic import sample_image_2d, synthetic_nuclei_2d

onnxruntime = pytest.importorskip("onnxruntime")


def error_line(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err
    assert err.startswith("unetseg: error: ") and err.count("\n") == 1, err
    return err


@pytest.fixture(scope="module")
def nuclei_zip(tmp_path_factory) -> Path:
    """The built-in ``nuclei`` model exported once for the module."""
    torch.set_num_threads(1)
    return export_package("nuclei", tmp_path_factory.mktemp("export") / "nuclei.zip")


def rdf_of(path: Path) -> dict:
    with zipfile.ZipFile(path) as archive:
        return yaml.safe_load(archive.read("rdf.yaml"))


def test_export_holds_what_other_tools_and_our_loader_need(nuclei_zip):
    rdf = rdf_of(nuclei_zip)
    assert rdf["format_version"].startswith("0.5") and rdf["type"] == "model"
    assert set(rdf["weights"]) == {"pytorch_state_dict", "torchscript", "onnx"}
    (pre_scale, pre_clip), = [rdf["inputs"][0]["preprocessing"]]
    assert pre_scale["id"] == "scale_range"
    assert (pre_scale["kwargs"]["min_percentile"], pre_scale["kwargs"]["max_percentile"]) == (1.0, 99.8)
    assert pre_clip == {"id": "clip", "kwargs": {"min": -1.0, "max": 3.0}}
    assert rdf["outputs"][0]["axes"][1]["channel_names"] == ["background", "interior", "boundary"]
    assert rdf["cite"][0]["doi"] == "10.1007/978-3-319-24574-4_28" and rdf["license"] == "BSD-3-Clause"
    ours = rdf["config"]["napari-unetseg"]["info"]
    assert (ours["mode"], ours["decision_weights"]) == ("instance", None) and "object_diameter" in ours
    with zipfile.ZipFile(nuclei_zip) as archive:
        for entry in [*rdf["weights"].values(), rdf["inputs"][0]["test_tensor"], rdf["outputs"][0]["test_tensor"]]:
            assert hashlib.sha256(archive.read(entry["source"])).hexdigest() == entry["sha256"]
        readme = archive.read("README.md").decode()
        assert archive.read("cover.png")[:8] == b"\x89PNG\r\n\x1a\n"
        test_in = np.load(io.BytesIO(archive.read("test_input.npy")))
        test_out = np.load(io.BytesIO(archive.read("test_output.npy")))
        session = onnxruntime.InferenceSession(archive.read("model.onnx"), providers=["CPUExecutionProvider"])
    assert "## Validation" in readme and "0.7013" in readme  # the synthetic F1 of docs/models.md
    # the ONNX weights give the stored probabilities from bioimage.io's preprocessing of the test input
    onnx_out = session.run(None, {"x": scale_range(test_in, 1.0, 99.8)})[0]
    assert test_out.shape == (1, 3, 128, 128) and np.allclose(onnx_out, test_out, atol=1e-4)
    assert np.allclose(test_out.sum(axis=1), 1, atol=1e-5) and (test_out[0, 1] > 0.5).mean() > 0.05


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_reimported_export_gives_the_labels_of_its_checkpoint(nuclei_zip, backend):
    image = sample_image_2d()[0]
    expected = segment(image, "nuclei", device="cpu", backend=backend, precision="float32")
    assert expected.max() > 20
    assert is_package(nuclei_zip) and load_package(nuclei_zip).info.name == "nuclei"
    labels = segment(image, str(nuclei_zip), device="cpu", backend=backend, precision="float32")
    assert np.array_equal(labels, expected)


def test_semantic_export_keeps_decision_weights_and_object_size(tmp_path):
    checkpoint = resolve_model("em-membranes")
    checkpoint.info.name, checkpoint.info.object_diameter = "em ft1.pt", 17.0
    package = export_package(checkpoint, tmp_path / "em.zip")
    loaded = load_package(package)
    assert (loaded.info.decision_weights, loaded.info.object_diameter) == ([0.15, 0.85], 17.0)
    assert rdf_of(package)["name"] == "napari-unetseg em ft1-pt"  # characters bioimage.io accepts
    image = sample_image_2d()[0]
    expected = segment(image, checkpoint, device="cpu", backend="torch", precision="float32")
    checkpoint.info.decision_weights = None
    argmax = segment(image, checkpoint, device="cpu", backend="torch", precision="float32")
    assert (expected != argmax).mean() > 0.01  # the weights change the labels...
    labels = segment(image, package, device="cpu", backend="torch", precision="float32")
    assert np.array_equal(labels, expected)  # ...and the package keeps them


def test_export_refuses_an_existing_file_and_a_foreign_network(tmp_path, nuclei_zip):
    with pytest.raises(FileExistsError, match="already exists"):
        export_package("nuclei", nuclei_zip)
    foreign = make_package(tmp_path / "foreign.zip")
    with pytest.raises(ValueError, match="another tool's network"):
        export_package(str(foreign), tmp_path / "again.zip")


# ------------------------------------------------------------------ packages made by other tools


class ForegroundNet(torch.nn.Module):
    """A tool's 2D network: foreground probability sigmoid(20 (x - 0.2)) of the normalised input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(20 * (x - 0.2))


def onnx_bytes(network: torch.nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.onnx.export(network, (torch.zeros(1, 1, 32, 32),), buffer, input_names=["input0"], output_names=["out"],
                      dynamic_axes={"input0": {0: "b", 2: "y", 3: "x"}}, dynamo=False, opset_version=17)
    return buffer.getvalue()


def script_bytes() -> bytes:
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.trace(ForegroundNet(), torch.zeros(1, 1, 32, 32)), buffer)
    return buffer.getvalue()


def make_package(path: Path, axes: str = "bcyx", preprocessing: list | None = None, onnx: bool = True) -> Path:
    """A small package as another tool writes it (YAML, spec 0.5) around :class:`ForegroundNet`."""
    kinds = {"b": {"type": "batch"}, "c": {"type": "channel", "channel_names": ["raw"]}}
    space = {a: {"type": "space", "id": a, "size": {"min": 16, "step": 16}} for a in "zyx"}
    in_axes = [kinds.get(a) or space[a] for a in axes]
    out_axes = [{"type": "batch"}, {"type": "channel", "channel_names": ["nucleus"]},
                *({"type": "space", "id": a, "size": {"tensor_id": "input0", "axis_id": a}} for a in "yx")]
    steps = preprocessing if preprocessing is not None else [
        {"id": "scale_range", "kwargs": {"axes": ["y", "x"], "min_percentile": 1.0, "max_percentile": 99.8}}]
    weights = {"onnx": {"source": "net.onnx", "opset_version": 17}} if onnx else \
        {"torchscript": {"source": "net.pt", "pytorch_version": "2.13"}}
    rdf = {"format_version": "0.5.4", "type": "model", "name": "foreground", "description": "a tool's network",
           "inputs": [{"id": "input0", "axes": in_axes, "preprocessing": steps}],
           "outputs": [{"id": "out", "axes": out_axes}], "weights": weights}
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("rdf.yaml", yaml.safe_dump(rdf))
        archive.writestr("net.onnx" if onnx else "net.pt", onnx_bytes(ForegroundNet()) if onnx else script_bytes())
    return path


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_a_tools_probability_package_works_as_a_semantic_model(tmp_path, backend):
    package = make_package(tmp_path / "tool.zip")
    checkpoint = resolve_model(str(package))
    assert (checkpoint.info.mode, checkpoint.info.class_names) == ("semantic", ["background", "nucleus"])
    image = synthetic_nuclei_2d((100, 70), seed=4)[0]  # not a multiple of the network's step of 16
    labels = segment(image, checkpoint, device="cpu", backend=backend, precision="float32", tile_size=64)  # tiled, too
    normalised = normalize_plane(image, 1.0, 99.8)
    clear = np.abs(normalised - 0.2) > 0.02
    assert 0.05 < (labels == 2).mean() < 0.95
    assert np.array_equal(labels[clear], np.where(normalised > 0.2, 2, 1)[clear])


def test_torchscript_runs_only_when_trusted(tmp_path, monkeypatch):
    package = make_package(tmp_path / "script.zip", onnx=False)
    with pytest.raises(PackageError, match="torchscript weights are code"):
        load_package(package)
    image = synthetic_nuclei_2d((64, 48), seed=5)[0]
    onnx_labels = segment(image, make_package(tmp_path / "onnx.zip"), device="cpu", precision="float32")
    assert 0.05 < (onnx_labels == 2).mean() < 0.95
    trusted = load_package(package, trust_torchscript=True)
    assert trusted.info.training["weights"] == "torchscript"
    assert np.array_equal(segment(image, trusted, device="cpu", precision="float32"), onnx_labels)
    monkeypatch.setenv("NAPARI_UNETSEG_TRUST_TORCHSCRIPT", "1")  # what --model reads
    assert np.array_equal(segment(image, str(package), device="cpu", precision="float32"), onnx_labels)


def test_a_tools_package_is_not_fine_tuned(tmp_path, capsys):
    image, truth = synthetic_nuclei_2d((64, 64), seed=1)
    tifffile.imwrite(tmp_path / "image.tif", image)
    tifffile.imwrite(tmp_path / "labels.tif", (truth > 0).astype(np.uint8) + 1)
    package = make_package(tmp_path / "tool.zip")
    args = ["train", str(tmp_path / "image.tif"), str(tmp_path / "labels.tif"), "-o", str(tmp_path / "ft.pt"),
            "--init", str(package), "--iterations", "2", "-q"]
    assert main(args) == 2
    assert "another tool's bioimage.io network cannot be fine-tuned" in error_line(capsys)
    assert not (tmp_path / "ft.pt").exists()


@pytest.mark.parametrize(("kind", "message"), [
    ("3d", "a 3D or time-lapse network"),
    ("zero_mean", "unknown preprocessing 'zero_mean_unit_variance'"),
    ("torchscript", "no ONNX weights (it has torchscript); its torchscript weights are code: set "
                    "NAPARI_UNETSEG_TRUST_TORCHSCRIPT=1"),
])
def test_a_package_that_cannot_work_is_one_clear_error(tmp_path, capsys, kind, message):
    options = {"3d": {"axes": "bczyx"}, "torchscript": {"onnx": False},
               "zero_mean": {"preprocessing": [{"id": "zero_mean_unit_variance", "kwargs": {"axes": ["y", "x"]}}]}}
    package = make_package(tmp_path / "bad.zip", **options[kind])
    with pytest.raises(PackageError, match=re.escape(message)):
        load_package(package)
    image = tmp_path / "image.tif"
    tifffile.imwrite(image, synthetic_nuclei_2d((64, 64), seed=0)[0])
    assert main(["segment", str(image), "-o", str(tmp_path / "labels.tif"), "--model", str(package), "-q"]) == 2
    assert message in error_line(capsys) and not (tmp_path / "labels.tif").exists()


def test_a_damaged_package_is_refused(tmp_path, nuclei_zip):
    damaged = tmp_path / "damaged.zip"
    with zipfile.ZipFile(nuclei_zip) as source, zipfile.ZipFile(damaged, "w") as target:
        for name in source.namelist():
            data = source.read(name)
            target.writestr(name, data[:-10] + b"0" * 10 if name == "weights.pt" else data)
    with pytest.raises(PackageError, match="weights.pt does not match its sha256"):
        load_package(damaged)
    (tmp_path / "plain.zip").write_bytes(b"not a zip")
    with pytest.raises(PackageError, match="not a zip file"):
        load_package(tmp_path / "plain.zip")


# ------------------------------------------------------------------ the command line


def test_cli_export_writes_a_package_and_refuses_bad_outputs(tmp_path, tiny_instance_checkpoint, capsys):
    output = tmp_path / "out" / "tiny.zip"
    assert main(["export", str(tiny_instance_checkpoint), "-o", str(output)]) == 0
    assert "wrote" in capsys.readouterr().err and load_package(output).info.name == "tiny"
    assert main(["export", str(tiny_instance_checkpoint), "-o", str(output)]) == 2
    assert "already exists; use --overwrite" in error_line(capsys)
    assert main(["export", str(tiny_instance_checkpoint), "-o", str(output), "--overwrite", "-q"]) == 0
    assert main(["export", "nuclei", "-o", str(tmp_path / "nuclei.tif")]) == 2
    assert "end the name in .zip" in error_line(capsys)
    assert main(["export", "no-such-model", "-o", str(tmp_path / "x.zip")]) == 2
    assert "no such checkpoint file or built-in model" in error_line(capsys)
    assert not (tmp_path / "x.zip").exists()


def bioimageio_command() -> str | None:
    """bioimage.io's ``bioimageio`` command: ``$UNETSEG_BIOIMAGEIO`` (e.g. in a venv of its own), else on the PATH."""
    for candidate in (os.environ.get("UNETSEG_BIOIMAGEIO"), shutil.which("bioimageio")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


@pytest.mark.slow
@pytest.mark.skipif(bioimageio_command() is None, reason="bioimage.io's reference test needs the `bioimageio` command "
                    "(pip install 'bioimageio.core==0.11.*' 'pydantic<2.12'; .ci/run uses a separate venv)")
def test_export_passes_the_bioimageio_reference_test(nuclei_zip, tmp_path):
    summary = tmp_path / "summary.json"
    result = subprocess.run([bioimageio_command(), "test", str(nuclei_zip), "--summary", str(summary)],
                            capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert json.loads(summary.read_text())["status"] == "passed"
