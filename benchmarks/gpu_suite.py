"""The GPU suite: every GPU figure of issue 17 in one run and one markdown table (under 5 minutes on a CUDA machine).

    bash benchmarks/gpu_suite.sh                      # auto device (CUDA when there is one)
    bash benchmarks/gpu_suite.sh --dry-run            # every code path on tiny sizes, on the CPU (CI)
    bash benchmarks/gpu_suite.sh --out results.md     # where the table goes (default: gpu_suite.md)

Rows, all with the built-in model on synthetic nuclei:

- naive against default at 512 and 2048 px, in planes/s, with peak GPU and host memory; the naive
  loop is benchmarks/inference.py's (one plane at a time, float32, CPU watershed); ``default`` is
  :func:`~napari_unetseg.inference.segment` as shipped; two more rows take the largest batch that
  fits with the post-processing on the CPU and on the device;
- model only (the network on planes already on the device) against end to end (uint16 planes on the
  host in, labels on the host out);
- fine-tuning: iterations/s, and the time to the first snapshot whose labels score a better object
  F1 than the start model on the unpainted half (snapshots are scored after training);
- the 8192 px plane: seconds and peak memory;
- the agreement check: device against CPU post-processing of the same probabilities
  (:func:`~napari_unetseg.metrics.agreement`'s bar), plus each row's agreement with the naive loop.

The CPU's and GPU's features are printed first; the last line is ``gpu_speedup_vs_naive=<x>``
(default against naive at the small size).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from napari_unetseg.atomic import atomic_write
from napari_unetseg.checkpoint import Checkpoint
from napari_unetseg.device import get_device
from napari_unetseg.engine_settings import EngineSettings
from napari_unetseg.axes import parse_axes
from napari_unetseg.inference import PlanePredictor, predict_planes, segment
from napari_unetseg.metrics import agreement, object_matching
from napari_unetseg.models import resolve_model
from napari_unetseg.postprocess_torch import device_postprocess_agrees
from napari_unetseg.synthetic import synthetic_nuclei_2d
from napari_unetseg.training import TrainConfig, Trainer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from inference import PeakMemory, make_stack, naive_segment  # noqa: E402

#: Crowded, touching nuclei: a style the built-in model still gets wrong now and then, so fine-tuning can win.
FINETUNE_STYLE = {"coverage": 0.55, "spacing": 0.8, "clustering": 0.8, "radius": 12.0}


@dataclass(frozen=True)
class Sizes:
    """What one run measures on: plane sides, planes per stack, the fine-tuning budget."""

    small: int
    large: int
    huge: int
    small_planes: int
    large_planes: int
    finetune_size: int
    finetune_seconds: float | None
    finetune_iterations: int
    snapshot_every: float
    patch_size: int


FULL = Sizes(512, 2048, 8192, 256, 16, 512, 40.0, 100_000, 2.0, 128)
DRY = Sizes(64, 96, 128, 3, 2, 96, None, 3, 0.0, 64)


def cpu_features() -> str:
    """The CPU and the instruction-set features that decide its speed (from /proc/cpuinfo where there is one)."""
    flags: set[str] = set()
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    wanted = {"AVX2": "avx2", "AVX-512": "avx512f", "AVX512-BF16": "avx512_bf16", "AMX": "amx_tile",
              "AVX512-VNNI": "avx512_vnni", "AVX-VNNI": "avx_vnni"}
    named = ", ".join(f"{name} {'yes' if flag in flags else 'no'}" for name, flag in wanted.items())
    return f"CPU: {model}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}; {named}"


def gpu_features(device: torch.device) -> str:
    """The GPU's name, compute capability, memory and what PyTorch was built with."""
    if device.type != "cuda":
        return f"GPU: none used (device {device}; torch {torch.__version__}, CUDA build {torch.version.cuda})"
    props = torch.cuda.get_device_properties(device)
    return (f"GPU: {props.name}, compute capability {props.major}.{props.minor}, {props.total_memory / 2**30:.0f} GiB, "
            f"{props.multi_processor_count} SMs, bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}; "
            f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(run: Callable[[], Any], device: torch.device) -> tuple[Any, float, PeakMemory]:
    """``run()``'s result, its seconds (device work included) and its peak memory."""
    with PeakMemory(device) as memory:
        start = time.perf_counter()
        result = run()
        synchronize(device)
        seconds = time.perf_counter() - start
    return result, seconds, memory


def engine(stack: np.ndarray, predictor: PlanePredictor) -> np.ndarray:
    """Labels of every plane of ``stack`` through :func:`~napari_unetseg.inference.predict_planes` (ids per plane)."""
    order = list(np.ndindex(stack.shape[0]))
    results = [plane for batch in predict_planes(stack, parse_axes(stack.shape), predictor, order) for plane in batch]
    return np.stack([plane.labels for plane in sorted(results, key=lambda plane: plane.index)])


class Table:
    """The rows of the suite and their markdown."""

    header = ("measure", "size", "count", "rate", "peak GPU MB", "peak RSS MB", "vs naive", "agreement")

    def __init__(self) -> None:
        self.rows: list[tuple[str, ...]] = []

    def add(self, measure: str, size: int | str, count: str, rate: str, memory: PeakMemory | None = None,
            versus: str = "", agrees: str = "") -> None:
        gpu = f"{memory.cuda_peak / 2**20:.0f}" if memory is not None and memory.device.type == "cuda" else "-"
        rss = f"{memory.peak_rss / 2**20:.0f}" if memory is not None else "-"
        self.rows.append((measure, str(size), count, rate, gpu, rss, versus or "-", agrees or "-"))
        print(" | ".join(self.rows[-1]), flush=True)

    def markdown(self) -> str:
        lines = ["| " + " | ".join(self.header) + " |", "| " + " | ".join(["---"] + ["---:"] * 7) + " |"]
        return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in self.rows]) + "\n"


def describe(labels: np.ndarray, reference: np.ndarray) -> str:
    check = agreement(labels, reference, "instance")
    return f"px {check['pixel_agreement']:.4f}, F1 {check['instance_f1']:.4f}{'' if check['same'] else ' (BELOW BAR)'}"


def throughput(table: Table, checkpoint: Checkpoint, device: torch.device, size: int, planes: int) -> dict[str, Any]:
    """Naive, default and largest-batch rows at ``size``; returns the labels and seconds the later rows use."""
    stack = make_stack(size, planes)
    naive_segment(stack[:1], checkpoint, device)  # warm-up: cuDNN picks its kernels for this size
    naive, naive_seconds, memory = measure(lambda: naive_segment(stack, checkpoint, device), device)
    table.add("naive loop (batch 1, float32, CPU watershed)", size, f"{planes} planes",
              f"{planes / naive_seconds:.1f} planes/s", memory, "x1.00")
    segment(stack[:2], checkpoint, device=device)
    labels, seconds, memory = measure(lambda: segment(stack, checkpoint, device=device), device)
    table.add("default: segment() as shipped", size, f"{planes} planes", f"{planes / seconds:.1f} planes/s", memory,
              f"x{naive_seconds / seconds:.2f}", describe(labels, naive))
    results = {"stack": stack, "naive": naive, "speedup": naive_seconds / seconds}
    for post in ("cpu", "device"):
        predictor = PlanePredictor(checkpoint, EngineSettings(device=device, batch_size=None, tile_size=max(size, 1024),
                                                   postprocess=post))
        engine(stack[:2], predictor)
        labels, seconds, memory = measure(lambda p=predictor: engine(stack, p), device)
        table.add(f"largest batch ({predictor.batch_size}), post-processing on {post}", size, f"{planes} planes",
                  f"{planes / seconds:.1f} planes/s", memory, f"x{naive_seconds / seconds:.2f}",
                  describe(labels, naive))
        results[post] = (labels, seconds, predictor)
    return results


def model_only(table: Table, small: dict[str, Any], device: torch.device) -> None:
    """The network alone on normalised planes already on the device, against the end-to-end row."""
    _, end_to_end, predictor = small["device"]
    stack = small["stack"]
    inputs = torch.from_numpy(np.stack([predictor.prepare(p[None]) for p in stack])).to(device)
    batches = inputs.split(predictor.batch_size)
    predictor.fast(batches[0])
    synchronize(device)
    _, seconds, memory = measure(lambda: [predictor.fast(batch) for batch in batches], device)
    planes = len(stack)
    table.add(f"model only (batch {predictor.batch_size}, inputs on the device)", stack.shape[-1],
              f"{planes} planes", f"{planes / seconds:.1f} planes/s", memory)
    table.add("end to end / model only (post-processing on the device)", stack.shape[-1], f"{planes} planes",
              f"{seconds / end_to_end:.0%}")


def agreement_check(table: Table, small: dict[str, Any], checkpoint: Checkpoint, device: torch.device,
                    probe: int) -> None:
    """Device against CPU post-processing on the same stack, and the fixed probe that ``postprocess="auto"`` runs."""
    device_labels, cpu_labels = small["device"][0], small["cpu"][0]
    equal = float((device_labels == cpu_labels).mean())
    table.add("agreement: device vs CPU post-processing", small["stack"].shape[-1], f"{len(cpu_labels)} planes",
              f"{equal:.2%} px equal", None, "", describe(device_labels, cpu_labels))
    predictor = small["device"][2]
    verdict = device_postprocess_agrees(predictor.fast, checkpoint.model, checkpoint.info.normalization, size=probe)
    table.add("agreement probe of postprocess='auto'", probe, "2 planes", "passes" if verdict else "FAILS")


def finetuning(table: Table, checkpoint: Checkpoint, device: torch.device, sizes: Sizes) -> None:
    """Fine-tune on the painted left half of a crowded image; it/s and the time to the first better snapshot."""
    image, truth = synthetic_nuclei_2d((sizes.finetune_size,) * 2, seed=7, **FINETUNE_STYLE)
    half = sizes.finetune_size // 2
    crossing = np.unique(truth[:, half - 1 : half + 1])
    painted = np.where(np.isin(truth, crossing[crossing > 0]), 0, truth.astype(np.int64) + 1)  # 1 = background
    painted[:, half:] = 0

    def score(model: Checkpoint) -> float:
        labels = segment(image, model, device=device)
        return object_matching(labels[:, half:], truth[:, half:], thresholds=(0.5,))["f1"]

    before = score(checkpoint)
    config = TrainConfig(iterations=sizes.finetune_iterations, max_seconds=sizes.finetune_seconds,
                         patch_size=sizes.patch_size, device=str(device), seed=0)
    trainer = Trainer(image, painted, checkpoint, config)
    snapshots = []
    for step in trainer.steps():
        if step.seconds >= sizes.snapshot_every * (len(snapshots) + 1):
            snapshots.append((step.seconds, trainer.result().checkpoint()))
    iterations, seconds = len(trainer.history), trainer.elapsed()
    first = next((at for at, model in snapshots if score(model) > before), None)
    table.add("fine-tuning (instance, painted half)", sizes.finetune_size, f"{iterations} iterations",
              f"{iterations / seconds:.2f} it/s", None, "",
              f"F1 before {before:.3f}; first better snapshot {'-' if first is None else f'{first:.1f} s'}")


def huge_plane(table: Table, checkpoint: Checkpoint, device: torch.device, size: int) -> None:
    plane = make_stack(size, 1)[0]
    labels, seconds, memory = measure(lambda: segment(plane, checkpoint, device=device), device)
    table.add("one huge plane, segment()", size, f"{int(labels.max())} objects", f"{seconds:.1f} s", memory)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU: every code path, no figures")
    parser.add_argument("--device", default="auto", help="default: auto (CPU with --dry-run)")
    parser.add_argument("--model", default="nuclei")
    parser.add_argument("--out", type=Path, default=Path("gpu_suite.md"), help="the markdown table's file")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    sizes = DRY if args.dry_run else FULL
    device = get_device("cpu" if args.dry_run and args.device == "auto" else args.device)
    if args.dry_run:
        torch.set_num_threads(min(2, torch.get_num_threads()))
    print(f"# {cpu_features()}")
    print(f"# {gpu_features(device)}")
    print(f"# device {device}; {'DRY RUN: tiny sizes, no figures to publish' if args.dry_run else 'full run'}")
    checkpoint = resolve_model(args.model)
    table = Table()
    print(" | ".join(Table.header))
    small = throughput(table, checkpoint, device, sizes.small, sizes.small_planes)
    throughput(table, checkpoint, device, sizes.large, sizes.large_planes)
    model_only(table, small, device)
    agreement_check(table, small, checkpoint, device, sizes.small)
    finetuning(table, checkpoint, device, sizes)
    huge_plane(table, checkpoint, device, sizes.huge)
    heading = f"GPU suite on {device} ({gpu_features(device)}; {cpu_features()})"
    with atomic_write(args.out, overwrite=True) as handle:
        handle.write(f"{heading}\n\n{table.markdown()}".encode())
    print(f"# table written to {args.out}; suite took {time.perf_counter() - started:.0f} s")
    print(f"gpu_speedup_vs_naive={small['speedup']:.2f}")


if __name__ == "__main__":
    main()
