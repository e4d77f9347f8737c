"""The picture of docs/plugin.md's painting rules: each way of painting, and what training learns from it.

    python scripts/painting_styles.py            # writes docs/images/painting-styles.png

A synthetic nuclei image is painted automatically in the four styles of
``benchmarks/finetune_nuclei.py`` (the same painting functions), and the targets the trainer
derives are drawn below each painting: blue background, green interior, red boundary, and the
image alone where nothing is learned from the painting (there the model keeps its own view).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from napari_unetseg.inference import segment
from napari_unetseg.models import resolve_model
from napari_unetseg.normalize import normalize_plane
from napari_unetseg.synthetic import synthetic_nuclei_2d
from napari_unetseg.targets import closed_objects, derive_targets

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from finetune_nuclei import STYLES, left_half, paint  # noqa: E402

TARGET_COLOURS = {0: (60, 110, 255), 1: (40, 200, 80), 2: (255, 60, 60)}
ZOOM, LABEL_HEIGHT = 2, 22


def grey(image: np.ndarray) -> np.ndarray:
    plane = np.clip(normalize_plane(image, 1.0, 99.8), 0, 1) ** 0.5  # gamma: dim nuclei show on screen
    return np.repeat((plane * 255).astype(np.uint8)[..., None], 3, axis=2)


def overlay(base: np.ndarray, colours: np.ndarray, where: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    out = base.astype(np.float32)
    out[where] = (1 - alpha) * out[where] + alpha * colours[where]
    return out.astype(np.uint8)


def painting_panel(base: np.ndarray, annotation: np.ndarray) -> np.ndarray:
    """Background strokes in blue, each object in its own colour."""
    rng = np.random.default_rng(1)
    palette = rng.integers(80, 256, size=(int(annotation.max()) + 1, 3))
    palette[1] = TARGET_COLOURS[0]
    return overlay(base, palette[annotation], annotation > 0, 0.7)


def targets_panel(base: np.ndarray, targets: np.ndarray) -> np.ndarray:
    colours = np.zeros((*targets.shape, 3), np.float32)
    for value, colour in TARGET_COLOURS.items():
        colours[targets == value] = colour
    return overlay((base * 0.6).astype(np.uint8), colours, targets >= 0, 0.8)


def main() -> None:
    image, truth = synthetic_nuclei_2d((160, 200), seed=7, radius=13.0, coverage=0.45)
    region = left_half(truth.shape)
    parent = resolve_model("nuclei")
    result = segment(image, parent, device="cpu", precision="float32")
    base = grey(image)
    columns = []
    for style, title in STYLES.items():
        annotation = paint(style, truth, result, region, np.random.default_rng(3), objects=6)
        targets = derive_targets(annotation, "instance", closed_objects(annotation, result))
        column = np.concatenate([painting_panel(base, annotation), targets_panel(base, targets)], axis=0)
        columns.append((f"({style}) {title}", column))
    gap = 8
    height, width = columns[0][1].shape[:2]
    sheet = Image.new("RGB", (len(columns) * (width * ZOOM + gap), height * ZOOM + LABEL_HEIGHT), "white")
    draw = ImageDraw.Draw(sheet)
    for k, (title, column) in enumerate(columns):
        left = k * (width * ZOOM + gap)
        sheet.paste(Image.fromarray(column).resize((width * ZOOM, height * ZOOM), Image.NEAREST), (left, LABEL_HEIGHT))
        draw.text((left + 4, 4), title, fill="black")
    out = ROOT / "docs" / "images" / "painting-styles.png"
    sheet.save(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
