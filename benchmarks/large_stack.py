"""Peak memory while segmenting a stack larger than memory should allow: streamed from a lazy array into zarr.

    python benchmarks/large_stack.py                    # 512 x 1024 x 1024 float32 = 2.1 GB, in this process
    python benchmarks/large_stack.py --cli              # the same stack from a zarr store, via 'unetseg segment'
    python benchmarks/large_stack.py --planes 64        # a quick run
    python benchmarks/large_stack.py --stitch-z --planes 128 --size 512 --memory-budget 300
                                                        # 3D objects (consensus) in Z-slabs of a 300 MB budget

The stack is generated plane by plane on demand (a dask array over a function), so it never
exists in memory as a whole; the labels go into a zarr store in a temporary folder. The network
is a tiny hand-wired U-Net that finds every bright disc (about 700 per plane), so the run is
short but the labels are real. The numbers: peak resident memory of the process doing the work
(Linux ``VmHWM``, or ``ru_maxrss`` of the ``unetseg`` child with ``--cli``), time and throughput.
The issue's target: peak RSS under 1.5 GB for a stack of at least 2 GB.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from test_scaling import threshold_unet  # noqa: E402  (the hand-wired network of the tests)

from napari_unetseg.checkpoint import ModelInfo, save_checkpoint  # noqa: E402
from napari_unetseg.inference import segment  # noqa: E402
from napari_unetseg.io import create_labels_zarr  # noqa: E402

GB = 1e9


def disc_plane(z: int, size: int) -> np.ndarray:
    """A float32 plane of bright discs (radius 10, every 40 px) on a dark background, shifted by ``z``."""
    yy, xx = np.ogrid[:size, :size]
    plane = np.full((size, size), 100, np.float32)
    plane[((yy + z) % 40 - 20) ** 2 + ((xx + 2 * z) % 40 - 20) ** 2 <= 100] = 1000
    return plane


def lazy_stack(planes: int, size: int):
    """A ``(planes, size, size)`` float32 dask array whose planes are made only when read."""
    import dask.array as da

    def block(block_info=None) -> np.ndarray:
        return disc_plane(block_info[None]["chunk-location"][0], size)[np.newaxis]

    return da.map_blocks(block, dtype=np.float32, chunks=((1,) * planes, (size,), (size,)))


def peak_rss() -> int:
    """This process's peak resident memory so far, in bytes (Linux)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status (not Linux?)")


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def in_process(image, model: Path, out: Path, batch_size: int) -> tuple[float, int]:
    """Segment ``image`` into a zarr store at ``out`` here; return (seconds, peak RSS)."""
    labels = create_labels_zarr(out, image.shape, np.uint32)
    started = time.perf_counter()
    segment(image, model, device="cpu", batch_size=batch_size, out=labels)
    return time.perf_counter() - started, peak_rss()


def in_slabs(image, model: Path, out: Path, batch_size: int, memory_budget: int) -> tuple[float, int]:
    """3D objects of ``image`` (the consensus method, in Z-slabs of ``memory_budget`` bytes) into ``out``."""
    from napari_unetseg.axes import parse_axes
    from napari_unetseg.inference import PlanePredictor, resolve_checkpoint
    from napari_unetseg.slabs import iter_segment_stacks

    labels = create_labels_zarr(out, image.shape, np.uint32)
    predictor = PlanePredictor(resolve_checkpoint(model), "cpu", batch_size)
    started = time.perf_counter()
    for _ in iter_segment_stacks(image, parse_axes(image.shape, "ZYX"), predictor, labels, diameter=None,
                                 memory_budget=memory_budget):
        pass
    return time.perf_counter() - started, peak_rss()


def via_cli(image, model: Path, out: Path, batch_size: int) -> tuple[float, int]:
    """Write ``image`` to a zarr store, then run ``unetseg segment`` on it; return (seconds, child's peak RSS)."""
    import dask.array as da

    source = out.with_name("image.zarr")
    store = zarr.create_array(store=str(source), shape=image.shape, chunks=(1, *image.shape[1:]), dtype=image.dtype)
    da.store(image, store, lock=False)
    print(f"input store: {folder_bytes(source) / 1e6:.1f} MB on disk (compressed)", flush=True)
    command = [sys.executable, "-m", "napari_unetseg.cli", "segment", str(source), "-o", str(out), "-m", str(model),
               "--device", "cpu", "--axes", "ZYX", "--batch-size", str(batch_size), "-q"]
    started = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - started, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--planes", type=int, default=512, help="number of planes (default: 512)")
    parser.add_argument("--size", type=int, default=1024, help="plane height and width (default: 1024)")
    parser.add_argument("--batch-size", type=int, default=4, help="planes per batch (default: 4)")
    parser.add_argument("--cli", action="store_true", help="read the stack from a zarr store via 'unetseg segment'")
    parser.add_argument("--stitch-z", action="store_true", help="3D objects by consensus, in Z-slabs (in this process)")
    parser.add_argument("--memory-budget", type=float, default=2048, help="with --stitch-z: MB per slab (default 2048)")
    args = parser.parse_args()

    image = lazy_stack(args.planes, args.size)
    with tempfile.TemporaryDirectory(prefix="unetseg-large-") as tmp:
        model = save_checkpoint(Path(tmp) / "threshold.pt", threshold_unet(), ModelInfo(mode="instance"))
        out = Path(tmp) / "labels.zarr"
        print(f"stack: {image.shape} {image.dtype} = {image.nbytes / GB:.2f} GB, generated plane by plane", flush=True)
        print(f"peak RSS before segmenting: {peak_rss() / GB:.2f} GB (imports)", flush=True)
        if args.stitch_z:
            seconds, peak = in_slabs(image, model, out, args.batch_size, int(args.memory_budget * 1e6))
        else:
            seconds, peak = (via_cli if args.cli else in_process)(image, model, out, args.batch_size)
        labels = zarr.open_array(str(out), mode="r")
        if args.stitch_z:  # plane by plane, so reading the labels back adds nothing to the peak
            ids = max(int(np.asarray(plane).max()) for plane in labels)
        else:
            ids = int(np.asarray(labels[-1]).max())
        print(f"labels: {labels.nbytes / GB:.2f} GB uint32, {folder_bytes(out) / 1e6:.1f} MB on disk, {ids} objects")
        print(f"time: {seconds:.0f} s ({args.planes / seconds:.2f} planes/s)")
        where = "'unetseg segment' process" if args.cli else "this process"
        print(f"peak RSS of {where}: {peak / GB:.2f} GB  ({'under' if peak < 1.5 * GB else 'OVER'} 1.5 GB)")


if __name__ == "__main__":
    main()
