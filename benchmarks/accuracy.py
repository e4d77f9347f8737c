"""Accuracy of the built-in models on data, as quoted in docs/models.md.

    python benchmarks/accuracy.py            # needs the team data: ../shared/data (ISBI 2012, cells3d nuclei)
    python benchmarks/accuracy.py --skip em  # only the nuclei part (cells3d nuclei)
    python benchmarks/accuracy.py --skip em --diameter 0  # ... at the images' own scale (no rescaling)

Without the data it stops with one line saying which file is missing (see ``recipes/team_data.py``).

* ``em-membranes`` on the ISBI 2012 test slices 25-29: pixel error and adapted Rand error with the
  shipped decision rule and with the plain arg-max.
* ``nuclei`` on the real cells3d nuclei stack (rough 3D labels, a development check): object F1 at
  IoU 0.5 slice by slice (objects pooled over the slices), over slices 15-44 and over the in-focus
  slices 24-40; the mean number of objects found on the slices with no nuclei (above the cells);
  and on held-out synthetic planes (those of ``recipes/train_nuclei.py``). ``--diameter`` is
  ``segment``'s (default auto: planes of large nuclei are shrunk to the model's size first).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import time

import numpy as np
import tifffile

from napari_unetseg.inference import resolve_checkpoint, segment
from napari_unetseg.metrics import evaluate, object_matching

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))
from team_data import CELLS3D, ISBI2012, require  # noqa: E402

EM_FILES = (ISBI2012 / "train-volume.tif", ISBI2012 / "train-labels.tif")
NUCLEI_FILES = (CELLS3D / "nuclei.tif", CELLS3D / "nuclei_label.tif")


def em_scores(precision: str) -> dict:
    volume = tifffile.imread(EM_FILES[0])[25:30]
    truth = tifffile.imread(EM_FILES[1])[25:30]
    shipped = resolve_checkpoint("em-membranes")
    argmax = replace(shipped, info=replace(shipped.info, decision_weights=None))
    rows = {}
    for name, checkpoint in (("shipped", shipped), ("argmax", argmax)):
        labels = segment(volume, checkpoint, device="cpu", precision=precision)
        scores = evaluate(labels, truth, "semantic", foreground=(2, 255))
        rows[name] = {key: round(scores[key], 4)
                      for key in ("pixel_error", "adapted_rand_error", "adapted_rand_error_unthinned")}
    return rows


def nuclei_scores(precision: str, diameter: float | str | None) -> dict:
    from train_nuclei import synthetic_set

    image = tifffile.imread(NUCLEI_FILES[0])
    truth = tifffile.imread(NUCLEI_FILES[1])
    start = time.perf_counter()
    labels = segment(image, "nuclei", device="cpu", precision=precision, diameter=diameter)
    seconds = time.perf_counter() - start

    def f1(planes: slice) -> float:
        return round(object_matching(labels[planes], truth[planes], per_slice=True, thresholds=(0.5,))["f1"], 4)

    images, synthetic_truth = synthetic_set(24, seed=10_000)
    synthetic_labels = segment(images, "nuclei", device="cpu", precision=precision, diameter=diameter)
    synthetic = object_matching(synthetic_labels, synthetic_truth, per_slice=True)
    empty = [z for z in range(len(truth)) if not truth[z].any()]  # slices above (and below) the cells
    objects_on_empty = [len(np.unique(labels[z])) - 1 for z in empty]
    return {
        "cells3d_objects_per_empty_slice": round(float(np.mean(objects_on_empty)), 2),
        "cells3d_empty_slices": f"{min(empty)}-{max(empty)} ({len(empty)})",
        "cells3d_f1_slices_15_44": f1(slice(15, 45)),
        "cells3d_f1_in_focus_24_40": f1(slice(24, 41)),
        "cells3d_f1_per_slice": {z: f1(slice(z, z + 1)) for z in range(15, 45)},
        "synthetic_f1": round(synthetic["f1"], 4),
        "cells3d_seconds": round(seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip", nargs="*", default=[], choices=["em", "nuclei"])
    parser.add_argument("--precision", default="auto", help="auto (what users get), float32 (as the recipes score)")
    parser.add_argument("--diameter", default="auto", help="the nuclei's diameter in pixels, auto (default) or 0: "
                        "the images' own scale")
    parser.add_argument("--threads", type=int, help="PyTorch threads (default: PyTorch's)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    diameter = "auto" if args.diameter == "auto" else (float(args.diameter) or None)
    if "em" not in args.skip:
        require("benchmarks/accuracy.py", *EM_FILES, skip_hint="--skip em leaves the EM part out")
    if "nuclei" not in args.skip:
        require("benchmarks/accuracy.py", *NUCLEI_FILES, skip_hint="--skip nuclei leaves the nuclei part out")
    result = {}
    if "em" not in args.skip:
        result["em-membranes, ISBI slices 25-29"] = em_scores(args.precision)
    if "nuclei" not in args.skip:
        result["nuclei"] = nuclei_scores(args.precision, diameter)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
