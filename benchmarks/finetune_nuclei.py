"""Fine-tuning the built-in ``nuclei`` model from a few painted objects, in each way a person paints.

    python benchmarks/finetune_nuclei.py                      # cells3d (needs ../shared/data) and synthetic
    python benchmarks/finetune_nuclei.py --data synthetic --seconds 30 --seeds 1

For each data set, seed and painting style, one region of one plane (its left half) is painted
automatically from the ground truth, the model is fine-tuned on it for ``--seconds`` on the CPU,
and object F1 at IoU 0.5 is measured on the unpainted region (the right half) before and after:

* ``a`` whole objects, one id each, nothing painted around them;
* ``b`` whole objects plus short background strokes;
* ``c`` a dab or a short line inside each object, plus background strokes;
* ``d`` "From result" (the model's own labels) with its mistakes corrected: false objects painted
  over as background, missed objects painted in, merged objects split.

Data: ``cells3d``, the real nuclei stack of ``../shared/data/cells3d-nuclei`` (in-focus slices
24-40; one slice is painted, the right half of every in-focus slice is scored; its labels are rough);
``synthetic``, one 512 x 512 image of ``napari_unetseg.synthetic`` per seed, each in its own random
style. The last line is ``finetune_min_gain=<x>``: the worst style's mean gain.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage as ndi

from napari_unetseg.inference import segment
from napari_unetseg.metrics import object_iou, object_matching
from napari_unetseg.models import resolve_model
from napari_unetseg.synthetic import synthetic_nuclei_2d
from napari_unetseg.targets import result_as_annotation
from napari_unetseg.training import TrainConfig, Trainer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))
from team_data import CELLS3D, require  # noqa: E402

IN_FOCUS = slice(24, 41)
STYLES = {"a": "whole objects", "b": "whole + background", "c": "strokes inside + background", "d": "corrected result"}

# --------------------------------------------------------------------------- painting as a person would


def paintable_objects(truth: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Ids of the truth objects lying wholly inside ``region`` (bool mask)."""
    ids = np.unique(truth[truth > 0])
    outside = np.unique(truth[(truth > 0) & ~region])
    return np.setdiff1d(ids, outside)


def background_strokes(
    truth: np.ndarray, region: np.ndarray, rng: np.random.Generator, count: int = 8, length: int = 24, width: int = 5
) -> np.ndarray:
    """``count`` short straight strokes (``width`` px brush) in background at least 4 px from any object."""
    allowed = region & (ndi.distance_transform_edt(truth == 0) > 4)
    out = np.zeros(truth.shape, bool)
    ys, xs = np.nonzero(allowed)
    if ys.size == 0:
        return out
    for i in rng.choice(ys.size, size=min(count, ys.size), replace=False):
        out |= _line(truth.shape, (ys[i], xs[i]), rng.uniform(0, np.pi), length, width) & allowed
    return out


def _line(shape: tuple[int, int], centre: tuple[int, int], angle: float, length: int, width: int) -> np.ndarray:
    """A straight stroke of ``length`` px through ``centre`` painted with a round brush of ``width`` px."""
    steps = np.arange(-(length // 2), length - length // 2)
    points = np.round([centre[0] + steps * np.sin(angle), centre[1] + steps * np.cos(angle)]).astype(int)
    keep = (points >= 0).all(0) & (points[0] < shape[0]) & (points[1] < shape[1])
    stroke = np.zeros(shape, bool)
    stroke[points[0, keep], points[1, keep]] = True
    return ndi.distance_transform_edt(~stroke) <= width / 2


def paint_whole(truth: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Each chosen object painted completely with its own id (2, 3, ...)."""
    annotation = np.zeros(truth.shape, np.uint32)
    for new_id, old in enumerate(ids, start=2):
        annotation[truth == old] = new_id
    return annotation


def paint_inside(truth: np.ndarray, ids: np.ndarray, rng: np.random.Generator, brush: int = 6) -> np.ndarray:
    """A dab (one click of a ``brush`` px brush) or a short line well inside each chosen object."""
    annotation = np.zeros(truth.shape, np.uint32)
    for new_id, old in enumerate(ids, start=2):
        inside = ndi.distance_transform_edt(truth == old)
        deep = inside > max(brush, 0.5 * inside.max())
        ys, xs = np.nonzero(deep if deep.any() else inside == inside.max())
        k = rng.integers(ys.size)
        if rng.random() < 0.5:
            mark = _line(truth.shape, (ys[k], xs[k]), 0.0, 1, brush)
        else:
            mark = _line(truth.shape, (ys[k], xs[k]), rng.uniform(0, np.pi), int(inside.max()), brush // 2)
        annotation[mark & (inside > brush / 2)] = new_id
    return annotation


def paint_corrections(result: np.ndarray, truth: np.ndarray, region: np.ndarray) -> np.ndarray:
    """"From result" over ``region`` (objects -> id + 1, the rest 1), then the result's mistakes fixed.

    A predicted object matching no truth object (IoU < 0.5) is painted over: as background when it
    lies mostly on background (a false object), else replaced by the truth objects under it (a
    merge split, or a badly drawn object redrawn). A truth object that nothing matches is painted in.
    Objects reaching outside the region are left unannotated (0), as a person would erase them.
    """
    annotation = result_as_annotation(result, "instance")
    truth_ids, pred_ids, iou = object_iou(result, truth)
    best = iou.max(axis=0).toarray().ravel() if iou.shape[0] else np.zeros(len(pred_ids))
    found = iou.max(axis=1).toarray().ravel() if iou.shape[1] else np.zeros(len(truth_ids))
    next_id = int(annotation.max()) + 1
    redraw = np.zeros(truth.shape, bool)
    for pred_id, score in zip(pred_ids, best):
        if score >= 0.5:
            continue
        mask = result == pred_id
        if (truth[mask] > 0).mean() < 0.5:
            annotation[mask] = 1
        else:
            redraw |= mask
    for truth_id, score in zip(truth_ids, found):
        mask = truth == truth_id
        if score < 0.5 or (redraw & mask).any():
            annotation[mask] = next_id
            next_id += 1
    annotation[redraw & (truth == 0)] = 1
    crossing = np.isin(result, np.unique(result[~region & (result > 0)]))
    crossing |= np.isin(truth, np.unique(truth[~region & (truth > 0)]))
    annotation[crossing | ~region] = 0
    return annotation


def paint(style: str, truth: np.ndarray, result: np.ndarray, region: np.ndarray, rng: np.random.Generator,
          objects: int = 12) -> np.ndarray:
    """The annotation of one plane in ``style`` (see the module docstring), inside ``region``."""
    if style == "d":
        return paint_corrections(result, truth, region)
    ids = paintable_objects(truth, region)
    ids = rng.permutation(ids)[:objects]
    annotation = paint_whole(truth, ids) if style in "ab" else paint_inside(truth, ids, rng)
    if style != "a":
        annotation[background_strokes(truth, region, rng) & (annotation == 0)] = 1
    return annotation


# --------------------------------------------------------------------------- data sets


@dataclass
class Case:
    """One fine-tuning problem: the painted plane, and the planes and region scored."""

    name: str
    image: np.ndarray  # (Y, X) painted plane
    truth: np.ndarray
    score_images: np.ndarray  # (N, Y, X)
    score_truth: np.ndarray
    region: np.ndarray  # painted region (bool, Y x X); the score covers the rest
    before: np.ndarray | None = None  # the parent's labels of the scored planes
    result: np.ndarray | None = None  # the parent's labels of the painted plane (for "From result")


def left_half(shape: tuple[int, int]) -> np.ndarray:
    region = np.zeros(shape, bool)
    region[:, : shape[1] // 2] = True
    return region


def cells3d_case(seed: int) -> Case:
    import tifffile

    require("benchmarks/finetune_nuclei.py", CELLS3D / "nuclei.tif", CELLS3D / "nuclei_label.tif",
            skip_hint="--data synthetic runs without it")
    image = tifffile.imread(CELLS3D / "nuclei.tif")[IN_FOCUS].astype(np.float32)
    truth = tifffile.imread(CELLS3D / "nuclei_label.tif")[IN_FOCUS]
    z = (3 + 5 * seed) % len(image)
    return Case(f"cells3d z={z + IN_FOCUS.start}", image[z], truth[z], image, truth, left_half(image.shape[1:]))


def synthetic_case(seed: int) -> Case:
    image, truth = synthetic_nuclei_2d((512, 512), seed=30_000 + seed)
    image = image.astype(np.float32)
    return Case(f"synthetic seed {30_000 + seed}", image, truth, image[None], truth[None], left_half(image.shape))


CASES = {"cells3d": cells3d_case, "synthetic": synthetic_case}


def unpainted_f1(labels: np.ndarray, case: Case) -> float:
    """Object F1 at IoU 0.5 on the scored region of every scored plane (objects pooled)."""
    keep = ~case.region
    cols = np.flatnonzero(keep.any(0))
    sl = (slice(None), slice(None), slice(cols[0], cols[-1] + 1))
    return object_matching(labels[sl], case.score_truth[sl], per_slice=True, thresholds=(0.5,))["f1"]


# --------------------------------------------------------------------------- the run


def run_case(case: Case, style: str, seed: int, seconds: float, iterations: int, parent, **options) -> dict:
    """Paint ``case`` in ``style``, fine-tune ``parent`` on it, and score the unpainted region before and after."""
    rng = np.random.default_rng(seed)
    if case.before is None:  # the parent's labels, the same for every style
        case.before = segment(case.score_images, parent, device="cpu", precision="float32")
        case.result = segment(case.image, parent, device="cpu", precision="float32")
    annotation = paint(style, case.truth, case.result, case.region, rng)
    config = TrainConfig(iterations=iterations, max_seconds=seconds, seed=seed, device="cpu", **options)
    started = time.perf_counter()
    trainer = Trainer(case.image, annotation, parent, config)
    for _ in trainer.steps():
        pass
    result = trainer.result()
    after_labels = segment(case.score_images, result.checkpoint(), device="cpu", precision="float32")
    before, after = unpainted_f1(case.before, case), unpainted_f1(after_labels, case)
    return {
        "case": case.name, "style": style, "seed": seed, "before": round(before, 4), "after": round(after, 4),
        "gain": round(after - before, 4), "iterations": trainer.done, "kept_iteration": result.best_iteration,
        "verdict": result.verdict, "painted_objects": int(len(np.unique(annotation[annotation >= 2]))),
        "seconds": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--styles", nargs="+", default=list(STYLES), choices=list(STYLES))
    parser.add_argument("--seeds", type=int, default=3, help="seeds per data set and style (default: 3)")
    parser.add_argument("--seconds", type=float, default=120.0, help="fine-tuning time budget (default: 120)")
    parser.add_argument("--iterations", type=int, default=100_000,
                        help="iteration cap, for runs that must not depend on the machine's speed (default: none)")
    parser.add_argument("--init", default="nuclei", help="built-in model name or checkpoint path")
    parser.add_argument("--option", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="a TrainConfig field for every run, e.g. --option distillation 0 (for experiments)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="PyTorch threads (default: all cores)")
    parser.add_argument("--json", type=Path, help="also write every row to this file")
    args = parser.parse_args()
    torch.set_num_threads(max(1, args.threads))
    parent = resolve_model(args.init)
    options = {name: json.loads(value) for name, value in args.option}
    print(f"# {args.init}, {args.seconds:.0f} s (at most {args.iterations} iterations) per fine-tune on the CPU "
          f"({torch.get_num_threads()} threads); options {options}")
    rows = []
    for data in args.data:
        for seed in range(args.seeds):
            case = CASES[data](seed)
            for style in args.styles:
                row = run_case(case, style, seed, args.seconds, args.iterations, parent, **options)
                rows.append({"data": data, **row})
                print(json.dumps(rows[-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    print("\n| data | style | before | after | gain (mean of seeds) | worst seed | kept parent |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    gains = {}
    for data in args.data:
        for style in args.styles:
            part = [r for r in rows if r["data"] == data and r["style"] == style]
            mean = lambda key: float(np.mean([r[key] for r in part]))  # noqa: E731
            gains[data, style] = mean("gain")
            kept = sum(r["verdict"] == "worse" for r in part)
            print(f"| {data} | {style}: {STYLES[style]} | {mean('before'):.3f} | {mean('after'):.3f} | "
                  f"{mean('gain'):+.3f} | {min(r['gain'] for r in part):+.3f} | {kept}/{len(part)} |")
    by_style = {s: min(gains[d, s] for d in args.data) for s in args.styles}
    print(f"\nbest style: {max(by_style, key=by_style.get)} (worst data set's mean gain {max(by_style.values()):+.3f})")
    print(f"finetune_min_gain={min(gains.values()):.4f}")


if __name__ == "__main__":
    main()
