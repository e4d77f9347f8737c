"""precision.py: the one place that picks the number format and the runner, for inference and training;
and the bfloat16 probe it asks (predictor.py: the probe runs the engine)."""

import pytest
import torch

from napari_unetseg import precision, predictor
from napari_unetseg.checkpoint import Checkpoint, ModelInfo
from napari_unetseg.precision import choose_backend, choose_precision, onnxruntime_available, training_autocast

from conftest import ThresholdNet, tiny_unet

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


def _checkpoint(seed=0):
    return Checkpoint(tiny_unet(seed=seed), ModelInfo(mode="instance"))


def _auto(checkpoint, chosen="auto"):
    """What a PlanePredictor on the CPU runs for ``chosen``: the rule of precision.py, the probe of predictor.py."""
    return precision.resolve_precision(CPU, chosen, lambda: predictor.bfloat16_verdict(checkpoint))


def test_precision_choice():
    assert choose_precision(CPU, "float32") == torch.float32
    assert choose_precision(CPU) == torch.float32
    assert choose_precision(CUDA, "auto") == torch.float16
    with pytest.raises(ValueError, match="precision"):
        choose_precision(CPU, "int8")


def test_auto_precision_takes_bfloat16_only_where_the_probe_agrees(monkeypatch):
    verdicts = iter([True, False])
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: True)
    monkeypatch.setattr(predictor, "bfloat16_agrees", lambda checkpoint: next(verdicts))
    agreeing, disagreeing = _checkpoint(seed=1), _checkpoint(seed=2)
    assert _auto(agreeing) == "bfloat16"
    assert _auto(disagreeing) == "float32"
    assert _auto(agreeing) == "bfloat16"  # remembered: the probe ran once
    assert _auto(disagreeing, "bfloat16") == "bfloat16"  # an explicit choice stands

    def broken_probe(checkpoint):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(predictor, "bfloat16_agrees", broken_probe)
    assert _auto(_checkpoint(seed=3)) == "float32"
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: False)
    assert _auto(_checkpoint()) == "auto"  # left to optimize: float32 on a CPU


def test_the_probe_verdict_is_kept_on_disk_for_the_next_run(monkeypatch, private_cache):
    probes = []
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: True)
    monkeypatch.setattr(predictor, "bfloat16_agrees", lambda checkpoint: probes.append(1) or True)
    assert _auto(_checkpoint(seed=4)) == "bfloat16"
    predictor._BFLOAT16_VERDICTS.clear()  # what a new process starts with
    assert _auto(_checkpoint(seed=4)) == "bfloat16" and len(probes) == 1
    for path in (private_cache / "precision").iterdir():
        path.write_text("{damaged")
    predictor._BFLOAT16_VERDICTS.clear()
    assert _auto(_checkpoint(seed=4)) == "bfloat16" and len(probes) == 2
    assert _auto(_checkpoint(seed=5)) == "bfloat16" and len(probes) == 3  # other weights


def test_bfloat16_probe_compares_labels_of_both_precisions():
    # a network that thresholds its input gives the same objects in any precision
    assert predictor.bfloat16_agrees(Checkpoint(ThresholdNet(), ModelInfo()), planes=1, size=128) is True


def test_backend_choice():
    onnx = "onnxruntime" if onnxruntime_available() else "torch"
    assert choose_backend(CPU) == onnx  # auto: ONNX Runtime for float32 on the CPU, when installed
    assert choose_backend(CPU, "float32", "torch") == "torch"
    assert choose_backend(CPU, "bfloat16") == "torch"  # ONNX Runtime has no bfloat16 path here
    assert choose_backend(CUDA) == "torch"
    with pytest.raises(ValueError, match="float32 on the CPU"):
        choose_backend(CPU, "bfloat16", "onnxruntime")
    with pytest.raises(ValueError, match="backend must be one of"):
        choose_backend(CPU, "float32", "tvm")


def test_training_autocast_choice():
    assert training_autocast(CUDA, amp=True, cpu_bf16=False) == torch.float16
    assert training_autocast(CUDA, amp=False, cpu_bf16=True) is None
    assert training_autocast(CPU, amp=True, cpu_bf16=False) is None  # asked for, not automatic, on a CPU
    assert training_autocast(CPU, amp=True, cpu_bf16=True) == torch.bfloat16
    assert training_autocast(torch.device("mps"), amp=True, cpu_bf16=True) is None
