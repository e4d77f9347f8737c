"""int8 through ONNX Runtime: the labels of float32 on the built-in model, only when asked for, cached, refused clearly."""


import pytest
import tifffile
import torch
from conftest import ThresholdNet, disc_image, tiny_unet, two_touching_discs

from napari_unetseg import quantize
from napari_unetseg.checkpoint import Checkpoint, ModelInfo, save_checkpoint
from napari_unetseg.cli import main
from napari_unetseg.inference import segment
from napari_unetseg.metrics import agreement
from napari_unetseg.models import resolve_model
from napari_unetseg.optimize import onnx_cache_key
from napari_unetseg.precision import onnxruntime_available
from napari_unetseg.quantize import Int8Model, int8_cache_key
from napari_unetseg.synthetic import synthetic_nuclei_2d

needs_onnxruntime = pytest.mark.skipif(not onnxruntime_available(), reason="onnxruntime is not installed")
CPU = torch.device("cpu")


def _tiny(seed: int = 0) -> Checkpoint:
    return Checkpoint(tiny_unet(seed=seed), ModelInfo(mode="instance", name="tiny"))


@needs_onnxruntime
def test_int8_labels_of_the_builtin_model_agree_with_float32():
    image, truth = synthetic_nuclei_2d((256, 256), seed=42)  # neither a calibration nor a probe plane
    checkpoint = resolve_model("nuclei")
    full = segment(image, checkpoint, device="cpu", precision="float32", backend="onnxruntime")
    int8 = segment(image, checkpoint, device="cpu", precision="int8", backend="auto")
    assert full.max() >= 0.8 * truth.max()  # the reference found the nuclei: the comparison can fail
    assert agreement(int8, full, "instance")["same"]


@needs_onnxruntime
def test_the_quantized_graph_is_cached_beside_the_float32_export(monkeypatch, private_cache):
    model = tiny_unet(seed=3)
    calls = []
    real = quantize.quantize_graph
    monkeypatch.setattr(quantize, "quantize_graph", lambda g, p: calls.append(1) or real(g, p))
    x = torch.rand(1, 1, 32, 32)
    first = Int8Model(model)(x)
    assert sorted(path.name for path in (private_cache / "onnx").iterdir()) == sorted(
        [f"{onnx_cache_key(model)}.onnx", f"{int8_cache_key(model)}.int8.onnx"])
    torch.testing.assert_close(Int8Model(model)(x), first)  # a new process' start-up: nothing quantized
    assert len(calls) == 1
    torch.testing.assert_close(first.sum(1), torch.ones(1, 32, 32))  # probabilities

    (private_cache / "onnx" / f"{int8_cache_key(model)}.int8.onnx").write_bytes(b"damaged")
    torch.testing.assert_close(Int8Model(model)(x), first)  # quantized again and replaced
    assert len(calls) == 2


def test_int8_without_onnxruntime_is_refused_clearly(monkeypatch):
    monkeypatch.setattr(quantize, "onnxruntime_available", lambda: False)
    image = disc_image(two_touching_discs(32))
    with pytest.raises(ValueError, match=r"int8 runs on ONNX Runtime .*pip install onnxruntime onnx"):
        segment(image, _tiny(), device="cpu", precision="int8", backend="auto")
    with pytest.raises(ValueError, match="int8 runs on ONNX Runtime"):
        segment(image, _tiny(), device="cpu", precision="int8", backend="torch")
    assert segment(image, Checkpoint(ThresholdNet(), ModelInfo()), device="cpu", backend="auto").max() == 2


def test_the_command_line_says_why_int8_cannot_run(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(quantize, "onnxruntime_available", lambda: False)
    tifffile.imwrite(tmp_path / "a.tif", disc_image(two_touching_discs(32)))
    model = save_checkpoint(tmp_path / "tiny.pt", tiny_unet(), ModelInfo(mode="instance", name="tiny"))
    argv = ["segment", str(tmp_path / "a.tif"), "-o", str(tmp_path / "out.tif"), "--model", str(model)]
    assert main([*argv, "--precision", "int8"]) == 2
    out, err = capsys.readouterr()
    assert err.startswith("unetseg: error: ") and err.count("\n") == 1 and "pip install onnxruntime" in err, err
    assert not (tmp_path / "out.tif").exists()
