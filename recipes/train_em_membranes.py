"""Recipe for the built-in ``em-membranes`` model: a ~2M-parameter semantic U-Net (1 = membrane,
2 = cell) trained from scratch on the ISBI 2012 EM training stack, seeded and deterministic on the CPU.

    python recipes/train_em_membranes.py --overwrite

Cells count as touching regions for the paper's border weights (w0 = 10, sigma = 5 px), so thin
membranes between two cells weigh most in the loss. Slices 0-24 are used for training, with three
whole planes held out. Every 250 iterations the network segments those planes at each membrane
threshold from 0.30 to 0.90; the weights and the threshold with the lowest sum of pixel error and
adapted Rand error there are kept (the way the model is judged, rather than the arg-max IoU on
painted pixels). Slices 25-29 are the test set (see the data's README) and are only segmented at the
very end to report pixel error and adapted Rand error.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import tifffile

from common import log_progress, recipe_arguments, save_builtin
from team_data import ISBI2012, require
from napari_unetseg.checkpoint import Checkpoint
from napari_unetseg.engine_settings import EngineSettings
from napari_unetseg.inference import PlanePredictor, segment
from napari_unetseg.metrics import evaluate
from napari_unetseg.training import TrainConfig, Trainer, TrainResult

FILES = (ISBI2012 / "train-volume.tif", ISBI2012 / "train-labels.tif")
TRAIN = slice(0, 25)
TEST = slice(25, 30)
THRESHOLDS = np.round(np.arange(0.30, 0.901, 0.05), 2)


def choose_membrane_threshold(
    checkpoint: Checkpoint, images: np.ndarray, truth: np.ndarray
) -> tuple[tuple[float, float, float], list]:
    """The membrane probability above which a pixel is called membrane, chosen on held-out planes:
    the best (threshold, pixel error, Rand error) row, and the whole sweep.

    The network was trained with class-balanced weights, which favour the rarer membrane class:
    the plain arg-max (0.5) draws membranes thicker than the annotators did.
    """
    predictor = PlanePredictor(checkpoint, EngineSettings(device="cpu", precision="float32"))
    membrane = np.stack([p[0] for p in predictor.probabilities([predictor.prepare(i[np.newaxis]) for i in images])])
    sweep = []
    for threshold in THRESHOLDS:
        scores = evaluate(np.where(membrane > threshold, 1, 2), truth, "semantic", foreground=(2, 255))
        sweep.append((float(threshold), round(scores["pixel_error"], 4), round(scores["adapted_rand_error"], 4)))
    return min(sweep, key=lambda row: row[1] + row[2]), sweep


def held_out_scorer(images: np.ndarray, truth: np.ndarray):
    """A trainer ``scorer``: minus the lowest (pixel error + Rand error) over the threshold sweep."""

    def score(checkpoint: Checkpoint) -> float:
        (threshold, pixel_error, rand_error), _ = choose_membrane_threshold(checkpoint, images, truth)
        print(f"  held-out: threshold {threshold:.2f}  pixel error {pixel_error:.4f}  Rand error {rand_error:.4f}",
              flush=True)
        return -(pixel_error + rand_error)

    return score


def finish(
    result: TrainResult, args: argparse.Namespace, held: list[int], volume: np.ndarray, truth: np.ndarray,
    started: float,
) -> None:
    """Calibrate on the held-out planes, score the test slices, write the checkpoint."""
    (threshold, _, _), sweep = choose_membrane_threshold(result.checkpoint(), volume[TRAIN][held], truth[TRAIN][held])
    print("held-out planes", held, "threshold, pixel error, Rand error:", sweep, "->", threshold, flush=True)
    plain = evaluate(segment(volume[TEST], result.checkpoint(), device="cpu", precision="float32"), truth[TEST],
                     "semantic", foreground=(2, 255))
    result.info.decision_weights = [round(1.0 - threshold, 2), threshold]
    scores = evaluate(segment(volume[TEST], result.checkpoint(), device="cpu", precision="float32"), truth[TEST],
                      "semantic", foreground=(2, 255))
    metrics = {
        "test_slices": "25-29",
        "pixel_error": round(scores["pixel_error"], 4),
        "adapted_rand_error": round(scores["adapted_rand_error"], 4),
        "adapted_rand_error_unthinned": round(scores["adapted_rand_error_unthinned"], 4),
        "membrane_threshold": threshold,
        "argmax_pixel_error": round(plain["pixel_error"], 4),
        "argmax_adapted_rand_error": round(plain["adapted_rand_error"], 4),
    }
    save_builtin(
        result, args, metrics,
        data="ISBI 2012 EM training stack, slices 0-24 (Cardona et al. 2010)",
        description="Neuronal membranes in serial-section EM (semantic: 1 = membrane, 2 = cell).",
        started=started,
    )


def main() -> None:
    args = recipe_arguments(__doc__.split("\n\n")[0], "em-membranes", iterations=6000)
    require("recipes/train_em_membranes.py", *FILES)
    started = time.time()
    volume = tifffile.imread(FILES[0])
    truth = tifffile.imread(FILES[1])
    annotation = np.where(truth[TRAIN] > 0, 2, 1).astype(np.uint8)  # 0 = membrane -> 1, 255 = cell -> 2
    config = TrainConfig(
        mode="semantic", class_names=["membrane", "cell"], iterations=args.iterations, patch_size=192,
        batch_size=8, base_channels=16, depth=4, learning_rate=2e-3, validate_every=250,
        validation_fraction=0.12, validation_blocks=128, separated_class=2, seed=args.seed, device="cpu",
        cpu_bf16=True,
    )
    trainer = Trainer(volume[TRAIN], annotation, None, config)
    held = trainer.validation_planes
    trainer.scorer = held_out_scorer(volume[TRAIN][held], truth[TRAIN][held])
    report = log_progress()
    for step in trainer.steps():
        report(step)
    finish(trainer.result(), args, held, volume, truth, started)


if __name__ == "__main__":
    main()
