"""What a training run takes and gives, as plain data: options, progress after each iteration, the result.

The widget, the CLI and the benchmarks read these without the training loop (:mod:`.training`);
:class:`TrainResult` also says in plain words whether fine-tuning improved on the parent.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from numbers import Integral, Real

from .augment import AugmentConfig
from .checkpoint import Checkpoint, ModelInfo
from .model import UNet

#: Fine-tuned weights replace the parent unless their validation score is this much below the parent's
#: (a few held-out objects score a little differently from one run to the next) ...
TOLERANCE = 0.02
#: ... and count as better than the parent when they beat its score by this much.
IMPROVEMENT_MARGIN = 0.01
#: A parent that scores at least this on everything painted (instance mode, the score of
#: :func:`~.metrics.painted_object_score`) already does what the painting asks, so no fine-tuned
#: weights could beat it by :data:`IMPROVEMENT_MARGIN`: it is kept without training, and the user is
#: asked to paint where it goes wrong. Fine-tuning on such a painting (dabs inside nuclei the model
#: finds) only moved the unpainted F1 by noise, down to -0.039 (docs/benchmarks.md).
AGREES_ABOVE = 1.0 - IMPROVEMENT_MARGIN

# ---------------------------------------------------------------------------- options and results


@dataclass
class TrainConfig:
    """Training options. ``mode=None``: the parent model's mode, else ``"instance"``.

    ``learning_rate=None``: 1e-3 for a new network, 5e-4 when fine-tuning. ``patch_size``: side
    of the labelled patches. Validation picks the weights kept: instance annotations with 4+
    painted objects hold out about a quarter of the objects and score them as objects (see
    :func:`~.metrics.painted_object_score`); otherwise ``validation_fraction`` of the painted
    pixels (whole planes with 4+ annotated planes) is held out and scored by mean IoU on at most
    ``validation_blocks`` blocks of 32x32 px. ``distillation``: weight of the parent's own
    predictions as soft targets on unpainted pixels when fine-tuning (0 = off), so that what the
    model knows is kept where nothing is painted. ``keep_norm_statistics``: when fine-tuning,
    batch-norm layers keep the parent's running statistics (see
    :meth:`~.model.UNet.keep_norm_statistics`). ``freeze_encoder``: train only the
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
    distillation: float = 3.0
    keep_norm_statistics: bool = True
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
    """State after one iteration. ``val_score``: latest score on held-out painted objects or pixels, or
    the trainer's ``scorer`` score (None without validation); ``validated``: measured at this iteration;
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
    """The trained network (best weights, eval mode, CPU), its metadata and the history.

    ``parent_score``: the parent's validation score before training (None when not validated);
    ``verdict``: ``"better"`` (the kept weights beat it by :data:`IMPROVEMENT_MARGIN`), ``"as good"``
    (within :data:`TOLERANCE` of it: kept because they also learned the painting), ``"worse"`` (no
    fine-tuned weights came close: the kept weights are the parent's), ``"agrees"`` (the parent
    already reproduces the painting, see :data:`AGREES_ABOVE`: not trained, the parent's weights)
    or ``None`` (not measured: no validation, or a new network).
    """

    model: UNet
    info: ModelInfo
    history: list[TrainProgress]
    best_iteration: int
    stopped: bool
    parent_score: float | None = None
    verdict: str | None = None

    @property
    def improved(self) -> bool | None:
        """Whether the kept weights differ from the parent's (``None``: no parent score to compare with)."""
        return None if self.verdict is None else self.verdict not in ("worse", "agrees")

    def checkpoint(self) -> Checkpoint:
        return Checkpoint(model=self.model, info=self.info)

    def outcome(self, parent_name: str = "the start model") -> str:
        """What the run gave, in plain words, for the CLI and the widget."""
        iterations = len(self.history)
        ended = " (stopped early)" if self.stopped else ""
        metrics = self.info.training.get("metrics", {})
        score = metrics.get("val_score")
        if self.verdict == "agrees":
            return (f"{parent_name} already does what you painted (score {metrics['parent_painting_score']:.2f} of 1): "
                    f"nothing to learn, so {parent_name} is kept as it was. Paint where it goes wrong (missed, merged "
                    "or false objects, whole objects rather than dabs) and fine-tune again")
        if self.verdict == "worse":
            tried = metrics.get("best_trained_val_score")
            best = "" if tried is None else f" (best {tried:.2f} against {self.parent_score:.2f})"
            return (f"fine-tuning did not improve on your held-out annotations in {iterations} iterations{ended}"
                    f"{best}; {parent_name} kept as it was")
        if self.verdict is not None:
            how = "improved on" if self.verdict == "better" else "as good as before on"
            return (f"{how} your held-out annotations: {self.parent_score:.2f} -> {score:.2f} "
                    f"(weights of iteration {self.best_iteration} of {iterations}{ended})")
        if not self.history:
            return f"no iteration ran{ended}: the weights are {parent_name}'s"
        checked = f"held-out score {score:.2f}" if score is not None else "too little painted to hold some out and check"
        return f"trained {iterations} iterations{ended}, kept the weights of iteration {self.best_iteration} ({checked})"
