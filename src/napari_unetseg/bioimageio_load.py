"""Use a bioimage.io model package (a zip with ``rdf.yaml``) as a checkpoint: ``--model FILE.zip``.

- Our own exports (:mod:`.bioimageio`) carry the architecture and metadata under ``config``: they load
  as the state dict into our own :class:`~.model.UNet` (read with ``weights_only=True``), so they give
  exactly the labels of the checkpoint they came from.
- Another tool's 2D package with probability outputs becomes a semantic model (label k = output channel
  k; one channel p becomes background 1 - p and foreground p) run from its ONNX weights by ONNX Runtime.
  Its preprocessing must be the one we apply ourselves (``scale_range`` per plane, optionally ``clip``
  no tighter than ours). Torchscript is code: a package with only torchscript weights runs only when
  the user says it is trusted (``trust_torchscript``, or ``NAPARI_UNETSEG_TRUST_TORCHSCRIPT=1`` for
  ``--model``); Python architectures are never run.
- Anything else (3D or time axes, several inputs, other preprocessing, no weights we may run) is
  refused with one :class:`PackageError` naming the package and the reason.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import zipfile
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch
from torch import nn

from .checkpoint import FORMAT_NAME, FORMAT_VERSION, Checkpoint, CheckpointError, ModelInfo, checkpoint_from_payload
from .normalize import CLIP_HIGH, CLIP_LOW

#: The key under ``config`` that holds what napari-unetseg needs to re-create its labels
#: (written by :mod:`.bioimageio`).
CONFIG_KEY = "napari-unetseg"
CONFIG_VERSION = 1
#: Preprocessing steps that change nothing for a float32 network input.
_NO_OPS = ("ensure_dtype", "ensure_float32")
#: Context (pixels per side) given to tiles of a package that states no halo.
DEFAULT_HALO = 32
#: Set to 1 to run the torchscript weights of packages that carry no ONNX weights (torchscript is code).
TRUST_ENV = "NAPARI_UNETSEG_TRUST_TORCHSCRIPT"


class PackageError(CheckpointError):
    """A bioimage.io package that napari-unetseg cannot run; the message names the file and the reason."""


def is_package(path: str | os.PathLike) -> bool:
    """True for a zip file holding a bioimage.io description (``rdf.yaml`` or ``*bioimageio.yaml``)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return _description_name(archive) is not None
    except (OSError, zipfile.BadZipFile):
        return False


def load_package(path: str | os.PathLike, trust_torchscript: bool | None = None) -> Checkpoint:
    """The package at ``path`` as a ready :class:`Checkpoint` (network in eval mode on the CPU).

    ``trust_torchscript`` allows running torchscript weights (code) when there are no ONNX weights;
    ``None`` reads :data:`TRUST_ENV`.
    """
    path = Path(path)
    if trust_torchscript is None:
        trust_torchscript = os.environ.get(TRUST_ENV) == "1"
    if not path.is_file():
        raise PackageError(f"{path}: no such bioimage.io package")
    try:
        with zipfile.ZipFile(path) as archive:
            name = _description_name(archive)
            if name is None:
                raise PackageError(f"{path}: a zip without rdf.yaml or bioimageio.yaml, not a bioimage.io package")
            rdf = _parse(archive.read(name), path)
            if rdf.get("type") != "model":
                raise PackageError(f"{path}: describes a {rdf.get('type')!r}, not a model")
            own = (rdf.get("config") or {}).get(CONFIG_KEY)
            if own is not None and "pytorch_state_dict" in (rdf.get("weights") or {}):
                return _own_checkpoint(archive, rdf, own, path)
            return _foreign_checkpoint(archive, rdf, path, trust_torchscript)
    except zipfile.BadZipFile:
        raise PackageError(f"{path}: not a zip file (damaged or another kind of file)") from None


def _description_name(archive: zipfile.ZipFile) -> str | None:
    names = [n for n in archive.namelist() if "/" not in n]
    found = [n for n in names if n == "rdf.yaml" or n.endswith("bioimageio.yaml")]
    return found[0] if found else None


def _parse(text: bytes, path: Path) -> dict[str, Any]:
    """The description as data: our JSON-as-YAML directly, other packages' YAML through PyYAML."""
    try:
        data = json.loads(text)
    except ValueError:
        try:
            import yaml
        except ImportError:
            raise PackageError(f"{path}: reading this package needs PyYAML: pip install napari-unetseg[bioimageio]")
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise PackageError(f"{path}: unreadable description ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise PackageError(f"{path}: unreadable description (not a mapping)")
    return data


def _read(archive: zipfile.ZipFile, entry: dict[str, Any], path: Path) -> bytes:
    """A file the description names (``source``, 0.4's ``weights``... too), checked against its sha256."""
    source = str(entry.get("source", ""))
    if "://" in source:
        raise PackageError(f"{path}: {source} lies outside the package; napari-unetseg reads only packaged files")
    try:
        data = archive.read(source.lstrip("./"))
    except KeyError:
        raise PackageError(f"{path}: {source!r} is named in the description but missing from the zip") from None
    expected = entry.get("sha256")
    if expected and hashlib.sha256(data).hexdigest() != expected:
        raise PackageError(f"{path}: {source} does not match its sha256 (damaged or edited)")
    return data


def _own_checkpoint(archive: zipfile.ZipFile, rdf: dict[str, Any], own: dict[str, Any], path: Path) -> Checkpoint:
    """One of our exports: the state dict in our own architecture, with the metadata from ``config``."""
    if not isinstance(own, dict) or own.get("config_version", 0) > CONFIG_VERSION:
        raise PackageError(f"{path}: exported by a newer napari-unetseg; please upgrade")
    data = _read(archive, rdf["weights"]["pytorch_state_dict"], path)
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception:  # PyTorch's message advises weights_only=False: never quote it
        raise PackageError(f"{path}: the state dict holds something other than weights; refused") from None
    payload = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "config": own.get("network"),
               "info": own.get("info"), "state_dict": state}
    return checkpoint_from_payload(payload, path)


def _foreign_checkpoint(archive: zipfile.ZipFile, rdf: dict[str, Any], path: Path, trust: bool) -> Checkpoint:
    """Another tool's 2D probability network, run from its ONNX (or trusted torchscript) weights as a semantic model."""
    inputs, outputs = rdf.get("inputs") or [], rdf.get("outputs") or []
    if len(inputs) != 1 or len(outputs) != 1:
        raise PackageError(f"{path}: {len(inputs)} inputs and {len(outputs)} outputs; napari-unetseg runs "
                           "networks with one image in and one probability map out")
    tensor_in, tensor_out = inputs[0], outputs[0]
    axes_in, axes_out = _axes(tensor_in, path), _axes(tensor_out, path)
    low, high = _percentiles(tensor_in, path)
    steps = [s for s in tensor_out.get("postprocessing") or [] if _step_id(s) not in _NO_OPS]
    if steps:
        raise PackageError(f"{path}: output postprocessing {_step_id(steps[0])!r} is not supported")
    weights = rdf.get("weights") or {}
    kind = "onnx" if "onnx" in weights else "torchscript" if "torchscript" in weights and trust else None
    if kind is None:
        formats = ", ".join(weights) or "none"
        advice = (f"; its torchscript weights are code: set {TRUST_ENV}=1 to run them if you trust the package's "
                  "author" if "torchscript" in weights else "")
        raise PackageError(f"{path}: no ONNX weights (it has {formats}){advice}")
    size_min, size_step = _input_size(tensor_in, axes_in, path)
    channels = _channels(tensor_in, axes_in, "channel")
    network = PackagedNetwork(kind, _read(archive, weights[kind], path), axes_in, axes_out, channels,
                              size_min, size_step, _halo(tensor_out))
    classes = _channels(tensor_out, axes_out, "class")
    names = classes if network.num_classes == len(classes) else ["background", *classes]
    info = ModelInfo(
        mode="semantic", class_names=names, normalization={"low": low, "high": high},
        name=str(rdf.get("name") or path.stem), description=str(rdf.get("description") or ""),
        training={"data": f"bioimage.io package {path.name}", "source": "bioimage.io", "weights": kind},
    )
    return Checkpoint(model=network.check(path), info=info, path=path)


def _step_id(step: dict[str, Any]) -> str:
    return str(step.get("id") or step.get("name"))


def _axes(tensor: dict[str, Any], path: Path) -> str:
    """A tensor's axes as letters (``bcyx``) from spec 0.5 axis lists or 0.4 strings; 2D layouts only."""
    raw = tensor.get("axes")
    if isinstance(raw, str):
        letters = raw.lower()
    else:
        kinds = {"batch": "b", "channel": "c", "time": "t", "index": "i"}
        letters = "".join(kinds.get(a.get("type"), str(a.get("id", "?"))[:1]) for a in raw or [])
    if "z" in letters or "t" in letters:
        raise PackageError(f"{path}: a 3D or time-lapse network (axes {letters}); napari-unetseg runs 2D planes "
                           "(axes bcyx or byx)")
    if letters not in ("bcyx", "byx"):
        raise PackageError(f"{path}: tensor {tensor.get('id') or tensor.get('name')} has axes {letters!r}; "
                           "napari-unetseg runs 2D networks with axes bcyx or byx")
    return letters


def _percentiles(tensor: dict[str, Any], path: Path) -> tuple[float, float]:
    """The percentiles of the package's ``scale_range``; other preprocessing cannot be reproduced: refused."""
    found = None
    for step in tensor.get("preprocessing") or []:
        kind, kwargs = _step_id(step), step.get("kwargs") or {}
        if kind in _NO_OPS:
            continue
        if kind == "scale_range" and found is None and kwargs.get("mode", "per_sample") == "per_sample" \
                and not kwargs.get("reference_tensor"):
            found = (float(kwargs.get("min_percentile", 0.0)), float(kwargs.get("max_percentile", 100.0)))
        elif kind == "clip" and found is not None and kwargs.get("min", -math.inf) <= CLIP_LOW \
                and kwargs.get("max", math.inf) >= CLIP_HIGH:
            continue  # no tighter than the clip that follows our normalisation
        else:
            raise PackageError(f"{path}: unknown preprocessing {kind!r} {kwargs}; napari-unetseg reproduces "
                               f"only scale_range per image (then clip to at least [{CLIP_LOW}, {CLIP_HIGH}])")
    if found is None:
        raise PackageError(f"{path}: the input has no scale_range preprocessing; napari-unetseg feeds networks "
                           "percentile-normalised planes only")
    if not 0 <= found[0] < found[1] <= 100:
        raise PackageError(f"{path}: scale_range percentiles {found} are not 0 <= min < max <= 100")
    return found


def _input_size(tensor: dict[str, Any], axes: str, path: Path) -> tuple[int, int]:
    """The smallest input plane side and the step between valid sides (spec 0.5 ``size`` or 0.4 ``shape``)."""
    sizes = []
    raw = tensor.get("axes")
    if isinstance(raw, list):
        sizes = [a.get("size") for a in raw if a.get("type") == "space"]
    elif isinstance(tensor.get("shape"), dict):
        shape = tensor["shape"]
        sizes = [{"min": m, "step": s} for m, s, a in zip(shape["min"], shape["step"], axes) if a in "yx"]
    pairs = set()
    for size in sizes:
        if isinstance(size, dict) and "min" in size:
            pairs.add((int(size["min"]), int(size.get("step") or 1)))
        elif isinstance(size, int) or isinstance(tensor.get("shape"), list):
            raise PackageError(f"{path}: the network takes one fixed plane size only; napari-unetseg needs a "
                               "network that takes planes of (almost) any size")
    return max(pairs) if pairs else (1, 1)


def _channels(tensor: dict[str, Any], axes: str, what: str) -> list[str]:
    """Channel names of a tensor (``raw`` / ``class 1``... when unnamed); one for tensors without a channel axis."""
    raw = tensor.get("axes")
    if "c" not in axes:
        return [str(tensor.get("id") or tensor.get("name") or "foreground")] if what == "class" else ["raw"]
    if isinstance(raw, list):
        axis = next(a for a in raw if a.get("type") == "channel")
        if axis.get("channel_names"):
            return [str(name) for name in axis["channel_names"]]
        count = int(axis.get("size", 1)) if isinstance(axis.get("size"), int) else 1
    else:
        shape = tensor.get("shape")
        count = int(shape[axes.index("c")]) if isinstance(shape, list) else 1
    return [f"{what} {k}" for k in range(1, count + 1)]


def _halo(tensor: dict[str, Any]) -> int:
    raw = tensor.get("axes")
    halos = [int(a.get("halo") or 0) for a in raw if isinstance(a, dict)] if isinstance(raw, list) else []
    halos += [int(h) for h in tensor.get("halo") or []]
    return max([DEFAULT_HALO, *halos])


class PackagedNetwork(nn.Module):
    """A package's ONNX (or torchscript) network behind :class:`~.model.UNet`'s interface, for the engine.

    ``forward`` maps ``(N, C, H, W)`` float32 to log-probabilities ``(N, K, H, W)`` (so the engine's
    softmax gives the package's probabilities back), mirror-padding planes to a size the network takes.
    The graph is kept as a buffer, so caches keyed by the weights (:func:`~.cache.network_sha256`)
    tell packages apart. It runs on the CPU whatever the engine's device.
    """

    runs_itself = True  # :func:`~.predictor.make_fast_model`: no export, no autocast of our own

    def __init__(self, kind: str, graph: bytes, axes_in: str, axes_out: str, channels: list[str], size_min: int,
                 size_step: int, halo: int) -> None:
        super().__init__()
        self.register_buffer("graph", torch.frombuffer(bytearray(graph), dtype=torch.uint8))
        self.kind = kind
        if kind == "onnx":
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.intra_op_num_threads = torch.get_num_threads()
            self.session = onnxruntime.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        else:
            self.script = torch.jit.load(io.BytesIO(graph), map_location="cpu").eval()
        self.axes_in, self.axes_out, self.halo = axes_in, axes_out, halo
        self.size_min, self.size_step = size_min, size_step
        depth = int(math.log2(size_step)) if size_step & (size_step - 1) == 0 else 0
        self.config = {"in_channels": len(channels), "num_classes": 0, "base_channels": 32, "depth": depth,
                       "padding": "same"}

    def __deepcopy__(self, memo: dict) -> "PackagedNetwork":
        return self  # nothing to copy: it is never trained, and ONNX Runtime sessions cannot be copied

    def _not_trainable(self, *_: object, **__: object) -> NoReturn:
        raise ValueError("another tool's bioimage.io network cannot be fine-tuned here; start from a napari-unetseg "
                         "model (a built-in, a checkpoint or one of our own exports)")

    keep_norm_statistics = freeze_encoder = unfreeze_encoder = reset_head = encoder_parameters = _not_trainable

    def train(self, mode: bool = True) -> "PackagedNetwork":
        """Evaluation mode only: the network is not ours to train."""
        if mode:
            self._not_trainable()
        return super().train(False)

    @property
    def depth(self) -> int:
        return self.config["depth"]

    @property
    def in_channels(self) -> int:
        return self.config["in_channels"]

    @property
    def num_classes(self) -> int:
        return self.config["num_classes"]

    def context_margin(self) -> int:
        return self.halo

    def output_size(self, size: int) -> int:
        return size

    def check(self, path: Path) -> "PackagedNetwork":
        """Run the network once on a blank plane: count its classes and check it keeps the plane's size."""
        side = self._valid_side(64)
        try:
            out = self._probabilities(np.zeros((1, self.in_channels, side, side), np.float32))
        except Exception as exc:  # ONNX Runtime's errors share no base class
            raise PackageError(f"{path}: the {self.kind} network does not run ({str(exc).splitlines()[0]})") from None
        if out.shape[0] != 1 or out.shape[2:] != (side, side):
            raise PackageError(f"{path}: the network maps a {side} x {side} plane to shape {out.shape}; "
                               "napari-unetseg needs probabilities of the input's size")
        self.config["num_classes"] = out.shape[1]
        return self

    def _valid_side(self, side: int) -> int:
        """The smallest side >= ``side`` the network takes."""
        if side <= self.size_min:
            return self.size_min
        return self.size_min + math.ceil((side - self.size_min) / self.size_step) * self.size_step

    def _probabilities(self, batch: np.ndarray) -> np.ndarray:
        """``(N, C, H, W)`` -> ``(N, K, H, W)`` probabilities (one channel p becomes 1 - p, p)."""
        height, width = batch.shape[-2:]
        pad = [(0, 0), (0, 0), (0, self._valid_side(height) - height), (0, self._valid_side(width) - width)]
        batch = np.pad(batch, pad, mode="symmetric") if any(p[1] for p in pad) else batch
        feed = batch[:, 0] if self.axes_in == "byx" else batch
        out = self._run(np.ascontiguousarray(feed, np.float32))
        if self.axes_out == "byx":
            out = out[:, None]
        if out.shape[1] == 1:
            out = np.concatenate([1 - out, out], axis=1)
        return out[..., :height, :width]

    def _run(self, feed: np.ndarray) -> np.ndarray:
        if self.kind == "onnx":
            name = self.session.get_inputs()[0].name
            return np.asarray(self.session.run(None, {name: feed})[0], np.float32)
        with torch.inference_mode():
            return self.script(torch.from_numpy(feed)).float().numpy()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probabilities = self._probabilities(x.detach().float().cpu().numpy())
        return torch.from_numpy(np.log(np.clip(probabilities, 1e-12, None))).to(x.device)
