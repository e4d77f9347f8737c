"""Inference speed-ups keep the network's answers."""

import copy

import pytest
import torch

from napari_unetseg import optimize
from napari_unetseg.model import UNet
from napari_unetseg.cache import CACHE_ENV
from napari_unetseg.optimize import FastModel, OnnxModel, fold_batchnorm, onnx_cache_key
from napari_unetseg.precision import cpu_supports_bf16, onnxruntime_available
from napari_unetseg.predictor import make_fast_model


def _trained_batchnorm_unet() -> UNet:
    """A small UNet whose BatchNorm layers hold non-trivial running statistics."""
    torch.manual_seed(0)
    model = UNet(base_channels=8, depth=2, num_classes=3)
    model.train()
    with torch.no_grad():
        for _ in range(5):
            model(torch.rand(4, 1, 32, 32) * 3 + 1)
    return model.eval()


def test_folding_batchnorm_keeps_outputs_and_leaves_the_original_alone():
    model = _trained_batchnorm_unet()
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    x = torch.rand(2, 1, 37, 41)
    with torch.inference_mode():
        torch.testing.assert_close(folded(x), model(x), atol=1e-4, rtol=1e-4)


def test_fast_model_float32_equals_plain_softmax():
    model = _trained_batchnorm_unet()
    fast = FastModel(model, torch.device("cpu"), "float32")
    x = torch.rand(3, 1, 40, 40)
    with torch.inference_mode():
        torch.testing.assert_close(fast(x), torch.softmax(model(x), 1), atol=1e-4, rtol=1e-4)


def test_reduced_precision_agrees_with_float32_labels():
    if not cpu_supports_bf16():
        pytest.skip("this CPU has no native bfloat16")
    model = _trained_batchnorm_unet()
    x = torch.rand(2, 1, 64, 64)
    full = FastModel(model, torch.device("cpu"), "float32")(x).argmax(1)
    half = FastModel(model, torch.device("cpu"), "bfloat16")(x).argmax(1)
    assert (full == half).float().mean() > 0.98


def test_onnxruntime_backend_matches_pytorch_float32():
    if not onnxruntime_available():
        pytest.skip("onnxruntime is not installed")
    model = _trained_batchnorm_unet()
    cpu = torch.device("cpu")
    runner = make_fast_model(model, cpu, "auto", "auto")
    assert isinstance(runner, OnnxModel)
    x = torch.rand(2, 1, 48, 80)
    torch.testing.assert_close(runner(x), FastModel(model, cpu, "float32")(x), atol=1e-4, rtol=1e-4)
    assert isinstance(make_fast_model(model, cpu, "bfloat16", "auto"), FastModel)
    with pytest.raises(ValueError, match="float32 on the CPU"):
        make_fast_model(model, cpu, "bfloat16", "onnxruntime")


def test_onnx_export_is_cached_by_the_weights_and_written_atomically(tmp_path, monkeypatch):
    if not onnxruntime_available():
        pytest.skip("onnxruntime is not installed")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    model = _trained_batchnorm_unet()
    exports = []
    real_export = optimize.export_onnx
    monkeypatch.setattr(optimize, "export_onnx", lambda m: exports.append(1) or real_export(m))
    x = torch.rand(1, 1, 48, 48)
    first = OnnxModel(model)(x)
    cached = list((tmp_path / "cache" / "onnx").iterdir())
    assert [path.name for path in cached] == [f"{onnx_cache_key(model)}.onnx"]  # no temporary file left
    torch.testing.assert_close(OnnxModel(model)(x), first)  # a new process' worth of start-up: no export
    assert len(exports) == 1

    changed = copy.deepcopy(model)
    with torch.no_grad():
        next(changed.parameters()).add_(0.5)
    assert onnx_cache_key(changed) != onnx_cache_key(model)
    OnnxModel(changed)
    assert len(exports) == 2 and len(list((tmp_path / "cache" / "onnx").iterdir())) == 2

    cached[0].write_bytes(b"not an onnx graph")  # damaged: exported again and replaced
    torch.testing.assert_close(OnnxModel(model)(x), first)
    assert len(exports) == 3 and cached[0].read_bytes() != b"not an onnx graph"


def test_an_unwritable_cache_folder_only_costs_the_export(tmp_path, monkeypatch):
    if not onnxruntime_available():
        pytest.skip("onnxruntime is not installed")
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder would go")
    monkeypatch.setenv(CACHE_ENV, str(blocker))
    model = _trained_batchnorm_unet()
    x = torch.rand(1, 1, 32, 32)
    torch.testing.assert_close(OnnxModel(model)(x), FastModel(model, torch.device("cpu"), "float32")(x),
                               atol=1e-4, rtol=1e-4)
    assert blocker.read_text().startswith("a file")
