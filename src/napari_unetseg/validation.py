"""Held-out painted data, and the score on it that decides which weights a training run keeps.

Instance annotations with enough painted objects hold out whole objects and score them as a
person would see them: segmented, then found or not, merged or not, and how well outlined
(:func:`~.metrics.painted_object_score`). Other annotations hold out blocks of painted pixels and
score them by mean IoU over classes.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from .augment import patch_coordinates, sample_image, sample_labels
from .predictor import PlanePredictor
from .metrics import mean_iou, painted_object_score
from .model import UNet, nearest_valid_size
from .targets import IGNORE
from .training_data import VAL_BLOCK, Plane, split_blocks, split_objects


class HeldOut:
    """Holds out part of ``planes``' painting (in place) and scores networks on it.

    ``kind`` is ``"objects"``, ``"pixel mean IoU"``, or ``None`` when too little is painted to hold
    anything out (then ``bool(held_out)`` is false).
    """

    def __init__(
        self, planes: list[Plane], mode: str, model: UNet, fraction: float, max_blocks: int, rng: np.random.Generator
    ) -> None:
        self.planes = planes
        self.windows = split_objects(planes, rng) if mode == "instance" else []
        self.blocks = [] if self.windows else split_blocks(planes, fraction, max_blocks, rng)
        self.kind = "objects" if self.windows else "pixel mean IoU" if self.blocks else None
        self.block_batch = self._block_batch(model) if self.blocks else None

    def __bool__(self) -> bool:
        return self.kind is not None

    def _block_batch(self, model: UNet) -> tuple[torch.Tensor, np.ndarray]:
        """Inputs with context around each held-out block, and the block's held-out targets."""
        size = VAL_BLOCK + 96
        if model.config["padding"] == "valid":
            size = nearest_valid_size(VAL_BLOCK + 2 * model.context_margin(), model.depth)
        m = (size - VAL_BLOCK) // 2
        self.block_crop = (model.output_size(size) - VAL_BLOCK) // 2
        images, targets = [], []
        for k, top, left in self.blocks:
            coords = patch_coordinates((size, size), (top - m + size // 2, left - m + size // 2))
            images.append(sample_image(self.planes[k].image, coords))
            block = coords[:, m : m + VAL_BLOCK, m : m + VAL_BLOCK]
            targets.append(sample_labels(self.planes[k].val_targets, block, IGNORE))
        return torch.from_numpy(np.stack(images))[:, None], np.stack(targets)

    def summary(self) -> dict[str, int]:
        """How much was held out, for the checkpoint's provenance."""
        if self.windows:
            return {"val_objects": sum(len(np.unique(p.val_annotation[p.val_annotation >= 2]))
                                       for p in self.planes if p.val_annotation is not None)}
        if self.block_batch is not None:
            return {"val_pixels": int((self.block_batch[1] >= 0).sum())}
        return {}

    @torch.no_grad()
    def score(self, model: UNet, predictor: Callable[[UNet], PlanePredictor], autocast: torch.autocast) -> float:
        """The score of ``model`` (in eval mode). ``predictor`` makes the segmenter for held-out objects;
        ``autocast`` is the training's precision context, for the pixel scores."""
        if self.windows:
            return self._object_score(predictor(model))
        images, targets = self.block_batch
        c, predicted = self.block_crop, []
        device = next(model.parameters()).device
        for chunk in images.split(8):
            with autocast:
                logits = model(chunk.to(device))
            predicted.append(logits[..., c : c + VAL_BLOCK, c : c + VAL_BLOCK].argmax(1).cpu().numpy())
        return mean_iou(np.concatenate(predicted), targets, ignore=IGNORE)

    def _object_score(self, predictor: PlanePredictor) -> float:
        """:func:`~.metrics.painted_object_score` of the held-out objects, each window segmented as
        users will get it, weighted by the number of held-out objects in the window."""
        total = weight = 0.0
        for k, window in self.windows:
            plane = self.planes[k]
            held = plane.val_annotation[window]
            labels = predictor.labels(predictor.probabilities([plane.image[window][None]])[0])
            count = max(1, len(np.unique(held[held >= 2])))
            total += count * painted_object_score(labels, held, plane.closed[window])
            weight += count
        return total / weight
