"""Train or fine-tune a U-Net from painted annotations (usually a few strokes on one plane).

The annotation convention and the targets derived from it are in :mod:`.targets`: 0 = not
annotated, 1 = background, objects >= 2 (instance mode) or label k = class k (semantic mode).
"""

from __future__ import annotations

import copy
import datetime as _dt
import math
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import asdict, replace
from typing import Any

import numpy as np
import torch

from .augment import augment_intensity, patch_coordinates, sample_image, sample_labels
from .checkpoint import MODES, Checkpoint, ModelInfo
from .device import get_device
from .engine_settings import EngineSettings
from .predictor import PlanePredictor
from .metrics import painted_object_score
from .model import UNet, nearest_valid_size
from .precision import CHANGING_WEIGHTS_BACKEND, VALIDATION_PRECISION, training_autocast
from .targets import (
    IGNORE,
    class_weights,
    closed_objects,
    derive_targets,
    separation_weights,
    soft_cross_entropy,
    weight_map,
    weighted_cross_entropy,
)
from .training_data import (
    annotated_planes,
    as_pairs,
    check_classes,
    class_names,
    compact_object_ids,
    describe,
    painted_diameter,
    painted_values,
    resolve_parent,
)
from .training_types import AGREES_ABOVE, IMPROVEMENT_MARGIN, TOLERANCE, TrainConfig, TrainProgress, TrainResult
from .validation import HeldOut

__all__ = ["Trainer", "TrainConfig", "TrainProgress", "TrainResult", "iter_train", "train"]

# ---------------------------------------------------------------------------- the schedule


def _lr_factor(step: int, warmup: int, progress: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 5% as ``progress`` goes 0 -> 1."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.05 + 0.475 * (1 + math.cos(math.pi * min(1.0, progress)))


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


# ---------------------------------------------------------------------------- the trainer


class Trainer:
    """Checks the input and prepares data and model on construction (``ValueError`` for bad
    input), trains in :meth:`steps`, and gives the best weights so far from :meth:`result`.

    ``model``: ``None`` (a new network), a :class:`Checkpoint`, a checkpoint path or built-in
    name, or a bare :class:`UNet`; it is copied, never modified. ``options`` override fields of
    ``config`` (see :class:`TrainConfig`). ``scorer`` (optional) replaces the score on held-out
    painted data as the score that picks the best weights: it gets the current network as a
    :class:`Checkpoint` (eval mode) and returns a number, higher is better; a recipe can, for
    example, segment whole held-out planes and score them the way the model will be judged.

    When fine-tuning (same mode and classes as the parent), the parent first segments every
    annotated plane: its labels tell objects painted whole from strokes (see
    :func:`~.targets.closed_objects`), and its probabilities are kept as soft targets on the
    unpainted pixels (``distillation``).
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
        parent, self.parent_info = resolve_parent(model)
        self.mode = cfg.mode or (self.parent_info.mode if self.parent_info else "instance")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if cfg.freeze_encoder and parent is None:
            raise ValueError("freeze_encoder=True needs a trained model to fine-tune")
        parent_norm = self.parent_info.normalization if self.parent_info else None
        self.normalization = dict(cfg.normalization or parent_norm or {"low": 1.0, "high": 99.8})
        pairs = as_pairs(image, annotation)
        if self.mode == "instance":
            pairs = [(img, compact_object_ids(ann)) for img, ann in pairs]
        self.planes = annotated_planes(pairs, self.normalization)
        values = painted_values(self.planes)
        self.class_names = class_names(self.mode, max(values), cfg.class_names, self.parent_info)
        self.device = get_device(cfg.device)
        torch.manual_seed(cfg.seed)
        self.model, self.head_reset = _setup_model(parent, self.parent_info, self.mode, len(self.class_names), cfg)
        self.fine_tuning = parent is not None and not self.head_reset
        check_classes(self.mode, values, keeps_parent_view=self.fine_tuning and cfg.distillation > 0)
        self.data = describe(pairs, self.planes, self.mode)
        self._derive_targets()
        self.rng = np.random.default_rng(cfg.seed)
        self.held_out = HeldOut(self.planes, self.mode, self.model, cfg.validation_fraction, cfg.validation_blocks,
                                self.rng)
        self._prepare_weights()
        self.model.to(self.device)
        self.in_size, self.out_size = self._patch_sizes(cfg.patch_size)
        self._setup_optimizer(parent is None)
        self.scorer = scorer
        self.history: list[TrainProgress] = []
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_iteration, self.best_metric, self.last_val, self.stopped, self.done = 0, -math.inf, None, False, 0
        self.parent_score: float | None = None
        self.best_tried = -math.inf  # the best validation score of any trained weights, kept or not

    def _derive_targets(self) -> None:
        """Targets per plane; when fine-tuning, the parent's view of each plane first (see the class doc)."""
        keep_view = self.fine_tuning and self.config.distillation > 0
        predictor = None
        if self.fine_tuning and (keep_view or self.mode == "instance"):
            predictor = self._predictor(self.model)
        fits: list[tuple[float, int]] = []  # the parent's score on each plane's painting, and its weight
        for p in self.planes:
            reference = None
            if predictor is not None:
                probabilities = predictor.probabilities([p.image[None]])[0].astype(np.float32)
                if keep_view:
                    p.parent_probabilities = probabilities
                    p.unpainted = p.annotation == 0
                if self.mode == "instance":
                    reference = predictor.labels(probabilities)
            if self.mode == "instance":
                p.closed = closed_objects(p.annotation, reference)
            if reference is not None:
                fits.append((painted_object_score(reference, p.annotation, p.closed), len(np.unique(p.annotation))))
            p.targets = derive_targets(p.annotation, self.mode, p.closed)
        scores, weights = zip(*fits) if fits else ((), ())
        self.parent_fit = float(np.average(scores, weights=weights)) if fits else None

    def _predictor(self, network: UNet) -> PlanePredictor:
        """Segments normalised planes with ``network`` as users will get them, in float32 with PyTorch
        (weights change at every call: nothing to gain from an exported graph)."""
        info = ModelInfo(self.mode, list(self.class_names), dict(self.normalization))
        settings = EngineSettings(device=str(self.device), precision=VALIDATION_PRECISION, backend=CHANGING_WEIGHTS_BACKEND)
        return PlanePredictor(Checkpoint(network.eval(), info), settings)

    def _prepare_weights(self) -> None:
        """Loss weights per plane (class balance from all training pixels) and sampling odds."""
        wc = class_weights(np.concatenate([p.targets.ravel() for p in self.planes]), len(self.class_names))
        for p in self.planes:
            if self.mode == "instance":
                p.weights = weight_map(p.annotation, self.config.w0, self.config.sigma, wc, targets=p.targets)
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
        if self.fine_tuning and cfg.keep_norm_statistics:
            self.model.keep_norm_statistics()
        if cfg.freeze_encoder:
            self.model.freeze_encoder()
        self.base_lr = cfg.learning_rate or (1e-3 if new_network else 5e-4)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=self.base_lr, weight_decay=cfg.weight_decay)
        cuda = self.device.type == "cuda"
        autocast = training_autocast(self.device, cfg.amp, cfg.cpu_bf16)
        self.autocast_dtype, self.use_autocast = autocast or torch.float32, autocast is not None
        self.scaler = torch.amp.GradScaler("cuda", enabled=cuda and cfg.amp)

    # -- batches and validation

    def _sample(self) -> tuple[np.ndarray, ...]:
        """One augmented patch around a random painted pixel: image, targets, weights and, when the
        parent's view is kept, its probabilities ``(K, h, w)`` and the mask of pixels they apply to."""
        rng, aug = self.rng, self.config.augment
        plane = self.train_planes[rng.choice(len(self.train_planes), p=self.plane_odds)]
        y, x = divmod(int(plane.pixels[rng.integers(plane.pixels.size)]), plane.targets.shape[1])
        jitter = rng.integers(-(self.out_size // 4), self.out_size // 4 + 1, size=2)
        coords = patch_coordinates((self.in_size, self.in_size), (y + jitter[0], x + jitter[1]), rng, aug)
        m = (self.in_size - self.out_size) // 2
        inner = coords[:, m : m + self.out_size, m : m + self.out_size]
        image = augment_intensity(sample_image(plane.image, coords), rng, aug)
        sample = (image, sample_labels(plane.targets, inner, IGNORE), sample_labels(plane.weights, inner, 0.0))
        if plane.parent_probabilities is None:
            return sample
        soft = np.stack([sample_image(channel, inner) for channel in plane.parent_probabilities])
        return (*sample, soft, sample_labels(plane.unpainted, inner, False))

    def _batch(self) -> list[torch.Tensor]:
        """Stacked samples on the device: images ``(B, 1, H, W)``, then the per-pixel maps."""
        samples = [self._sample() for _ in range(self.config.batch_size)]
        stacked = [torch.from_numpy(np.stack(a)).to(self.device) for a in zip(*samples)]
        stacked[0] = stacked[0][:, None]
        return stacked

    def _loss(self, logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor,
              soft: torch.Tensor | None = None, unpainted: torch.Tensor | None = None) -> torch.Tensor:
        """The painted pixels' loss, plus ``distillation`` x the parent's view where nothing is painted."""
        loss = weighted_cross_entropy(logits, targets, weights)
        if soft is None:
            return loss
        return loss + self.config.distillation * soft_cross_entropy(logits, soft, unpainted)

    @property
    def validates(self) -> bool:
        """Whether training scores held-out data to pick the best weights."""
        return bool(self.held_out) or self.scorer is not None

    def validate(self) -> float:
        """The ``scorer``'s score, else the :class:`~.validation.HeldOut` score (model left in eval mode)."""
        self.model.eval()
        if self.scorer is not None:
            with torch.no_grad():
                return float(self.scorer(Checkpoint(model=self.model, info=self._info())))
        autocast = torch.autocast(self.device.type, self.autocast_dtype, enabled=self.use_autocast)
        return self.held_out.score(self.model, self._predictor, autocast)

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
        images, *maps = self._batch()
        self.model.train()
        with torch.autocast(self.device.type, self.autocast_dtype, enabled=self.use_autocast):
            logits = self.model(images)
        loss = self._loss(logits, *maps)
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
        Best weights: highest validation score, else lowest smoothed training loss. When
        fine-tuning, the parent is scored first and is kept unless later weights come within
        :data:`TOLERANCE`, so training never makes it worse on held-out annotations.
        Nothing is trained when the parent already reproduces the painting (:attr:`agrees`).
        """
        cfg, total = self.config, self.config.iterations
        if self.agrees:
            return
        if self.validates and self.fine_tuning and self.done == 0:
            self.parent_score = self.last_val = self.validate()
            self.best_metric = self.parent_score - TOLERANCE
            self._keep_best()
        smoothed, per_step, start, done_before = None, 0.0, time.perf_counter(), self.done
        while self.done < total:
            if should_stop is not None and should_stop():
                self.stopped = True
                if self.validates and self.history and not self.history[-1].validated:
                    self._score(self.validate())  # the weights a user stopped at get their chance
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
                best = self._score(self.validate())
            else:
                best = not self.validates and self._score(-smoothed)
            lr = self.optimizer.param_groups[0]["lr"]
            progress = TrainProgress(self.done, total, loss, self.last_val, self.elapsed(), best, validated, lr)
            self.history.append(progress)
            yield progress

    def _score(self, metric: float) -> bool:
        """Record the current weights' score (validation, or minus the smoothed loss); keep them if best."""
        if self.validates:
            self.last_val = metric
            self.best_tried = max(self.best_tried, metric)
        best = math.isfinite(metric) and metric > self.best_metric
        if best:
            self.best_metric = metric
            self._keep_best()
        return best

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
        model.unfreeze_encoder()
        return TrainResult(model.eval(), self._info(), list(self.history), self.best_iteration, self.stopped,
                           self.parent_score, self._verdict())

    @property
    def agrees(self) -> bool:
        """Whether the parent already reproduces the painting, so training is skipped (:data:`AGREES_ABOVE`)."""
        return self.parent_fit is not None and self.parent_fit >= AGREES_ABOVE

    def _verdict(self) -> str | None:
        """See :class:`TrainResult`."""
        if self.agrees:
            return "agrees"
        if self.parent_score is None:
            return None
        if self.best_iteration == 0:
            return "worse"
        return "better" if self.best_metric > self.parent_score + IMPROVEMENT_MARGIN else "as good"

    def _info(self) -> ModelInfo:
        cfg, parent = self.config, self.parent_info
        parent_name = parent.name if parent else None
        name = cfg.name or (f"{parent_name}-finetuned" if parent_name else f"unet-{self.mode}")
        metrics: dict[str, Any] = {"final_loss": self.history[-1].loss if self.history else None}
        best = self.best_metric if math.isfinite(self.best_metric) else None
        if self.parent_score is not None and self.best_iteration == 0:
            best = self.parent_score  # the parent's own score, not the bar it set
        if self.validates:
            metrics["val_score"] = best
            metrics["val_kind"] = "scorer" if self.scorer else self.held_out.kind
        if self.parent_fit is not None:
            metrics["parent_painting_score"] = self.parent_fit
        if self.parent_score is not None:
            metrics["parent_val_score"] = self.parent_score
            metrics["best_trained_val_score"] = self.best_tried if math.isfinite(self.best_tried) else None
            metrics["verdict"] = self._verdict()
        metrics.update(self.held_out.summary())
        settings = {k: v for k, v in asdict(cfg).items() if k not in ("augment", "class_names", "name", "description")}
        training = {
            "data": self.data["summary"], "data_details": self.data, "iterations": self.done,
            "best_iteration": self.best_iteration, "metrics": metrics, "parent": parent_name,
            "head_reset": self.head_reset, "seconds": round(self.elapsed(), 1), "stopped": self.stopped,
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "settings": settings,
        }
        return ModelInfo(self.mode, list(self.class_names), dict(self.normalization), name, cfg.description, training,
                         object_diameter=self._object_diameter())

    def _object_diameter(self) -> float | None:
        """The objects' size for 3D rescaling: of the objects painted whole, else the parent's (same mode)."""
        if self.mode != "instance":
            return None
        measured = painted_diameter(self.planes)
        parent = self.parent_info
        if measured is None and parent is not None and parent.mode == self.mode:
            return parent.object_diameter
        return measured


def preload() -> None:
    """Do the first fine-tuning's one-time work now: PyTorch's first optimizer imports ``torch._dynamo``
    (about 1 s of Python). The widget runs this in a background thread as it opens, so that the import
    does not hold Python's lock, and stall napari, in the middle of a job."""
    torch.optim.AdamW([torch.zeros(1, requires_grad=True)])


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
