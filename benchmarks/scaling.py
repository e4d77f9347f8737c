"""Speedup from dask.distributed workers on this machine: one process vs a LocalCluster of 1, 2, ... workers.

    python benchmarks/scaling.py                          # 48 planes of 1024 x 1024, 1 and 2 workers, 3 rounds
    python benchmarks/scaling.py --planes 96 --workers 1 2 4 --rounds 5

The stack (uint16 discs) is written to a zarr store first, as the command line reads it; the
network is the tests' hand-wired U-Net widened to ``--channels`` so it costs what a small trained
one costs. Every run segments the whole stack into a new zarr store and is checked to give the
single-process labels. The clusters are started (and their workers import PyTorch) before the
timing; a run includes each worker loading the model once. The workers share the cores: with N
workers each gets 1/N of them for PyTorch (see ``local_client``).

On a shared machine one run says little, so the configurations take turns for ``--rounds``
rounds and the best time of each is compared (the run least disturbed by others), with the
median beside it.
"""

from __future__ import annotations

import argparse
import importlib
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import numpy as np
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parent))

from large_stack import disc_plane, threshold_unet  # noqa: E402

from napari_unetseg.checkpoint import ModelInfo, save_checkpoint  # noqa: E402
from napari_unetseg.distributed import local_client, segment_distributed  # noqa: E402
from napari_unetseg.engine_settings import EngineSettings  # noqa: E402
from napari_unetseg.inference import segment  # noqa: E402
from napari_unetseg.io import create_labels_zarr, read_image  # noqa: E402


def timed(run: Callable[[zarr.Array], object], out: zarr.Array) -> float:
    started = time.perf_counter()
    run(out)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--planes", type=int, default=48, help="number of planes (default: 48)")
    parser.add_argument("--size", type=int, default=1024, help="plane height and width (default: 1024)")
    parser.add_argument("--channels", type=int, default=4, help="width of the network's first level (default: 4)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="cluster sizes (default: 1 2)")
    parser.add_argument("--rounds", type=int, default=3, help="turns each configuration takes (default: 3)")
    args = parser.parse_args()

    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} before the runs", flush=True)
    with tempfile.TemporaryDirectory(prefix="unetseg-scaling-") as tmp, ExitStack() as stack:
        folder = Path(tmp)
        model = save_checkpoint(folder / "model.pt", threshold_unet(args.channels, 2), ModelInfo(mode="instance"))
        source = folder / "stack.zarr"
        shape = (args.planes, args.size, args.size)
        image = zarr.create_array(store=str(source), shape=shape, chunks=(1, args.size, args.size), dtype=np.uint16)
        for z in range(args.planes):
            image[z] = disc_plane(z, args.size).astype(np.uint16)

        runs: dict[str, Callable[[zarr.Array], object]] = {
            "single process": lambda out: segment(read_image(source), model, device="cpu", out=out)
        }
        for workers in args.workers:
            started = time.perf_counter()
            client = stack.enter_context(local_client(workers))
            client.run(importlib.import_module, "napari_unetseg.distributed")
            print(f"{workers} worker(s): cluster up and imports done in {time.perf_counter() - started:.1f} s")
            runs[f"{workers} worker(s)"] = lambda out, client=client: segment_distributed(
                source, out, model, client, EngineSettings(device="cpu")
            )

        times: dict[str, list[float]] = {name: [] for name in runs}
        expected = None
        for round_ in range(args.rounds):
            for number, (name, run) in enumerate(runs.items()):
                out = create_labels_zarr(folder / f"labels-{round_}-{number}.zarr", shape, np.uint32)
                times[name].append(timed(run, out))
                labels = out[:]
                expected = labels if expected is None else expected
                assert np.array_equal(labels, expected), f"{name} gave other labels than the single process"
            print(f"round {round_ + 1}: " + ", ".join(f"{n} {t[-1]:.1f} s" for n, t in times.items()), flush=True)

    print(f"all runs gave identical labels; load average after the runs: {os.getloadavg()[0]:.1f}")
    best = {name: min(values) for name, values in times.items()}
    for name, values in times.items():
        print(
            f"{name}: best {best[name]:.1f} s ({args.planes / best[name]:.2f} planes/s), "
            f"median {statistics.median(values):.1f} s"
        )
    first, *others = args.workers
    for workers in others:
        speedup = best[f"{first} worker(s)"] / best[f"{workers} worker(s)"]
        print(f"speedup {first} -> {workers} worker(s): {speedup:.2f}x (best times)")


if __name__ == "__main__":
    main()
