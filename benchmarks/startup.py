"""Start-up time of the ``unetseg`` command: what a user waits for before (and around) the work.

    python benchmarks/startup.py                 # 3 runs of each command, median wall time
    python benchmarks/startup.py --runs 5 --size 256

Needs no data: the one-plane image is a synthetic nuclei plane written to a temporary folder.
Each command runs as ``python -m napari_unetseg.cli ...`` in a fresh process (what the ``unetseg``
script does), so every row includes the interpreter and the imports. The cache (the exported ONNX
network, and the verdict of the bfloat16 probe that ``--precision auto`` runs on CPUs with native
bfloat16) lives in a temporary folder (``NAPARI_UNETSEG_CACHE_DIR``): a "cold" row empties it before
every run (the first segment after an install or with a new model), a "warm" row keeps it (every later
one). The defaults choose bfloat16 on CPUs with native bfloat16 (when the probe agrees), else float32
with ONNX Runtime when it is installed: the ONNX rows are what a CPU without bfloat16 (AVX2 only) runs.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tifffile

from napari_unetseg.synthetic import synthetic_nuclei_2d


def wall_seconds(args: list[str], env: dict[str, str], runs: int, before_each=None) -> float:
    """Median wall time of ``python -m napari_unetseg.cli ARGS`` over ``runs`` fresh processes."""
    times = []
    for _ in range(runs):
        if before_each is not None:
            before_each()
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "napari_unetseg.cli", *args], env=env,
                              capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        if done.returncode != 0:
            raise SystemExit(f"unetseg {' '.join(args)} failed:\n{done.stderr}")
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per command (median reported)")
    parser.add_argument("--size", type=int, default=256, help="side of the one-plane image (px)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        image = folder / "plane.tif"
        tifffile.imwrite(image, synthetic_nuclei_2d((args.size, args.size), seed=0)[0])
        cache = folder / "cache"
        env = {**os.environ, "NAPARI_UNETSEG_CACHE_DIR": str(cache)}

        def empty_cache() -> None:
            shutil.rmtree(cache, ignore_errors=True)

        segment = ["segment", str(image), "-o", str(folder / "out"), "--overwrite", "-q"]
        onnx = [*segment, "--precision", "float32"]
        rows = [
            ("`unetseg --help`", wall_seconds(["--help"], env, args.runs)),
            ("`unetseg models`", wall_seconds(["models"], env, args.runs)),
            (f"`unetseg segment`, one {args.size} px plane, defaults, cold cache",
             wall_seconds(segment, env, args.runs, empty_cache)),
            ("same, warm cache", wall_seconds(segment, env, args.runs)),
            ("same with `--precision float32` (ONNX Runtime), cold cache",
             wall_seconds(onnx, env, args.runs, empty_cache)),
            ("same, warm cache", wall_seconds(onnx, env, args.runs)),
        ]
    print(f"# {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"median of {args.runs} runs, load average {os.getloadavg()[0]:.1f} at the end")
    print("| command | wall time |\n| --- | ---: |")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.2f} s |")


if __name__ == "__main__":
    main()
