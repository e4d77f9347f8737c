"""Fine-tuning from a few strokes: the built-in ``nuclei`` model taught EM membranes in 120 s on the CPU.

    python benchmarks/finetune.py                 # needs the team data: ../shared/data/isbi2012
    python benchmarks/finetune.py --seconds 60 --init path/to/model.pt

Sparse strokes (a few hundred painted pixels per slice, not dense masks: short lines along
membranes and inside cells, as a person paints them) are sampled from the ISBI 2012 ground
truth of slices 0-4; the model is fine-tuned into a 2-class semantic model
(1 = membrane, 2 = cell) under a wall-clock budget; pixel error and adapted Rand error are
reported on the test slices 25-29 before and after. "Before" reads the nuclei model's objects as
cells and everything else as membrane.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import tifffile
import torch
from scipy import ndimage as ndi
from skimage.morphology import skeletonize

from napari_unetseg.inference import segment
from napari_unetseg.metrics import evaluate
from napari_unetseg.models import resolve_model
from napari_unetseg.training import TrainConfig, Trainer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))
from team_data import ISBI2012, require  # noqa: E402

FILES = (ISBI2012 / "train-volume.tif", ISBI2012 / "train-labels.tif")
STROKE_SLICES = slice(0, 5)
TEST_SLICES = slice(25, 30)


def sample_strokes(truth: np.ndarray, rng: np.random.Generator, strokes_per_class: tuple[int, int] = (10, 5),
                   length: int = 24) -> np.ndarray:
    """Sparse annotation of one slice, drawn the way a person paints: short strokes of ``length`` px.

    Membrane strokes (1) follow the membranes' centre lines, 1 px wide, so thin membranes are
    painted too; cell strokes (2) are 3 px wide straight lines kept well inside cells.
    """
    strokes = np.zeros(truth.shape, np.uint8)
    centre = skeletonize(truth == 0)
    for _ in range(strokes_per_class[0]):
        strokes[tuple(_walk(centre, rng, length).T)] = 1
    inside = ndi.binary_erosion(truth > 0, iterations=4)
    ys, xs = np.nonzero(inside)
    for i in rng.choice(len(ys), size=min(strokes_per_class[1], len(ys)), replace=False):
        angle = rng.uniform(0, np.pi)
        steps = np.arange(-length // 2, length // 2)
        line = np.round([ys[i] + steps * np.sin(angle), xs[i] + steps * np.cos(angle)]).astype(int)
        keep = (line >= 0).all(0) & (line[0] < truth.shape[0]) & (line[1] < truth.shape[1])
        line = line[:, keep]
        line = line[:, inside[line[0], line[1]]]
        dab = np.zeros(truth.shape, bool)
        dab[line[0], line[1]] = True
        strokes[ndi.binary_dilation(dab) & (truth > 0)] = 2
    return strokes


def _walk(path_pixels: np.ndarray, rng: np.random.Generator, length: int) -> np.ndarray:
    """Up to ``length`` connected pixels of ``path_pixels`` from a random start, never revisiting one."""
    ys, xs = np.nonzero(path_pixels)
    start = rng.integers(len(ys))
    visited = [(int(ys[start]), int(xs[start]))]
    seen = set(visited)
    while len(visited) < length:
        y, x = visited[-1]
        steps = [(y + dy, x + dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
        nxt = [(a, b) for a, b in steps if 0 <= a < path_pixels.shape[0] and 0 <= b < path_pixels.shape[1]
               and path_pixels[a, b] and (a, b) not in seen]
        if not nxt:
            break
        visited.append(nxt[rng.integers(len(nxt))])
        seen.add(visited[-1])
    return np.array(visited)


def scores(labels: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    result = evaluate(labels, truth, "semantic", foreground=(2, 255))
    return {"pixel_error": round(result["pixel_error"], 4), "adapted_rand_error": round(result["adapted_rand_error"], 4)}


def better(after: dict[str, float], before: dict[str, float]) -> bool:
    return after["pixel_error"] < before["pixel_error"] and after["adapted_rand_error"] < before["adapted_rand_error"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--init", default="nuclei", help="built-in model name or checkpoint path")
    parser.add_argument("--seconds", type=float, default=120.0, help="training time budget")
    parser.add_argument("--iterations", type=int, default=2000, help="iteration cap (the time budget ends first)")
    parser.add_argument("--freeze-encoder", action="store_true")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast (CPUs with native bf16)")
    parser.add_argument("--learning-rate", type=float, default=None, help="default: the trainer's fine-tuning rate")
    parser.add_argument("--snapshot-every", type=float, default=15.0,
                        help="seconds between kept snapshots, scored after training for the time to a better result")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    require("benchmarks/finetune.py", *FILES)
    torch.manual_seed(args.seed)

    volume = tifffile.imread(FILES[0])
    truth = tifffile.imread(FILES[1])
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
        freeze_encoder=args.freeze_encoder, cpu_bf16=args.bf16, learning_rate=args.learning_rate, seed=args.seed,
        device="cpu",
    )
    trainer = Trainer(volume[STROKE_SLICES], strokes, parent, config)
    snapshots = []  # (seconds, iteration, weights a user stopping then would get)
    for step in trainer.steps():
        if step.seconds >= args.snapshot_every * (len(snapshots) + 1):
            snapshots.append((step.seconds, step.iteration, trainer.result().checkpoint()))
    result = trainer.result()
    seconds, iterations = trainer.elapsed(), len(result.history)
    after = scores(segment(volume[TEST_SLICES], result.checkpoint(), device="cpu"), truth[TEST_SLICES])
    first_better = None
    for at, iteration, checkpoint in snapshots:
        snapshot = scores(segment(volume[TEST_SLICES], checkpoint, device="cpu"), truth[TEST_SLICES])
        print(f"  at {at:5.1f} s (iteration {iteration}): {json.dumps(snapshot)}")
        if first_better is None and better(snapshot, before):
            first_better = at
    print(f"after {iterations} iterations in {seconds:.0f} s ({iterations / seconds:.2f} it/s): {json.dumps(after)}")
    print(f"first better result after: {'-' if first_better is None else f'{first_better:.0f} s'} "
          f"(snapshots every {args.snapshot_every:.0f} s)")
    print(f"improved={'yes' if better(after, before) else 'no'}")


if __name__ == "__main__":
    main()
