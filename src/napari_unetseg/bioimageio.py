"""Export a checkpoint as a bioimage.io model package (spec 0.5), read by ilastik, deepImageJ, QuPath and others.

The package is a zip holding ``rdf.yaml`` (written here as JSON, which is valid YAML, so the core
needs neither bioimageio.spec nor a YAML library), the weights three ways (the state dict with the
architecture's source, torchscript and ONNX; all three output class probabilities), test tensors,
a cover image cut from a real result on the bundled sample data, and a README. Under ``config`` it
keeps what :func:`~.bioimageio_load.load_package` needs to give exactly this checkpoint's labels.

Other tools see the network with bioimage.io's ``scale_range`` and ``clip`` preprocessing, which is
our per-plane percentile normalisation less its guards against rare saturated pixels and NaN.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import warnings
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import __version__
from .atomic import atomic_write
from .bioimageio_load import CONFIG_KEY, CONFIG_VERSION
from .checkpoint import Checkpoint
from .inference import segment
from .model import UNet
from .normalize import CLIP_HIGH, CLIP_LOW
from .optimize import ONNX_OPSET, export_onnx
from .predictor import resolve_checkpoint
from .synthetic import sample_image_2d

RDF_NAME = "rdf.yaml"
FORMAT_VERSION = "0.5.4"
INPUT_ID, OUTPUT_ID = "raw", "probabilities"
#: bioimage.io's ``scale_range`` divides by ``high - low + eps``.
SCALE_RANGE_EPS = 1e-6
ARCHITECTURE_CALLABLE = "UNetProbabilities"
UNET_CITATION = {
    "text": "Ronneberger, O., Fischer, P., Brox, T. (2015). U-Net: Convolutional Networks for Biomedical Image "
    "Segmentation. MICCAI 2015, LNCS 9351, 234-241.",
    "doi": "10.1007/978-3-319-24574-4_28",
}
LICENSE = "BSD-3-Clause"
HOMEPAGE = "docs/models.md of napari-unetseg"
TEST_SIZE = 128  # test tensors: a 128 x 128 crop of the sample image (fast to check in every weight format)

_ARCHITECTURE_SUFFIX = f'''

class {ARCHITECTURE_CALLABLE}(UNet):
    """The U-Net followed by a softmax over classes: ``(N, C, H, W)`` -> class probabilities ``(N, K, H, W)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(super().forward(x), dim=1)
'''


class Probabilities(nn.Module):
    """A network's logits turned into class probabilities (softmax over the class axis)."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network
        self.in_channels = network.in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.network(x), dim=1)


def export_package(
    checkpoint: Checkpoint | str | os.PathLike, path: str | os.PathLike, overwrite: bool = False
) -> Path:
    """Write ``checkpoint`` (a :class:`Checkpoint`, built-in name or file) as a bioimage.io package zip.

    The zip appears under ``path`` only when complete (written to a temporary file first); an
    existing file is replaced only with ``overwrite``. Takes a few seconds (ONNX export, a test run).
    """
    path = Path(path)
    checkpoint = resolve_checkpoint(checkpoint)
    model = checkpoint.model
    if not isinstance(model, UNet):
        raise ValueError(f"{checkpoint.path or 'this model'} is another tool's network; only napari-unetseg's "
                         "U-Nets can be exported")
    model.cpu().eval()
    if model.config["padding"] != "same":
        raise ValueError("only padding='same' networks can be exported (their output has the input's size)")
    if path.suffix.lower() != ".zip":
        raise ValueError(f"{path}: a bioimage.io package is a zip file; end the name in .zip")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; use --overwrite to replace it")
    files = package_files(checkpoint)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, overwrite) as handle:
        with zipfile.ZipFile(handle, "w", zipfile.ZIP_DEFLATED) as archive:
            for name, data in files.items():
                archive.writestr(name, data)
    return path


def package_files(checkpoint: Checkpoint) -> dict[str, bytes]:
    """Every file of the package by name, ``rdf.yaml`` last (it holds the others' sha256)."""
    model = checkpoint.model
    test_input = _test_input()
    files = {
        "weights.pt": _torch_bytes({k: v.detach().cpu() for k, v in model.state_dict().items()}),
        "unet.py": (Path(__file__).with_name("model.py").read_text() + _ARCHITECTURE_SUFFIX).encode(),
        "model.torchscript.pt": _torchscript(model),
        "model.onnx": export_onnx(Probabilities(model), output_name=OUTPUT_ID),
        "test_input.npy": _npy(test_input),
        "test_output.npy": _npy(reference_output(checkpoint, test_input)),
        "cover.png": cover_image(checkpoint),
        "README.md": readme(checkpoint).encode(),
    }
    rdf = describe(checkpoint, {name: hashlib.sha256(data).hexdigest() for name, data in files.items()})
    files[RDF_NAME] = json.dumps(rdf, indent=2, default=str).encode()
    return files


def describe(checkpoint: Checkpoint, sha256: dict[str, str]) -> dict[str, Any]:
    """The package's description (rdf.yaml) as data; ``sha256`` gives each file's hash by name."""
    info, config = checkpoint.info, checkpoint.model.config
    step = 2 ** config["depth"]
    space = [{"type": "space", "id": axis, "size": {"min": step, "step": step}} for axis in "yx"]
    in_names = ["raw"] if config["in_channels"] == 1 else [f"channel{i}" for i in range(config["in_channels"])]
    percentiles = {"min_percentile": float(info.normalization.get("low", 1.0)),
                   "max_percentile": float(info.normalization.get("high", 99.8))}
    torch_version = torch.__version__.split("+")[0]
    return {
        "format_version": FORMAT_VERSION,
        "type": "model",
        "name": _package_name(info.name or (checkpoint.path.stem if checkpoint.path else "model")),
        "description": info.description or f"U-Net {info.mode} segmentation exported by napari-unetseg",
        "authors": [{"name": "napari-unetseg developers"}],
        "cite": [UNET_CITATION],
        "license": LICENSE,
        "documentation": "README.md",
        "covers": ["cover.png"],
        "tags": ["unet", "segmentation", "2d", f"{info.mode}-segmentation", "napari-unetseg", "pytorch", "onnx"],
        "version": "1.0",
        "inputs": [{
            "id": INPUT_ID,
            "description": "one plane, each channel normalised to its percentiles",
            "axes": [{"type": "batch"}, {"type": "channel", "channel_names": in_names}, *space],
            "test_tensor": {"source": "test_input.npy", "sha256": sha256["test_input.npy"]},
            "data": {"type": "float32"},
            "preprocessing": [
                {"id": "scale_range", "kwargs": {"axes": ["y", "x"], **percentiles, "eps": SCALE_RANGE_EPS}},
                {"id": "clip", "kwargs": {"min": CLIP_LOW, "max": CLIP_HIGH}},
            ],
        }],
        "outputs": [{
            "id": OUTPUT_ID,
            "description": "class probabilities (softmax), one channel per class",
            "axes": [
                {"type": "batch"},
                {"type": "channel", "channel_names": _channel_names(info.class_names)},
                *({"type": "space", "id": axis, "size": {"tensor_id": INPUT_ID, "axis_id": axis}} for axis in "yx"),
            ],
            "test_tensor": {"source": "test_output.npy", "sha256": sha256["test_output.npy"]},
            "data": {"type": "float32", "range": [0.0, 1.0]},
        }],
        "weights": {
            "pytorch_state_dict": {
                "source": "weights.pt", "sha256": sha256["weights.pt"],
                "architecture": {"source": "unet.py", "sha256": sha256["unet.py"],
                                 "callable": ARCHITECTURE_CALLABLE, "kwargs": dict(config)},
                "pytorch_version": torch_version,
            },
            "torchscript": {"source": "model.torchscript.pt", "sha256": sha256["model.torchscript.pt"],
                            "parent": "pytorch_state_dict", "pytorch_version": torch_version},
            "onnx": {"source": "model.onnx", "sha256": sha256["model.onnx"],
                     "parent": "pytorch_state_dict", "opset_version": ONNX_OPSET},
        },
        "config": {CONFIG_KEY: package_config(checkpoint)},
    }


def package_config(checkpoint: Checkpoint) -> dict[str, Any]:
    """What our loader needs beside the state dict: the architecture, mode, classes, normalisation,
    decision weights and object size (all of :class:`~.checkpoint.ModelInfo`)."""
    return {"config_version": CONFIG_VERSION, "exported_by": f"napari-unetseg {__version__}",
            "network": dict(checkpoint.model.config), "info": asdict(checkpoint.info)}


def _package_name(name: str) -> str:
    """A name bioimage.io accepts (letters, digits, ``_-()`` and spaces, at most 128 characters)."""
    return re.sub(r"[^A-Za-z0-9_\-() ]", "-", f"napari-unetseg {name}")[:128]


def _channel_names(class_names: list[str]) -> list[str]:
    """Output channel names from class names: identifiers, unique."""
    names = [re.sub(r"\W+", "_", name).strip("_") or f"class{i + 1}" for i, name in enumerate(class_names)]
    return names if len(set(names)) == len(names) else [f"{n}_{i + 1}" for i, n in enumerate(names)]


def _sample() -> np.ndarray:
    return sample_image_2d()[0]


def _test_input() -> np.ndarray:
    """``(1, 1, TEST_SIZE, TEST_SIZE)`` float32: a crop of the sample image with several nuclei."""
    return _sample()[None, None, :TEST_SIZE, :TEST_SIZE].astype(np.float32)


def scale_range(batch: np.ndarray, low: float, high: float) -> np.ndarray:
    """bioimage.io's ``scale_range`` (per sample and channel over y, x) followed by our ``clip``."""
    lo, hi = (np.percentile(batch, q, axis=(-2, -1), keepdims=True) for q in (low, high))
    return np.clip((batch - lo) / (hi - lo + SCALE_RANGE_EPS), CLIP_LOW, CLIP_HIGH).astype(np.float32)


def reference_output(checkpoint: Checkpoint, batch: np.ndarray) -> np.ndarray:
    """The class probabilities bioimage.io's pipeline should give for ``batch``: its preprocessing, then the network."""
    norm = checkpoint.info.normalization
    prepared = scale_range(batch, norm.get("low", 1.0), norm.get("high", 99.8))
    with torch.inference_mode():
        return Probabilities(checkpoint.model.cpu().eval())(torch.from_numpy(prepared)).numpy()


def _torchscript(model: nn.Module) -> bytes:
    """The probability network traced to torchscript (any plane size: the padding is ``same``)."""
    example = torch.zeros(1, model.in_channels, 64, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(Probabilities(model).eval(), example)
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)
    return buffer.getvalue()


def _torch_bytes(value: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def cover_image(checkpoint: Checkpoint) -> bytes:
    """PNG, 2:1: the sample image beside the model's result on it (labels coloured over the image)."""
    from PIL import Image

    image = _sample()
    labels = segment(image, checkpoint, device="cpu", backend="torch", precision="float32")
    lo, hi = np.percentile(image, [0.5, 99.8])
    grey = np.clip((image - lo) / max(hi - lo, 1e-6) * 255, 0, 255).astype(np.uint8)
    grey_rgb = np.repeat(grey[..., None], 3, axis=2)
    colours = np.random.default_rng(0).integers(60, 256, size=(int(labels.max()) + 1, 3)).astype(np.float32)
    overlay = grey_rgb.astype(np.float32)
    found = labels > 0
    overlay[found] = 0.4 * overlay[found] + 0.6 * colours[labels[found]]
    buffer = io.BytesIO()
    Image.fromarray(np.concatenate([grey_rgb, overlay.astype(np.uint8)], axis=1)).save(buffer, "PNG")
    return buffer.getvalue()


def readme(checkpoint: Checkpoint) -> str:
    """The package's documentation: what the model does, how to use it, and its validation numbers."""
    info = checkpoint.info
    metrics = info.training.get("metrics") or {}
    rows = "\n".join(f"| {name} | {value} |" for name, value in metrics.items())
    validation = (
        f"Numbers recorded in the checkpoint when it was trained (for the built-in models they are the ones "
        f"reported in {HOMEPAGE}):\n\n| metric | value |\n| --- | ---: |\n{rows}\n"
        if metrics else "No validation numbers were recorded for this checkpoint.\n"
    )
    classes = ", ".join(f"{k} = {name}" for k, name in enumerate(info.class_names, start=1))
    labels = ("objects: a seeded watershed on the interior and boundary probabilities" if info.mode == "instance"
              else f"classes ({classes}) by arg-max" + (f" of the probabilities times {info.decision_weights}"
                                                        if info.decision_weights else ""))
    return f"""# {info.name or "napari-unetseg model"}

{info.description or "A U-Net exported by napari-unetseg."}

- Mode: {info.mode}; output channels: class probabilities of {", ".join(info.class_names)}.
- Input: one 2D plane, each channel mapped from its {info.normalization.get("low", 1.0)}th and
  {info.normalization.get("high", 99.8)}th percentiles to 0 and 1, clipped to [{CLIP_LOW}, {CLIP_HIGH}]
  (`scale_range` and `clip`). napari-unetseg also leaves rare saturated pixels and NaN out of the percentiles.
- Labels: napari-unetseg makes {labels}.
- Object size the model was trained on: {f"{info.object_diameter} px" if info.object_diameter else "not recorded"}.

## Usage

    unetseg segment image.tif -o labels.tif --model THIS_PACKAGE.zip

gives the labels of the original checkpoint (napari-unetseg reads `config.{CONFIG_KEY}` and the state dict).
Other bioimage.io tools run the probabilities (torchscript or ONNX weights).

## Validation

{validation}
## Citation

{UNET_CITATION["text"]} doi:{UNET_CITATION["doi"]}

## Licence

{LICENSE}. Exported by napari-unetseg {__version__}.
"""
