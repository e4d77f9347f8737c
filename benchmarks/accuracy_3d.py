"""3D object accuracy of the built-in nuclei model, method by method, as quoted in docs/models.md.

    python benchmarks/accuracy_3d.py                 # cells3d (needs ../shared/data) and synthetic stacks
    python benchmarks/accuracy_3d.py --skip cells3d  # synthetic stacks only

For each stack and method it prints the 3D object F1 at IoU 0.5 (one object per 3D nucleus), the
mean per-slice F1 (each slice's 2D objects matched on their own), the objects found, seconds, the
seconds as a multiple of the plain 2D pass (``segment`` without ``stitch_z``, run just before each
method, so the two share the machine's load) and the peak resident memory above the start (Linux). Methods:

* ``linking``: each XY plane on its own, objects linked to the previous plane (the method before 3D mode);
* ``consensus``: XY, XZ and YZ planes averaged, 3D watershed, at the stack's own scale (``diameter=None``);
* ``consensus+size``: the same after rescaling to the model's object size (``diameter="auto"``, the default).

Stacks: the real cells3d nuclei stack (rough labels), and synthetic stacks with exact truth made by
``synthetic_nuclei_3d``: isotropic, and anisotropic with a Z step 3x the XY pixel (``voxel_size`` given).
"""

from __future__ import annotations

import argparse
import platform
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import tifffile
import torch

from napari_unetseg.inference import segment
from napari_unetseg.metrics import object_matching
from napari_unetseg.postprocess import stitch_slices
from napari_unetseg.synthetic import synthetic_nuclei_3d

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "recipes"))
from team_data import CELLS3D, require  # noqa: E402

SYNTHETIC_SEEDS = (0, 1, 2)


def _resident_bytes() -> int:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * 4096
    except OSError:
        return 0


def measured(run: Callable[[], np.ndarray]) -> tuple[np.ndarray, float, float]:
    """``run()``'s result, its seconds, and the peak resident memory above the start in MiB (sampled)."""
    start_bytes, peak, done = _resident_bytes(), [0], threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak[0] = max(peak[0], _resident_bytes())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    result = run()
    seconds = time.perf_counter() - started
    done.set()
    sampler.join()
    return result, seconds, max(0, peak[0] - start_bytes) / 2**20


OPTIONS = {"device": "cpu", "precision": "float32"}


def plain_pass(stack: np.ndarray) -> np.ndarray:
    """The plain 2D pass the times are compared with: every XY plane on its own, no 3D ids."""
    return segment(stack, "nuclei", axes="ZYX", **OPTIONS)


def methods(voxel_size: tuple[float, float, float] | None) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    options = OPTIONS
    return {
        "linking": lambda stack: stitch_slices(segment(stack, "nuclei", axes="ZYX", **options)),
        "consensus": lambda stack: segment(
            stack, "nuclei", axes="ZYX", stitch_z=True, voxel_size=voxel_size, diameter=None, **options
        ),
        "consensus+size": lambda stack: segment(
            stack, "nuclei", axes="ZYX", stitch_z=True, voxel_size=voxel_size, **options
        ),
    }


def stacks(skip: list[str]) -> list[tuple[str, np.ndarray, np.ndarray, tuple[float, float, float] | None]]:
    cases = []
    if "cells3d" not in skip:
        require("benchmarks/accuracy_3d.py", CELLS3D / "nuclei.tif", skip_hint="--skip cells3d leaves it out")
        cases.append(("cells3d", tifffile.imread(CELLS3D / "nuclei.tif"), tifffile.imread(CELLS3D / "nuclei_label.tif"),
                      None))
    if "synthetic" not in skip:
        for seed in SYNTHETIC_SEEDS:
            image, truth = synthetic_nuclei_3d((48, 160, 160), seed=seed, radius=(8.0, 14.0), coverage=0.25,
                                              z_spacing=1.0)
            cases.append((f"synthetic isotropic, seed {seed}", image, truth, None))
        for seed in SYNTHETIC_SEEDS:
            image, truth = synthetic_nuclei_3d((16, 160, 160), seed=seed, radius=(8.0, 14.0), coverage=0.25,
                                              z_spacing=3.0)
            cases.append((f"synthetic Z step 3x, seed {seed}", image, truth, (3.0, 1.0, 1.0)))
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip", nargs="*", default=[], choices=["cells3d", "synthetic"])
    parser.add_argument("--threads", type=int, default=0, help="PyTorch threads (default: PyTorch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    capability = torch.backends.cpu.get_cpu_capability()
    print(f"# {platform.processor() or platform.machine()}, CPU capability {capability}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print("| stack | method | 3D F1@0.5 | per-slice F1 | objects (truth) | seconds | x 2D pass | peak MiB |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    summary: dict[str, list[float]] = {}
    cases = stacks(args.skip)
    plain_pass(cases[0][1][:2])  # loads the model, so the first stack's times do not include it
    for name, image, truth, voxel_size in cases:
        for method, run in methods(voxel_size).items():
            _, plain_seconds, _ = measured(partial(plain_pass, image))
            labels, seconds, peak = measured(partial(run, image))
            volume = object_matching(labels, truth)
            slices = object_matching(labels, truth, per_slice=True)
            summary.setdefault(f"{name.split(',')[0]} {method}", []).append(volume["f1"])
            print(f"| {name} | {method} | {volume['f1']:.3f} | {slices['f1']:.3f} | "
                  f"{volume['n_prediction']} ({volume['n_truth']}) | {seconds:.1f} | {seconds / plain_seconds:.2f} | "
                  f"{peak:.0f} |", flush=True)
    print()
    for key, values in summary.items():
        print(f"mean 3D F1, {key}: {np.mean(values):.3f}")


if __name__ == "__main__":
    main()
