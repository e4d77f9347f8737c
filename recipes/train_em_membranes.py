"""Recipe for the built-in ``em-membranes`` model: a ~2M-parameter semantic U-Net (1 = membrane,
2 = cell) trained from scratch on the ISBI 2012 EM training stack, seeded and deterministic on the CPU.

    python recipes/train_em_membranes.py --overwrite

Slices 0-24 are used for training, with whole planes held out for choosing the best weights;
slices 25-29 are the test set (see the data's README) and are only segmented at the very end to
report pixel error and adapted Rand error.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import tifffile

from common import log_progress, recipe_arguments, save_builtin
from napari_unetseg.inference import segment
from napari_unetseg.metrics import evaluate
from napari_unetseg.training import TrainConfig, train

ISBI = Path(__file__).resolve().parents[2] / "shared" / "data" / "isbi2012"
TRAIN = slice(0, 25)
TEST = slice(25, 30)


def main() -> None:
    args = recipe_arguments(__doc__.split("\n\n")[0], "em-membranes", iterations=4000)
    started = time.time()
    volume = tifffile.imread(ISBI / "train-volume.tif")
    truth = tifffile.imread(ISBI / "train-labels.tif")
    annotation = np.where(truth[TRAIN] > 0, 2, 1).astype(np.uint8)  # 0 = membrane -> 1, 255 = cell -> 2
    config = TrainConfig(
        mode="semantic", class_names=["membrane", "cell"], iterations=args.iterations, patch_size=192,
        batch_size=8, base_channels=16, depth=4, learning_rate=2e-3, validate_every=250,
        validation_fraction=0.12, validation_blocks=128, seed=args.seed, device="cpu", cpu_bf16=True,
    )
    result = train(volume[TRAIN], annotation, None, config, progress=log_progress())
    predicted = segment(volume[TEST], result.checkpoint(), device="cpu")
    scores = evaluate(predicted, truth[TEST], "semantic", foreground=(2, 255))
    metrics = {
        "test_slices": "25-29",
        "pixel_error": round(scores["pixel_error"], 4),
        "adapted_rand_error": round(scores["adapted_rand_error"], 4),
        "adapted_rand_error_unthinned": round(scores["adapted_rand_error_unthinned"], 4),
    }
    save_builtin(
        result, args, metrics,
        data="ISBI 2012 EM training stack, slices 0-24 (Cardona et al. 2010)",
        description="Neuronal membranes in serial-section EM (semantic: 1 = membrane, 2 = cell).",
        started=started,
    )


if __name__ == "__main__":
    main()
