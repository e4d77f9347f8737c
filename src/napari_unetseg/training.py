"""Train or fine-tune a U-Net from painted annotations (usually a few strokes on one plane).

The annotation convention and the targets derived from it are in :mod:`.targets`: 0 = not
annotated, 1 = background, objects >= 2 (instance mode) or label k = class k (semantic mode).
"""

from __future__ import annotations

import copy
import datetime as _dt
import math
import os
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import asdict, dataclass, field, replace
from numbers import Integral, Real
from typing import Any

import numpy as np
import torch

from .augment import AugmentConfig, augment_intensity, patch_coordinates, sample_image, sample_labels
from .checkpoint import INSTANCE_CLASSES, MODES, Checkpoint, ModelInfo
from .device import get_device
from .model import UNet, nearest_valid_size
from .normalize import check_image, normalize_plane
from .targets import (
    IGNORE,
    check_labels,
    class_weights,
    derive_targets,
    mean_iou,
    separation_weights,
    weight_map,
    weighted_cross_entropy,
)

VAL_BLOCK = 32  # side of the square blocks of painted pixels held out for validation
MAX_CLASSES = 255  # semantic results are uint8 class maps

# ---------------------------------------------------------------------------- options and results


@dataclass
class TrainConfig:
    """Training options. ``mode=None``: the parent model's mode, else ``"instance"``.

    ``learning_rate=None``: 1e-3 for a new network, 5e-4 when fine-tuning. ``patch_size``: side
    of the labelled patches. ``validation_fraction``: share of painted pixels (whole planes with
    4+ annotated planes) held out to pick the best weights, scored on at most ``validation_blocks``
    blocks of 32x32 px (more: a steadier score, slower validation). ``freeze_encoder``: train only the
    decoder (~1.4x faster on a CPU, but adapts less to new-looking images). ``cpu_bf16``:
    bfloat16 autocast on the CPU (~1.4x faster on CPUs with native bf16, slower elsewhere).
    ``separated_class`` (semantic mode): a label whose touching regions the other classes separate
    (EM: 2 = cell); thin separators then get the paper's border weight (``w0``, ``sigma``), as
    instance mode always does. ``base_channels`` / ``depth`` shape a network trained from scratch.
    Runs limited by ``iterations`` are reproducible on the CPU for a given ``seed``; with ``max_seconds`` the
    learning-rate decay follows the clock, and at least one iteration runs however short the budget.
    ``iterations`` < 1 and ``max_seconds`` <= 0 are refused (ValueError): they would save untrained weights.
    """

    mode: str | None = None
    class_names: list[str] | None = None
    iterations: int = 300
    max_seconds: float | None = None
    patch_size: int = 128
    batch_size: int = 4
    learning_rate: float | None = None
    weight_decay: float = 1e-4
    warmup_iterations: int = 20
    freeze_encoder: bool = False
    validation_fraction: float = 0.15
    validate_every: int = 25
    validation_blocks: int = 32
    w0: float = 10.0
    sigma: float = 5.0
    separated_class: int | None = None
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    cpu_bf16: bool = False
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    base_channels: int = 16
    depth: int = 4
    normalization: dict[str, float] | None = None
    name: str = ""
    description: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.iterations, bool) or not isinstance(self.iterations, Integral) or self.iterations < 1:
            raise ValueError(f"iterations must be a whole number >= 1, got {self.iterations!r}")
        if self.max_seconds is not None and not (isinstance(self.max_seconds, Real) and self.max_seconds > 0):
            raise ValueError(f"max_seconds must be a positive number of seconds (or None), got {self.max_seconds!r}")


@dataclass(frozen=True)
class TrainProgress:
    """State after one iteration. ``val_score``: latest mean IoU on held-out painted pixels, or the
    trainer's ``scorer`` score (None without validation); ``validated``: measured at this iteration;
    ``best_so_far``: these weights are now the ones kept; ``seconds``: since the trainer was created."""

    iteration: int
    total_iterations: int
    loss: float
    val_score: float | None
    seconds: float
    best_so_far: bool
    validated: bool = False
    learning_rate: float = 0.0


@dataclass
class TrainResult:
    """The trained network (best weights, eval mode, CPU), its metadata and the history."""

    model: UNet
    info: ModelInfo
    history: list[TrainProgress]
    best_iteration: int
    stopped: bool

    def checkpoint(self) -> Checkpoint:
        return Checkpoint(model=self.model, info=self.info)


# ---------------------------------------------------------------------------- preparing the data


@dataclass
class _Plane:
    image: np.ndarray  # normalised float32 (Y, X)
    annotation: np.ndarray
    targets: np.ndarray  # training targets, IGNORE where unused
    val_targets: np.ndarray | None = None  # held-out targets, IGNORE elsewhere
    weights: np.ndarray | None = None
    pixels: np.ndarray | None = None  # flat indices of the training pixels


def _as_pairs(image: Any, annotation: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    """Validated ``(image, annotation)`` arrays; lists or tuples of arrays give several pairs."""
    if isinstance(image, (list, tuple)):
        if not isinstance(annotation, (list, tuple)) or len(annotation) != len(image):
            raise ValueError("give as many annotations as images")
        return [pair for img, ann in zip(image, annotation) for pair in _as_pairs(img, ann)]
    img, ann = np.asarray(image), np.asarray(annotation)
    check_image(img)
    check_labels(ann)
    if img.ndim == ann.ndim + 1 and img.shape[-1] in (3, 4) and img.shape[:-1] == ann.shape:
        img = np.nanmean(img.astype(np.float32), axis=-1)  # RGB(A) -> grey, as inference does
    if img.shape != ann.shape:
        raise ValueError(f"image shape {img.shape} and annotation shape {ann.shape} differ")
    if not 2 <= img.ndim <= 4:
        raise ValueError(f"need 2D (Y,X), 3D (Z,Y,X) or 4D (T,Z,Y,X) data, got shape {img.shape}")
    return [(img, ann)]


def _compact_object_ids(annotation: np.ndarray) -> np.ndarray:
    """An instance annotation with its object ids renumbered 2, 3, ... in order (0 and 1 kept).

    Ids may be any integers (e.g. from another tool, near 2**31): after this nothing downstream
    depends on the largest id, only on the number of objects. The annotation is not modified.
    """
    objects = annotation >= 2
    ids, inverse = np.unique(annotation[objects], return_inverse=True)
    if ids.size == 0 or int(ids[-1]) == ids.size + 1:  # no objects, or already 2..n+1
        return annotation
    out = np.where(objects, 0, annotation).astype(np.min_scalar_type(ids.size + 1))
    out[objects] = inverse + 2
    return out


def _annotated_planes(pairs: list[tuple[np.ndarray, np.ndarray]], mode: str, norm: dict[str, float]) -> list[_Plane]:
    """Every 2D plane with painted pixels, normalised like inference does (blank planes -> 0)."""
    planes = []
    for img, ann in pairs:
        shape = ann.shape[-2:]
        for img_plane, ann_plane in zip(img.reshape(-1, *shape), ann.reshape(-1, *shape)):
            if ann_plane.any():
                normed = normalize_plane(img_plane, norm.get("low", 1.0), norm.get("high", 99.8))
                normed = np.zeros(shape, np.float32) if normed is None else normed
                planes.append(_Plane(normed, ann_plane, derive_targets(ann_plane, mode)))
    if not planes:
        raise ValueError("nothing is annotated: paint some pixels (1 = background, 2+ = objects or classes)")
    return planes


def _check_classes(mode: str, values: set[int]) -> None:
    if mode == "semantic" and max(values) > MAX_CLASSES:
        raise ValueError(f"semantic labels are classes 1..{MAX_CLASSES}, but label {max(values)} is annotated")
    if mode == "semantic" and len(values) < 2:
        raise ValueError(f"semantic mode needs at least 2 classes annotated, found only label(s) {sorted(values)}")
    if mode == "instance" and not any(v >= 2 for v in values):
        raise ValueError("instance mode needs at least one object painted with an id >= 2")
    if mode == "instance" and 1 not in values:
        raise ValueError("instance mode needs some background painted with label 1")


def _class_names(mode: str, max_label: int, config: TrainConfig, parent: ModelInfo | None) -> list[str]:
    if mode == "instance":
        return list(INSTANCE_CLASSES)
    if config.class_names:
        if len(config.class_names) < max_label:
            raise ValueError(f"{len(config.class_names)} class names given but label {max_label} is annotated")
        return list(config.class_names)
    names = list(parent.class_names) if parent is not None and parent.mode == "semantic" else []
    return names + [f"class {k}" for k in range(len(names) + 1, max_label + 1)]


def _resolve_parent(model: Any) -> tuple[UNet | None, ModelInfo | None]:
    if model is None or isinstance(model, UNet):
        return model, None
    if isinstance(model, (str, os.PathLike)):
        from .models import resolve_model  # local import: the registry reads package files

        model = resolve_model(model)
    if isinstance(model, Checkpoint):
        return model.model, model.info
    raise ValueError(f"model must be a Checkpoint, a UNet, a path or a built-in name, got {type(model).__name__}")


def _setup_model(parent: UNet | None, info: ModelInfo | None, mode: str, n: int, cfg: TrainConfig) -> tuple[UNet, bool]:
    """A copy of the parent (output layer re-initialised if mode or class count differ) or a new UNet."""
    if parent is None:
        return UNet(num_classes=n, base_channels=cfg.base_channels, depth=cfg.depth), True
    if parent.in_channels != 1:
        raise ValueError(f"training supports single-channel models, this one takes {parent.in_channels} channels")
    model = copy.deepcopy(parent)
    reset = model.num_classes != n or (info is not None and info.mode != mode)
    if reset:
        model.reset_head(n)
    return model, reset


def _split_validation(
    planes: list[_Plane], fraction: float, max_blocks: int, rng: np.random.Generator
) -> list[tuple[int, int, int]]:
    """Hold out painted pixels for validation (in place); return the scored blocks (plane, top, left).

    With 4+ annotated planes whole planes are held out, else random 32 px blocks holding about
    ``fraction`` of the painted pixels (blocks rather than single pixels, so that held-out pixels
    are not just neighbours of training pixels). Nothing is held out with too little annotation
    (< 400 pixels or < 3 blocks) or when training would lose a class.
    """
    counts = [{(y, x): int((p.targets[y : y + VAL_BLOCK, x : x + VAL_BLOCK] >= 0).sum())
               for y in range(0, p.targets.shape[0], VAL_BLOCK) for x in range(0, p.targets.shape[1], VAL_BLOCK)}
              for p in planes]
    blocks = [(k, y, x) for k, c in enumerate(counts) for (y, x), n in c.items() if n]
    total = sum(sum(c.values()) for c in counts)
    if fraction <= 0 or total < 400 or len(blocks) < 3:
        return []
    classes = set(np.unique(np.concatenate([p.targets.ravel() for p in planes])).tolist())
    for _ in range(10):
        order = [blocks[i] for i in rng.permutation(len(blocks))]
        if len(planes) >= 4:
            held = set(rng.permutation(len(planes))[: max(1, round(fraction * len(planes)))].tolist())
            masks = [np.full(p.targets.shape, k in held) for k, p in enumerate(planes)]
            chosen = [b for b in order if b[0] in held]
        else:
            masks, chosen, held_pixels = [np.zeros(p.targets.shape, bool) for p in planes], [], 0
            for k, y, x in order:
                if held_pixels >= fraction * total or len(chosen) >= max_blocks:
                    break
                if held_pixels + counts[k][y, x] <= 2 * fraction * total:
                    masks[k][y : y + VAL_BLOCK, x : x + VAL_BLOCK] = True
                    held_pixels += counts[k][y, x]
                    chosen.append((k, y, x))
        kept = np.concatenate([p.targets[~m] for p, m in zip(planes, masks)])
        if chosen and set(np.unique(kept).tolist()) | {IGNORE} == classes | {IGNORE}:
            for p, m in zip(planes, masks):
                p.val_targets = np.where(m, p.targets, IGNORE).astype(np.int32)
                p.targets = np.where(m, IGNORE, p.targets).astype(np.int32)
            return chosen[:max_blocks]
    return []


def _describe(pairs: list[tuple[np.ndarray, np.ndarray]], planes: list[_Plane], mode: str) -> dict[str, Any]:
    """Plain-data summary of the training data for the checkpoint's provenance."""
    # counted sparsely: the work depends on the painted pixels, not on the largest id
    labels, counts = np.unique(np.concatenate([p.annotation[p.annotation > 0] for p in planes]), return_counts=True)
    per_label = {str(k): int(c) for k, c in zip(labels.tolist(), counts.tolist())}
    shapes = [list(img.shape) for img, _ in pairs]
    summary = f"{len(planes)} annotated plane(s) of {shapes}, {int(counts.sum())} painted pixels ({mode})"
    return {"summary": summary, "shapes": shapes, "planes": len(planes), "pixels_per_label": per_label}


def _lr_factor(step: int, warmup: int, progress: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 5% as ``progress`` goes 0 -> 1."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.05 + 0.475 * (1 + math.cos(math.pi * min(1.0, progress)))


# ---------------------------------------------------------------------------- the trainer


class Trainer:
    """Checks the input and prepares data and model on construction (``ValueError`` for bad
    input), trains in :meth:`steps`, and gives the best weights so far from :meth:`result`.

    ``model``: ``None`` (a new network), a :class:`Checkpoint`, a checkpoint path or built-in
    name, or a bare :class:`UNet`; it is copied, never modified. ``options`` override fields of
    ``config`` (see :class:`TrainConfig`). ``scorer`` (optional) replaces the mean IoU on held-out
    painted pixels as the score that picks the best weights: it gets the current network as a
    :class:`Checkpoint` (eval mode) and returns a number, higher is better; a recipe can, for
    example, segment whole held-out planes and score them the way the model will be judged.
    """

    def __init__(
        self,
        image: Any,
        annotation: Any,
        model: Any = None,
        config: TrainConfig | None = None,
        scorer: Callable[[Checkpoint], float] | None = None,
        **options: Any,
    ) -> None:
        self._start = time.perf_counter()
        cfg = self.config = replace(config or TrainConfig(), **options)
        parent, self.parent_info = _resolve_parent(model)
        self.mode = cfg.mode or (self.parent_info.mode if self.parent_info else "instance")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if cfg.freeze_encoder and parent is None:
            raise ValueError("freeze_encoder=True needs a trained model to fine-tune")
        parent_norm = self.parent_info.normalization if self.parent_info else None
        self.normalization = dict(cfg.normalization or parent_norm or {"low": 1.0, "high": 99.8})
        pairs = _as_pairs(image, annotation)
        if self.mode == "instance":
            pairs = [(img, _compact_object_ids(ann)) for img, ann in pairs]
        self.planes = _annotated_planes(pairs, self.mode, self.normalization)
        values = set(np.unique(np.concatenate([np.unique(p.annotation) for p in self.planes])).tolist()) - {0}
        _check_classes(self.mode, values)
        self.class_names = _class_names(self.mode, max(values), cfg, self.parent_info)
        self.data = _describe(pairs, self.planes, self.mode)
        self.rng = np.random.default_rng(cfg.seed)
        self.val_blocks = _split_validation(self.planes, cfg.validation_fraction, cfg.validation_blocks, self.rng)
        self._prepare_weights()
        torch.manual_seed(cfg.seed)
        self.device = get_device(cfg.device)
        self.model, self.head_reset = _setup_model(parent, self.parent_info, self.mode, len(self.class_names), cfg)
        self.model.to(self.device)
        self.in_size, self.out_size = self._patch_sizes(cfg.patch_size)
        self._setup_optimizer(parent is None)
        self._val_batch = self._validation_batch() if self.val_blocks else None
        self.scorer = scorer
        self.history: list[TrainProgress] = []
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_iteration, self.best_metric, self.last_val, self.stopped, self.done = 0, -math.inf, None, False, 0

    def _prepare_weights(self) -> None:
        """Loss weights per plane (class balance from all training pixels) and sampling odds."""
        wc = class_weights(np.concatenate([p.targets.ravel() for p in self.planes]), len(self.class_names))
        for p in self.planes:
            if self.mode == "instance":
                p.weights = weight_map(p.annotation, self.config.w0, self.config.sigma, wc)
            elif self.config.separated_class is not None:
                p.weights = separation_weights(p.annotation, self.config.separated_class, self.config.w0,
                                               self.config.sigma, wc)
            else:
                p.weights = np.where(p.targets >= 0, wc[np.maximum(p.targets, 0)], 0).astype(np.float32)
            p.pixels = np.flatnonzero(p.targets >= 0)
        self.train_planes = [p for p in self.planes if p.pixels.size]
        odds = np.sqrt([p.pixels.size for p in self.train_planes])  # sparse planes still get a say
        self.plane_odds = odds / odds.sum()

    def _patch_sizes(self, out: int) -> tuple[int, int]:
        """Input and labelled output size of a patch (smaller output for ``valid`` padding)."""
        if self.model.config["padding"] != "valid":
            return out, out
        size = nearest_valid_size(out + 2 * self.model.context_margin(), self.model.depth)
        return size, self.model.output_size(size)

    def _setup_optimizer(self, new_network: bool) -> None:
        cfg = self.config
        if cfg.freeze_encoder:
            for p in self.model.encoder_parameters():
                p.requires_grad_(False)
        self.base_lr = cfg.learning_rate or (1e-3 if new_network else 5e-4)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=self.base_lr, weight_decay=cfg.weight_decay)
        cuda = self.device.type == "cuda"
        self.autocast_dtype = torch.float16 if cuda else torch.bfloat16
        self.use_autocast = (cuda and cfg.amp) or (self.device.type == "cpu" and cfg.cpu_bf16)
        self.scaler = torch.amp.GradScaler("cuda", enabled=cuda and cfg.amp)

    # -- batches and validation

    def _sample(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One augmented (image, targets, weights) patch around a random painted pixel."""
        rng, aug = self.rng, self.config.augment
        plane = self.train_planes[rng.choice(len(self.train_planes), p=self.plane_odds)]
        y, x = divmod(int(plane.pixels[rng.integers(plane.pixels.size)]), plane.targets.shape[1])
        jitter = rng.integers(-(self.out_size // 4), self.out_size // 4 + 1, size=2)
        coords = patch_coordinates((self.in_size, self.in_size), (y + jitter[0], x + jitter[1]), rng, aug)
        m = (self.in_size - self.out_size) // 2
        inner = coords[:, m : m + self.out_size, m : m + self.out_size]
        image = augment_intensity(sample_image(plane.image, coords), rng, aug)
        return image, sample_labels(plane.targets, inner, IGNORE), sample_labels(plane.weights, inner, 0.0)

    def _batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        samples = [self._sample() for _ in range(self.config.batch_size)]
        images, targets, weights = (torch.from_numpy(np.stack(a)).to(self.device) for a in zip(*samples))
        return images[:, None], targets, weights

    def _validation_batch(self) -> tuple[torch.Tensor, np.ndarray]:
        """Inputs with context around each held-out block, and the block's held-out targets."""
        size = VAL_BLOCK + 96
        if self.model.config["padding"] == "valid":
            size = nearest_valid_size(VAL_BLOCK + 2 * self.model.context_margin(), self.model.depth)
        m = (size - VAL_BLOCK) // 2
        self._val_crop = (self.model.output_size(size) - VAL_BLOCK) // 2
        images, targets = [], []
        for k, top, left in self.val_blocks:
            coords = patch_coordinates((size, size), (top - m + size // 2, left - m + size // 2))
            images.append(sample_image(self.planes[k].image, coords))
            block = coords[:, m : m + VAL_BLOCK, m : m + VAL_BLOCK]
            targets.append(sample_labels(self.planes[k].val_targets, block, IGNORE))
        return torch.from_numpy(np.stack(images))[:, None], np.stack(targets)

    @property
    def validates(self) -> bool:
        """Whether training scores held-out data to pick the best weights."""
        return self._val_batch is not None or self.scorer is not None

    @torch.no_grad()
    def validate(self) -> float:
        """The ``scorer``'s score, else the mean IoU over classes on the held-out painted pixels
        (model left in eval mode)."""
        self.model.eval()
        if self.scorer is not None:
            return float(self.scorer(Checkpoint(model=self.model, info=self._info())))
        images, targets = self._val_batch
        c, predicted = self._val_crop, []
        for chunk in images.split(8):
            with torch.autocast(self.device.type, self.autocast_dtype, enabled=self.use_autocast):
                logits = self.model(chunk.to(self.device))
            predicted.append(logits[..., c : c + VAL_BLOCK, c : c + VAL_BLOCK].argmax(1).cpu().numpy())
        return mean_iou(np.concatenate(predicted), targets, len(self.class_names))

    # -- training

    def _set_learning_rate(self) -> None:
        """Warm-up then cosine decay over the iterations, or over the time budget if that ends first."""
        cfg = self.config
        progress = self.done / max(1, cfg.iterations)
        if cfg.max_seconds:
            progress = max(progress, self.elapsed() / cfg.max_seconds)
        warmup = max(1, min(cfg.warmup_iterations, cfg.iterations // 5))
        for group in self.optimizer.param_groups:
            group["lr"] = self.base_lr * _lr_factor(self.done, warmup, progress)

    def _step(self) -> float:
        self._set_learning_rate()
        images, targets, weights = self._batch()
        self.model.train()
        if self.config.freeze_encoder:  # frozen BatchNorm layers keep their running statistics
            self.model.inc.eval()
            self.model.downs.eval()
        with torch.autocast(self.device.type, self.autocast_dtype, enabled=self.use_autocast):
            logits = self.model(images)
        loss = weighted_cross_entropy(logits, targets, weights)
        self.optimizer.zero_grad(set_to_none=True)
        if torch.isfinite(loss):
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        return float(loss.detach())

    def _keep_best(self) -> None:
        self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.best_iteration = self.done

    def elapsed(self) -> float:
        return time.perf_counter() - self._start

    def _fits(self, seconds: float) -> bool:
        budget = self.config.max_seconds
        return budget is None or self.elapsed() + seconds <= budget

    def steps(self, should_stop: Callable[[], bool] | None = None) -> Iterator[TrainProgress]:
        """Train, yielding a :class:`TrainProgress` after every iteration.

        Ends after ``config.iterations``, before an iteration that would overrun
        ``config.max_seconds``, or when ``should_stop()`` is true (checked before each iteration).
        Best weights: highest validation score (a fine-tuned parent is scored first, so training
        never makes it worse on held-out pixels), else lowest smoothed training loss.
        """
        cfg, total = self.config, self.config.iterations
        if self.validates and not self.head_reset and self.done == 0:
            self.best_metric = self.last_val = self.validate()
            self._keep_best()
        smoothed, per_step, start, done_before = None, 0.0, time.perf_counter(), self.done
        while self.done < total:
            if should_stop is not None and should_stop():
                self.stopped = True
                return
            if self.done > done_before and not self._fits(per_step):  # the first iteration always runs
                return
            loss = self._step()
            self.done += 1
            per_step = (time.perf_counter() - start) / (self.done - done_before)
            smoothed = loss if smoothed is None else 0.9 * smoothed + 0.1 * loss
            last = self.done == total or not self._fits(per_step)
            validated = self.validates and (self.done % cfg.validate_every == 0 or last)
            if validated:
                self.last_val = self.validate()
            metric = self.last_val if self.validates else -smoothed
            best = (validated or not self.validates) and math.isfinite(metric) and metric > self.best_metric
            if best:
                self.best_metric = metric
                self._keep_best()
            lr = self.optimizer.param_groups[0]["lr"]
            progress = TrainProgress(self.done, total, loss, self.last_val, self.elapsed(), best, validated, lr)
            self.history.append(progress)
            yield progress

    @property
    def validation_planes(self) -> list[int]:
        """Indices of the annotated planes that hold pixels held out for validation."""
        return [k for k, plane in enumerate(self.planes)
                if plane.val_targets is not None and bool((plane.val_targets >= 0).any())]

    def result(self) -> TrainResult:
        """The best weights so far (the current ones if none were kept yet) with provenance."""
        model = copy.deepcopy(self.model).cpu()
        if self.best_state is not None:
            model.load_state_dict(self.best_state)
        for p in model.parameters():
            p.requires_grad_(True)
        return TrainResult(model.eval(), self._info(), list(self.history), self.best_iteration, self.stopped)

    def _info(self) -> ModelInfo:
        cfg, parent = self.config, self.parent_info
        parent_name = parent.name if parent else None
        name = cfg.name or (f"{parent_name}-finetuned" if parent_name else f"unet-{self.mode}")
        metrics: dict[str, Any] = {"final_loss": self.history[-1].loss if self.history else None}
        best = self.best_metric if math.isfinite(self.best_metric) else None
        if self.scorer is not None:
            metrics["val_score"] = best
        elif self._val_batch is not None:
            metrics["val_mean_iou"] = best
            metrics["val_pixels"] = int((self._val_batch[1] >= 0).sum())
        settings = {k: v for k, v in asdict(cfg).items() if k not in ("augment", "class_names", "name", "description")}
        training = {
            "data": self.data["summary"], "data_details": self.data, "iterations": self.done,
            "best_iteration": self.best_iteration, "metrics": metrics, "parent": parent_name,
            "head_reset": self.head_reset, "seconds": round(self.elapsed(), 1), "stopped": self.stopped,
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "settings": settings,
        }
        return ModelInfo(self.mode, list(self.class_names), dict(self.normalization), name, cfg.description, training)


def iter_train(
    image: Any, annotation: Any, model: Any = None, config: TrainConfig | None = None, **options: Any
) -> Generator[TrainProgress, None, TrainResult]:
    """Train, yielding a :class:`TrainProgress` after every iteration; returns the :class:`TrainResult`.

    A generator function, so a napari ``thread_worker`` can run it and quit at any yield (the
    return value arrives as ``StopIteration.value``). To also get the result after quitting
    early, create a :class:`Trainer`, iterate its :meth:`~Trainer.steps`, then call ``result()``.
    Bad input raises ``ValueError`` at the first ``next()``.
    """
    trainer = Trainer(image, annotation, model, config, **options)
    yield from trainer.steps()
    return trainer.result()


def train(
    image: Any,
    annotation: Any,
    model: Any = None,
    config: TrainConfig | None = None,
    *,
    progress: Callable[[TrainProgress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    **options: Any,
) -> TrainResult:
    """Train until done, out of time (``max_seconds``) or ``should_stop()``; return the best weights.

    ``progress(TrainProgress)`` is called after every iteration; ``should_stop`` is polled before
    each iteration, so a stop takes effect within one iteration.
    """
    trainer = Trainer(image, annotation, model, config, **options)
    for step in trainer.steps(should_stop):
        if progress is not None:
            progress(step)
    return trainer.result()
