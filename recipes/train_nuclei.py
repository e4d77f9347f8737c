"""Recipe for the built-in ``nuclei`` model: a ~2M-parameter instance U-Net trained from scratch on
synthetic fluorescent nuclei (``napari_unetseg.synthetic``), seeded and deterministic on the CPU.

    python recipes/train_nuclei.py --overwrite

It reports object F1 at IoU 0.5 on held-out synthetic images and, when the team's data folder is
present, on the real cells3d nuclei stack (a development check only: its labels are rough).
"""

from __future__ import annotations

import time

import numpy as np
import tifffile

from common import log_progress, recipe_arguments, save_builtin
from team_data import CELLS3D
from napari_unetseg.inference import segment
from napari_unetseg.metrics import object_matching
from napari_unetseg.synthetic import synthetic_nuclei_2d, synthetic_nuclei_3d
from napari_unetseg.targets import result_as_annotation
from napari_unetseg.training import TrainConfig, train



def synthetic_set(count: int, seed: int, size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """``count`` planes: mostly 2D images, 30 % taken from 32-slice 3D stacks whose nuclei fill a layer
    (so out-of-focus slices, and slices above and below the cells with only glow, are seen as such)."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    while len(images) < count:
        if rng.random() < 0.7:
            image, label = synthetic_nuclei_2d((size, size), rng=rng)
            images.append(image)
            labels.append(label)
        else:
            stack, stack_labels = synthetic_nuclei_3d((32, size, size), rng=rng)
            for z in rng.choice(32, size=2, replace=False):
                images.append(stack[z])
                labels.append(stack_labels[z])
    return np.stack(images[:count]).astype(np.float32), np.stack(labels[:count]).astype(np.uint32)


def as_annotation(labels: np.ndarray) -> np.ndarray:
    """Dense ground truth in the painting convention: 1 = background, objects 2, 3, ..."""
    return result_as_annotation(labels, "instance")


def main() -> None:
    args = recipe_arguments(__doc__.split("\n\n")[0], "nuclei", iterations=4000)
    started = time.time()
    images, labels = synthetic_set(480, seed=args.seed)
    config = TrainConfig(
        mode="instance", iterations=args.iterations, patch_size=192, batch_size=8, base_channels=16, depth=4,
        learning_rate=2e-3, validate_every=250, validation_fraction=0.05, validation_blocks=128, seed=args.seed,
        device="cpu", cpu_bf16=True,
    )
    result = train(images, as_annotation(labels), None, config, progress=log_progress())

    test_images, test_labels = synthetic_set(24, seed=10_000 + args.seed)
    predicted = segment(test_images, result.checkpoint(), device="cpu")
    metrics = {"synthetic_f1_iou50": round(object_matching(predicted, test_labels, per_slice=True)["f1"], 4)}
    if (CELLS3D / "nuclei.tif").exists():
        real = tifffile.imread(CELLS3D / "nuclei.tif")
        truth = tifffile.imread(CELLS3D / "nuclei_label.tif")
        planes = slice(15, 45)  # the in-focus part of the stack
        predicted = segment(real[planes], result.checkpoint(), device="cpu")
        scores = object_matching(predicted, truth[planes], per_slice=True)
        metrics["cells3d_dev_f1_iou50_per_slice"] = round(scores["f1"], 4)
    save_builtin(
        result, args, metrics,
        data="480 synthetic 256x256 planes (napari_unetseg.synthetic, seed %d)" % args.seed,
        description="Fluorescent nuclei (instance segmentation); trained on synthetic images only.",
        started=started,
    )


if __name__ == "__main__":
    main()
