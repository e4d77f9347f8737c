"""Training engine: targets, weights, loss masking, learning, stopping, budgets, reproducibility, errors."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ThresholdNet, tiny_unet, two_touching_discs

from napari_unetseg.augment import AugmentConfig
from napari_unetseg.checkpoint import Checkpoint, ModelInfo, load_checkpoint, save_checkpoint
from napari_unetseg.metrics import mean_iou
from napari_unetseg.normalize import normalize_plane
from napari_unetseg.targets import (
    IGNORE,
    derive_targets,
    separation_weights,
    weight_map,
    weighted_cross_entropy,
)
from napari_unetseg.training import Trainer, TrainProgress, TrainResult, iter_train, train
from napari_unetseg.training_data import VAL_BLOCK

FAST = {"patch_size": 32, "batch_size": 2, "iterations": 3, "device": "cpu"}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny networks run fastest (and steadiest on a busy machine) on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def blobs(size: int = 48, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A noisy image of four bright discs and its dense instance annotation (1 = background)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    annotation = np.ones((size, size), np.uint16)
    image = rng.normal(0.0, 0.1, (size, size)).astype(np.float32)
    q = size // 4
    for k, (cy, cx) in enumerate([(q, q), (q, 3 * q), (3 * q, q), (3 * q, 3 * q)]):
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= (size // 6) ** 2
        annotation[disc] = k + 2
        image[disc] += 1.0
    return image, annotation


# ---------------------------------------------------------------- targets and weights


def test_semantic_targets_shift_labels_and_ignore_zero() -> None:
    annotation = np.array([[0, 1, 2], [3, 0, 1]], np.uint8)
    assert derive_targets(annotation, "semantic").tolist() == [[IGNORE, 0, 1], [2, IGNORE, 0]]


def test_instance_targets_boundary_only_against_annotated_pixels() -> None:
    annotation = np.zeros((9, 12), np.int32)
    annotation[:, :2] = 1  # background stroke
    annotation[:, 2:6] = 2  # object touching background on the left and object 3 on the right
    annotation[:, 6:9] = 3  # object 3: unannotated (0) pixels on its right
    targets = derive_targets(annotation, "instance")
    assert (targets[:, :2] == 0).all()
    assert (targets[:, 2] == 2).all() and (targets[:, 5] == 2).all() and (targets[:, 6] == 2).all()
    assert (targets[:, 3:5] == 1).all()
    assert (targets[:, 7:9] == 1).all()  # stroke edge next to unannotated pixels is not a boundary
    assert (targets[:, 9:] == IGNORE).all()


def test_dense_object_gets_its_full_boundary() -> None:
    annotation = np.ones((11, 11), np.int32)
    annotation[3:8, 3:8] = 2
    targets = derive_targets(annotation, "instance")
    ring = np.zeros((11, 11), bool)
    ring[3:8, 3:8] = True
    ring[4:7, 4:7] = False
    assert (targets[ring] == 2).all() and (targets[4:7, 4:7] == 1).all()


def test_weight_map_is_high_in_the_gap_between_touching_discs() -> None:
    annotation = two_touching_discs(64, 12).astype(np.int32) + 1  # 1 background, 2 and 3 objects
    weights = weight_map(annotation, w0=10, sigma=5)
    centre = 32
    gap = annotation[centre - 4 : centre + 5, centre - 2 : centre + 3] == 1
    assert gap.any()
    gap_weights = weights[centre - 4 : centre + 5, centre - 2 : centre + 3][gap]
    assert gap_weights.max() > 8
    assert weights[0, 0] < 2 and weights[63, 63] < 2  # far from both discs: class weight only
    assert weights[centre - 4, centre] > weights[5, centre] + 5


def test_separation_weights_favour_thin_membranes_between_cells() -> None:
    annotation = np.full((40, 60), 2, np.int32)  # semantic EM-style map: 1 = membrane, 2 = cell
    annotation[:, 20] = 1  # a 1 px membrane between two cells
    annotation[:, 38:46] = 1  # an 8 px wide membrane between two others
    annotation[:3] = 0  # not annotated
    weights = separation_weights(annotation, objects=2, w0=10, sigma=5)
    assert (weights[:3] == 0).all()
    assert weights[20, 20] > 9  # thin gap: d1 = d2 = 1
    assert weights[20, 42] < weights[20, 20] / 2  # the middle of the wide membrane weighs much less
    assert weights[20, 10] == 1.0  # cells keep their class weight


def test_weight_map_is_zero_where_not_annotated_and_ignores_far_objects() -> None:
    annotation = np.zeros((40, 40), np.int32)
    annotation[5:10, 5:10] = 2
    annotation[10:12, 5:10] = 1
    weights = weight_map(annotation)
    assert (weights[annotation == 0] == 0).all() and (weights[annotation > 0] > 0).all()


def test_loss_ignores_unannotated_pixels() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    targets = torch.randint(0, 3, (2, 8, 8))
    targets[:, :4] = IGNORE
    weights = torch.rand(2, 8, 8)
    loss = weighted_cross_entropy(logits, targets, weights)
    loss.backward()
    assert torch.all(logits.grad[:, :, :4] == 0) and torch.any(logits.grad[:, :, 4:] != 0)
    changed = logits.detach().clone()
    changed[:, :, :4] = torch.randn(2, 3, 4, 8) * 100
    other_weights = weights.clone()
    other_weights[:, :4] = 50.0
    assert torch.allclose(weighted_cross_entropy(changed, targets, other_weights), loss)


def test_mean_iou_counts_the_classes_of_the_annotation_only() -> None:
    targets = np.array([0, 0, 1, 1, IGNORE])
    assert mean_iou(np.array([0, 0, 1, 1, 0]), targets, ignore=IGNORE) == 1.0
    assert mean_iou(np.array([0, 1, 1, 1, 1]), targets, ignore=IGNORE) == pytest.approx((0.5 + 2 / 3) / 2)
    # a class predicted but absent from the annotation does not count as a class scoring 0
    assert mean_iou(np.array([0, 0, 1, 2, 2]), targets, ignore=IGNORE) == pytest.approx((1 + 0.5) / 2)


# ---------------------------------------------------------------- learning


def test_tiny_model_overfits_a_tiny_annotated_image() -> None:
    image, annotation = blobs()
    result = train(
        image, annotation, tiny_unet(num_classes=3), mode="instance", iterations=150, patch_size=48,
        batch_size=4, learning_rate=1e-2, validation_fraction=0.0, augment=AugmentConfig.none(), device="cpu",
    )
    with torch.no_grad():
        predicted = result.model(torch.from_numpy(normalize_plane(image))[None, None]).argmax(1)[0].numpy()
    targets = derive_targets(annotation, "instance")
    assert np.mean(predicted == targets) > 0.95
    assert result.history[-1].loss < result.history[0].loss


def test_generator_yields_every_iteration_and_returns_the_result() -> None:
    image, annotation = blobs()
    steps = iter_train(image, annotation, tiny_unet(), **FAST)
    seen = []
    with pytest.raises(StopIteration) as stop:
        while True:
            seen.append(next(steps))
    assert [p.iteration for p in seen] == [1, 2, 3] and all(isinstance(p, TrainProgress) for p in seen)
    assert isinstance(stop.value.value, TrainResult) and stop.value.value.info.training["iterations"] == 3


def test_stop_callback_stops_within_one_iteration() -> None:
    image, annotation = blobs()
    calls: list[TrainProgress] = []
    result = train(
        image, annotation, tiny_unet(), **{**FAST, "iterations": 1000},
        progress=calls.append, should_stop=lambda: len(calls) >= 2,
    )
    assert len(result.history) == 2 and result.stopped
    assert result.info.training["iterations"] == 2


def test_time_budget_is_respected() -> None:
    image, annotation = blobs()
    start = time.perf_counter()
    result = train(image, annotation, tiny_unet(), **{**FAST, "iterations": 10**6, "max_seconds": 1.5})
    assert time.perf_counter() - start < 3.0
    assert 0 < len(result.history) < 10**6 and not result.stopped


def test_same_seed_gives_identical_weights_on_cpu() -> None:
    image, annotation = blobs()

    def weights(seed: int) -> dict[str, torch.Tensor]:
        return train(image, annotation, None, **FAST, base_channels=4, depth=2, seed=seed).model.state_dict()

    first, second, other = weights(3), weights(3), weights(4)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_validation_holds_out_painted_pixels_and_keeps_the_best(tmp_path: Path) -> None:
    image, annotation = blobs(64)
    annotation = np.minimum(annotation, 2)  # semantic: classes are scored pixel by pixel
    trainer = Trainer(image, annotation, tiny_unet(num_classes=2), mode="semantic",
                      **{**FAST, "iterations": 4, "validate_every": 2})
    assert trainer.held_out.blocks and not trainer.held_out.windows
    plane = trainer.planes[0]
    held = plane.val_targets >= 0
    assert held.any() and (plane.targets[held] == IGNORE).all()
    assert 0.05 < held.sum() / (annotation > 0).sum() < 0.35
    images, targets = trainer.held_out.block_batch  # each block is scored with its own context around it
    margin = (images.shape[-1] - VAL_BLOCK) // 2
    for (_, top, left), image, target in zip(trainer.held_out.blocks, images[:, 0].numpy(), targets):
        window = (slice(top, top + VAL_BLOCK), slice(left, left + VAL_BLOCK))
        assert np.array_equal(target, plane.val_targets[window])
        assert np.array_equal(image[margin : margin + VAL_BLOCK, margin : margin + VAL_BLOCK], plane.image[window])
    history = list(trainer.steps())
    assert [p.validated for p in history] == [False, True, False, True]
    assert all(0 <= p.val_score <= 1 for p in history[1:])
    result = trainer.result()
    metrics = result.info.training["metrics"]
    assert metrics["val_kind"] == "pixel mean IoU" and metrics["val_score"] == max(p.val_score for p in history)
    path = save_checkpoint(tmp_path / "trained.pt", result.model, result.info)
    assert load_checkpoint(path).info.training["iterations"] == 4


def test_a_scorer_picks_the_kept_weights() -> None:
    """A recipe's own score (e.g. whole held-out planes) replaces the IoU on painted pixels."""
    image, annotation = blobs(64)
    scores, seen = iter([0.2, 0.9, 0.4]), []

    def scorer(checkpoint) -> float:
        assert not checkpoint.model.training and checkpoint.info.mode == "instance"
        seen.append({k: v.clone() for k, v in checkpoint.model.state_dict().items()})
        return next(scores)

    trainer = Trainer(image, annotation, None, scorer=scorer, **{**FAST, "iterations": 6, "validate_every": 2},
                      base_channels=4, depth=2, validation_fraction=0.0)
    history = list(trainer.steps())
    assert [p.iteration for p in history if p.validated] == [2, 4, 6]
    assert [p.iteration for p in history if p.best_so_far] == [2, 4]
    result = trainer.result()
    assert result.best_iteration == 4 and result.info.training["metrics"]["val_score"] == 0.9
    kept = result.model.state_dict()
    assert all(torch.equal(kept[k], seen[1][k]) for k in kept)
    assert not all(torch.equal(kept[k], seen[2][k]) for k in kept)


def scripted_validation(monkeypatch, scores: list[float]) -> list[dict]:
    """Make ``Trainer.validate`` return ``scores`` in turn; returns the weights it saw at each call."""
    scores, seen = iter(scores), []

    def validate(self) -> float:
        seen.append({k: v.clone() for k, v in self.model.state_dict().items()})
        return next(scores)

    monkeypatch.setattr(Trainer, "validate", validate)
    return seen


@pytest.mark.parametrize(
    ("scores", "verdict", "kept"),
    [
        ([0.9, 0.6, 0.85, 0.4], "worse", 0),  # nothing comes within the tolerance: the parent stays
        ([0.9, 0.6, 0.89, 0.85], "as good", 2),  # within the tolerance: the painting is learned
        ([0.5, 0.6, 0.9, 0.7], "better", 2),
    ],
)
def test_the_parent_is_scored_first_and_kept_unless_fine_tuning_comes_close(monkeypatch, scores, verdict, kept):
    image, annotation = blobs(64)
    seen = scripted_validation(monkeypatch, scores)
    parent = tiny_unet()
    trainer = Trainer(image, annotation, parent, **{**FAST, "validate_every": 1})
    assert trainer.fine_tuning and trainer.validates
    list(trainer.steps())
    result = trainer.result()
    assert result.parent_score == scores[0] and result.verdict == verdict and result.best_iteration == kept
    assert all(torch.equal(result.model.state_dict()[k], seen[kept][k]) for k in seen[kept])
    metrics = result.info.training["metrics"]
    assert metrics["parent_val_score"] == scores[0] and metrics["verdict"] == verdict
    assert metrics["val_score"] == (scores[0] if kept == 0 else scores[kept])
    text = result.outcome("nuclei")
    if verdict == "worse":
        assert result.improved is False and "did not improve" in text and "nuclei kept as it was" in text
        assert all(torch.equal(result.model.state_dict()[k], parent.state_dict()[k]) for k in seen[0])
    else:
        assert result.improved is True and f"{scores[0]:.2f} -> {scores[kept]:.2f}" in text


def test_instance_fine_tuning_holds_out_whole_objects_and_scores_them_as_objects() -> None:
    image, annotation = blobs(64)
    trainer = Trainer(image, annotation, tiny_unet(), **FAST)
    assert trainer.held_out.windows and trainer.held_out.block_batch is None
    plane = trainer.planes[0]
    held = np.unique(plane.val_annotation[plane.val_annotation >= 2])
    assert len(held) == 1  # a quarter of the four painted discs
    assert (plane.annotation == held[0]).sum() == (plane.val_annotation == held[0]).sum()  # held out whole
    trained = np.unique(plane.annotation[(plane.targets >= 0) & (plane.annotation >= 2)])
    assert set(trained) == set(range(2, 6)) - set(held)  # the others stay whole in training
    assert 0.0 <= trainer.validate() <= 1.0


def test_stack_uses_annotated_planes_only_and_holds_out_whole_planes() -> None:
    image, annotation = blobs(32)
    stack = np.stack([image] * 6)
    labels = np.zeros(stack.shape, np.uint8)
    labels[[0, 2, 3, 5]] = np.minimum(annotation, 2)  # semantic, so pixels, not objects, are held out
    trainer = Trainer(stack, labels, tiny_unet(num_classes=2), mode="semantic", **FAST)
    assert len(trainer.planes) == 4 and len(trainer.train_planes) == 3
    assert trainer.data["planes"] == 4


def test_valid_padding_network_trains() -> None:
    image, annotation = blobs(64)
    model = tiny_unet(depth=1, padding="valid")
    result = train(image, annotation, model, **{**FAST, "iterations": 2})
    assert len(result.history) == 2 and np.isfinite(result.history[-1].loss)


# ---------------------------------------------------------------- fine-tuning


def _norm_statistics(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if k.endswith(("running_mean", "running_var"))}


def test_fine_tuning_keeps_the_parents_normalisation_statistics(tiny_instance_checkpoint: Path) -> None:
    """A few painted patches must not overwrite what batch norm learned from the whole training set;
    the scale and shift still train. A new network, or keep_norm_statistics=False, updates them."""
    parent = load_checkpoint(tiny_instance_checkpoint)
    image, annotation = blobs()
    before = _norm_statistics(parent.model)
    assert before
    result = train(image, annotation, parent, **FAST)
    after = _norm_statistics(result.model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    trained = result.model.state_dict()
    scales = [k for k, v in trained.items() if k.endswith(".weight") and v.ndim == 1]  # batch-norm scales
    assert scales and any(not torch.equal(parent.model.state_dict()[k], trained[k]) for k in scales)
    updated = _norm_statistics(train(image, annotation, parent, keep_norm_statistics=False, **FAST).model)
    assert any(not torch.equal(before[k], updated[k]) for k in before)
    scratch = _norm_statistics(train(image, annotation, None, base_channels=4, depth=2, **FAST).model)
    means = [v for k, v in scratch.items() if k.endswith("running_mean")]
    assert means and any(bool(v.abs().sum() > 0) for v in means)  # moved from their initial zeros


def test_fine_tune_into_more_classes_keeps_the_body(tiny_semantic_checkpoint: Path) -> None:
    parent = load_checkpoint(tiny_semantic_checkpoint)
    image, instances = blobs()
    annotation = np.minimum(instances, 3)  # semantic: classes 1, 2, 3
    result = train(image, annotation, parent, mode="semantic", freeze_encoder=True, **FAST)
    assert result.model.num_classes == 3 and result.info.class_names == ["membrane", "cell", "class 3"]
    before, after = parent.model.state_dict(), result.model.state_dict()
    encoder = [k for k in before if k.startswith(("inc.", "downs."))]
    assert encoder and all(torch.equal(before[k], after[k]) for k in encoder)  # incl. BatchNorm statistics
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("ups."))
    assert result.info.training["parent"] == "tiny-semantic" and result.info.training["head_reset"]
    untouched = Trainer(image, annotation, parent, mode="semantic", **FAST).result().model.state_dict()  # no step
    assert all(torch.equal(before[k], untouched[k]) for k in before if not k.startswith("head."))
    assert torch.equal(parent.model.state_dict()["head.weight"], before["head.weight"])  # parent not modified


def test_fine_tune_from_instance_to_semantic_resets_the_head(tiny_instance_checkpoint: Path) -> None:
    image, annotation = blobs()
    result = train(image, np.minimum(annotation, 2), tiny_instance_checkpoint, mode="semantic", **FAST)
    assert result.info.mode == "semantic" and result.model.num_classes == 2


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("annotation", "mode", "message"),
    [
        (np.ones((16, 17), np.uint8), "instance", "differ"),
        (np.zeros((16, 16), np.uint8), "instance", "nothing is annotated"),
        (np.ones((16, 16), np.float32), "instance", "integer labels"),
        (np.ones((16, 16), np.uint8), "semantic", "at least 2 classes"),
        (np.ones((16, 16), np.uint8), "instance", "id >= 2"),
        (-np.ones((16, 16), np.int16), "semantic", "negative"),
    ],
)
def test_bad_input_raises_a_clear_value_error(annotation: np.ndarray, mode: str, message: str) -> None:
    image = np.random.default_rng(0).random((16, 16))
    with pytest.raises(ValueError, match=message):
        train(image, annotation, tiny_unet(), mode=mode, **FAST)
    with pytest.raises(ValueError, match=message):
        next(iter_train(image, annotation, tiny_unet(), mode=mode, **FAST))


def test_objects_without_background_need_a_parent_whose_view_is_kept() -> None:
    """With nothing painted as background, only the parent's predictions can teach it."""
    image, annotation = np.random.default_rng(0).random((16, 16)), np.full((16, 16), 2, np.uint8)
    for model, options in ((None, {}), (tiny_unet(), {"distillation": 0.0})):
        with pytest.raises(ValueError, match="background painted"):
            Trainer(image, annotation, model, **options, **FAST)
    trainer = Trainer(image, annotation, tiny_unet(), **FAST)
    assert trainer.planes[0].unpainted is not None and not trainer.planes[0].unpainted.any()


def test_freezing_a_new_network_is_refused() -> None:
    image, annotation = blobs()
    with pytest.raises(ValueError, match="freeze_encoder"):
        Trainer(image, annotation, None, freeze_encoder=True, **FAST)


def test_fine_tuning_records_the_size_of_the_objects_painted_whole() -> None:
    """3D segmentation rescales stacks to the checkpoint's object size: fine-tuning measures it."""
    image, annotation = blobs(96)  # four discs of radius 16
    parent = Checkpoint(tiny_unet(), ModelInfo(mode="instance", name="tiny", object_diameter=20.0))
    result = Trainer(image, annotation, parent, **FAST).result()
    assert result.info.object_diameter == pytest.approx(32.0, abs=1.0)

    strokes = np.where(annotation >= 2, 0, annotation).astype(np.uint16)  # background, plus a dab in each disc
    for k, (cy, cx) in enumerate([(24, 24), (24, 72), (72, 24), (72, 72)]):
        strokes[cy - 1 : cy + 2, cx - 1 : cx + 2] = k + 2
    kept = Trainer(image, strokes, parent, **FAST).result()
    assert kept.info.object_diameter == 20.0  # dabs say nothing about size: the parent's is kept


def test_a_painting_the_parent_already_reproduces_trains_nothing_and_says_so() -> None:
    """Dabs inside nuclei the model finds, and background where it finds none, teach it nothing."""
    image, whole = blobs(96)
    dabs = np.zeros_like(whole)
    dabs[:4, :] = dabs[-4:, :] = 1  # background strokes along two edges, far from the discs
    for k in range(2, 6):
        cy, cx = (int(v.mean()) for v in np.nonzero(whole == k))
        dabs[cy - 2 : cy + 3, cx - 2 : cx + 3] = k
    parent = Checkpoint(ThresholdNet(), ModelInfo(mode="instance", name="finder"))
    trainer = Trainer(image, dabs, parent, **{**FAST, "iterations": 50})
    steps = list(trainer.steps())
    result = trainer.result()
    assert trainer.parent_fit == 1.0 and steps == [] and result.verdict == "agrees" and result.improved is False
    assert "finder already does what you painted" in result.outcome("finder")
    assert "kept as it was" in result.outcome("finder")

    missed = dabs.copy()
    missed[40:56, 40:56] = 6  # an object where the finder sees only background
    assert not Trainer(image, missed, parent, **FAST).agrees
