"""Shared by the recipes: thread setup, provenance, and writing the built-in checkpoint."""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

from napari_unetseg.checkpoint import save_checkpoint
from napari_unetseg.training import TrainProgress, TrainResult

MODELS_DIR = Path(__file__).resolve().parents[1] / "src" / "napari_unetseg" / "models"


def recipe_arguments(description: str, name: str, iterations: int) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("-o", "--output", type=Path, default=MODELS_DIR / f"{name}.pt")
    parser.add_argument("--iterations", type=int, default=iterations)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (fixed, for reproducible sums)")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    return args


def log_progress(every: int = 50):
    """A progress callback printing one line every ``every`` iterations."""

    def report(step: TrainProgress) -> None:
        if step.iteration % every == 0 or step.validated or step.iteration == step.total_iterations:
            score = "-" if step.val_score is None else f"{step.val_score:.4f}"
            print(f"it {step.iteration:5d}/{step.total_iterations}  loss {step.loss:.4f}  val {score}"
                  f"{'  *' if step.best_so_far else ''}  {step.seconds:7.1f}s", flush=True)

    return report


def save_builtin(result: TrainResult, args: argparse.Namespace, metrics: dict[str, Any], data: str,
                 description: str, started: float) -> None:
    """Write the checkpoint with its provenance and metrics, and print them as JSON."""
    info = result.info
    info.name = args.output.stem
    info.description = description
    info.training.update({
        "data": data,
        "metrics": metrics,
        "recipe": f"recipes/train_{args.output.stem.replace('-', '_')}.py --seed {args.seed} "
                  f"--iterations {args.iterations} --threads {args.threads}",
        "wall_seconds": round(time.time() - started),
        "machine": f"{platform.machine()} {platform.processor()}, torch {torch.__version__}",
    })
    save_checkpoint(args.output, result.model, info, overwrite=args.overwrite)
    size_mb = args.output.stat().st_size / 1e6
    print(json.dumps({"model": str(args.output), "size_mb": round(size_mb, 2), "metrics": metrics}, indent=1))
