"""Peak memory for one very large plane: overlap-tiles keep the network's memory bounded by the tile.

    python benchmarks/large_plane.py --size 8192
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from inference import PeakMemory, make_stack
from napari_unetseg.device import get_device
from napari_unetseg.inference import segment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--model", default="nuclei")
    parser.add_argument("--tile-size", type=int, default=1024)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = get_device(args.device)
    plane = make_stack(args.size, 1)[0]
    with PeakMemory(device) as memory:
        start = time.perf_counter()
        labels = segment(plane, args.model, device=device, tile_size=args.tile_size, backend="auto")
        seconds = time.perf_counter() - start
    print(f"{args.size}x{args.size} plane ({plane.nbytes / 2**20:.0f} MB uint16) on {device}: {seconds:.1f} s, "
          f"{len(np.unique(labels)) - 1} objects, peak RSS {memory.peak_rss / 2**30:.2f} GB"
          + (f", CUDA peak {memory.cuda_peak / 2**30:.2f} GB" if device.type == "cuda" else ""))


if __name__ == "__main__":
    main()
