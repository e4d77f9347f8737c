"""Fine-tuning from a few strokes: the built-in ``nuclei`` model taught EM membranes in 120 s on the CPU.

    python benchmarks/finetune.py                 # needs ../shared/data/isbi2012
    python benchmarks/finetune.py --seconds 60 --init path/to/model.pt

Sparse strokes (a few hundred painted pixels per slice, not dense masks) are sampled from the
ISBI 2012 ground truth of slices 0-4; the model is fine-tuned into a 2-class semantic model
(1 = membrane, 2 = cell) under a wall-clock budget; pixel error and adapted Rand error are
reported on the test slices 25-29 before and after. "Before" reads the nuclei model's objects as
cells and everything else as membrane.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import tifffile
import torch
from scipy import ndimage as ndi

from napari_unetseg.inference import segment
from napari_unetseg.metrics import evaluate
from napari_unetseg.models import resolve_model
from napari_unetseg.training import TrainConfig, train

ISBI = Path(__file__).resolve().parents[2] / "shared" / "data" / "isbi2012"
STROKE_SLICES = slice(0, 5)
TEST_SLICES = slice(25, 30)


def sample_strokes(truth: np.ndarray, rng: np.random.Generator, dots_per_class: tuple[int, int] = (25, 10)) -> np.ndarray:
    """Sparse annotation of one slice: small dabs well inside membrane (1) and cell (2) regions."""
    strokes = np.zeros(truth.shape, np.uint8)
    for label, count, radius in [(1, dots_per_class[0], 1), (2, dots_per_class[1], 2)]:
        region = (truth == 0) if label == 1 else (truth > 0)
        safe = ndi.binary_erosion(region, iterations=radius)
        ys, xs = np.nonzero(safe)
        for i in rng.choice(len(ys), size=min(count, len(ys)), replace=False):
            y, x = ys[i], xs[i]
            strokes[y - radius : y + radius + 1, x - radius : x + radius + 1][
                region[y - radius : y + radius + 1, x - radius : x + radius + 1]
            ] = label
    return strokes


def scores(labels: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    result = evaluate(labels, truth, "semantic", foreground=(2, 255))
    return {"pixel_error": round(result["pixel_error"], 4), "adapted_rand_error": round(result["adapted_rand_error"], 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--init", default="nuclei", help="built-in model name or checkpoint path")
    parser.add_argument("--seconds", type=float, default=120.0, help="training time budget")
    parser.add_argument("--iterations", type=int, default=2000, help="iteration cap (the time budget ends first)")
    parser.add_argument("--freeze-encoder", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)

    volume = tifffile.imread(ISBI / "train-volume.tif")
    truth = tifffile.imread(ISBI / "train-labels.tif")
    rng = np.random.default_rng(args.seed)
    strokes = np.stack([sample_strokes(t, rng) for t in truth[STROKE_SLICES]])
    painted = int((strokes > 0).sum())
    print(f"# strokes: {painted} painted pixels on {strokes.shape[0]} slices "
          f"({painted // strokes.shape[0]} per slice; membrane {(strokes == 1).sum()}, cell {(strokes == 2).sum()})")

    parent = resolve_model(args.init)
    before_labels = segment(volume[TEST_SLICES], parent, device="cpu")
    before = scores(np.where(before_labels > 0, 2, 1), truth[TEST_SLICES])
    print(f"before ({args.init}, objects read as cells): {json.dumps(before)}")

    config = TrainConfig(
        mode="semantic", class_names=["membrane", "cell"], iterations=args.iterations, max_seconds=args.seconds,
        freeze_encoder=args.freeze_encoder, seed=args.seed, device="cpu",
    )
    started = time.perf_counter()
    result = train(volume[STROKE_SLICES], strokes, parent, config)
    seconds = time.perf_counter() - started
    after = scores(segment(volume[TEST_SLICES], result.checkpoint(), device="cpu"), truth[TEST_SLICES])
    iterations = len(result.history)
    print(f"after {iterations} iterations in {seconds:.0f} s ({iterations / seconds:.2f} it/s): {json.dumps(after)}")
    improved = after["pixel_error"] < before["pixel_error"] and after["adapted_rand_error"] < before["adapted_rand_error"]
    print(f"improved={'yes' if improved else 'no'}")


if __name__ == "__main__":
    main()
