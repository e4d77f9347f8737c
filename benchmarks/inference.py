"""Inference throughput and peak memory: our engine against the naive per-slice loop, MONAI and ONNX Runtime.

    python benchmarks/inference.py                      # 512 and 2048 px planes, 32 slices, auto device
    python benchmarks/inference.py --sizes 512 --slices 32 --device cpu

Every row runs the same weights (the built-in model, ``--model``) on the same synthetic nuclei stack
in this process. The naive baseline is what a plain PyTorch script does: a loop over slices,
batch 1, float32, default memory format, ``torch.no_grad``. Each optimised row's labels are
checked against the baseline's (pixel agreement and instance F1 at IoU 0.5). The last line is
``speedup_vs_naive=<x>`` for 512x512 planes on the device in use.

``--rounds N`` runs every row N times, interleaved (A, B, A, B, ...), and keeps each row's fastest
run, so a machine shared with other work skews the ratios less. To see a CPU without AVX-512 and
bfloat16 from PyTorch's side, run it under ``ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2``
(ONNX Runtime has no such switch: its kernels still use what the CPU has).
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from napari_unetseg.device import get_device
from napari_unetseg.engine_settings import EngineSettings
from napari_unetseg.inference import PlanePredictor, segment
from napari_unetseg.metrics import agreement
from napari_unetseg.models import resolve_model
from napari_unetseg.normalize import normalize_plane
from napari_unetseg.precision import onnxruntime_available
from napari_unetseg.predictor import bfloat16_verdict, make_fast_model
from napari_unetseg.precision import cpu_supports_bf16, resolve_precision
from napari_unetseg.quantize import cpu_kind
from napari_unetseg.synthetic import synthetic_nuclei_2d

DEFAULT = "unetseg default (auto)"


class PeakMemory:
    """Samples process RSS (and CUDA max allocated) in a thread while a block runs."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_rss = 0
        self._running = False

    @staticmethod
    def rss() -> int:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def _sample(self) -> None:
        while self._running:
            self.peak_rss = max(self.peak_rss, self.rss())
            time.sleep(0.005)

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        self._running = True
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._running = False
        self._thread.join()
        self.peak_rss = max(self.peak_rss, self.rss())

    @property
    def cuda_peak(self) -> int:
        return torch.cuda.max_memory_allocated() if self.device.type == "cuda" else 0


def make_stack(size: int, slices: int, seed: int = 0) -> np.ndarray:
    """A (slices, size, size) uint16 stack of synthetic nuclei planes."""
    tile = min(256, size)
    rng = np.random.default_rng(seed)
    stack = np.empty((slices, size, size), np.uint16)
    for z in range(slices):
        reps = -(-size // tile)
        blocks = [
            [np.clip(synthetic_nuclei_2d((tile, tile), rng=rng)[0], 0, 65535) for _ in range(reps)]
            for _ in range(reps)
        ]
        stack[z] = np.block(blocks)[:size, :size]
    return stack


def naive_segment(stack: np.ndarray, checkpoint, device: torch.device) -> np.ndarray:
    """The starting point: one slice at a time, float32, no tricks."""
    model = checkpoint.model.to(device).eval()
    reference = PlanePredictor(checkpoint, EngineSettings(device="cpu", precision="float32"))  # only for its post-processing
    norm = checkpoint.info.normalization
    out = []
    next_id = 0
    with torch.no_grad():
        for plane in stack:
            x = torch.from_numpy(normalize_plane(plane, norm["low"], norm["high"])[None, None]).to(device)
            probs = torch.softmax(model(x), dim=1)[0].cpu().numpy()
            labels = reference.labels(probs)
            if labels.dtype == np.uint32:
                labels[labels > 0] += np.uint32(next_id)
                next_id = max(next_id, int(labels.max()))
            out.append(labels)
    return np.stack(out)


def onnx_segment_factory(checkpoint, threads: int) -> Callable[[np.ndarray], np.ndarray] | None:
    """Export the network to ONNX and return a segment function using ONNX Runtime on the CPU."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    from napari_unetseg.optimize import fold_batchnorm

    buffer = io.BytesIO()
    example = torch.zeros(1, checkpoint.model.in_channels, 256, 256)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            fold_batchnorm(checkpoint.model).cpu(), (example,), buffer, input_names=["x"],
            output_names=["logits"], dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}}, dynamo=False, opset_version=17,
        )
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])
    post = PlanePredictor(checkpoint, EngineSettings(device="cpu", precision="float32"))
    norm = checkpoint.info.normalization

    def run(stack: np.ndarray) -> np.ndarray:
        out, next_id = [], 0
        for plane in stack:
            x = normalize_plane(plane, norm["low"], norm["high"])[None, None]
            logits = session.run(None, {"x": x})[0][0]
            probs = np.exp(logits - logits.max(0))
            labels = post.labels(probs / probs.sum(0))
            labels[labels > 0] += np.uint32(next_id)
            next_id = max(next_id, int(labels.max()))
            out.append(labels)
        return np.stack(out)

    return run


def monai_segment_factory(checkpoint, device: torch.device) -> Callable[[np.ndarray], np.ndarray] | None:
    """MONAI's SliceInferer (a 2D network over a 3D volume) with the same weights."""
    try:
        from monai.inferers import SliceInferer
    except ImportError:
        return None
    model = checkpoint.model.to(device).eval()
    post = PlanePredictor(checkpoint, EngineSettings(device="cpu", precision="float32"))
    norm = checkpoint.info.normalization

    def run(stack: np.ndarray) -> np.ndarray:
        size = stack.shape[-1]
        inferer = SliceInferer(roi_size=(min(size, 512), min(size, 512)), spatial_dim=0, sw_batch_size=4,
                               overlap=0.125, progress=False)
        volume = np.stack([normalize_plane(p, norm["low"], norm["high"]) for p in stack])
        x = torch.from_numpy(volume)[None, None].to(device)
        with torch.no_grad():
            probs = torch.softmax(inferer(x, model), dim=1)[0].cpu().numpy()  # (K, Z, Y, X)
        out, next_id = [], 0
        for z in range(stack.shape[0]):
            labels = post.labels(probs[:, z])
            labels[labels > 0] += np.uint32(next_id)
            next_id = max(next_id, int(labels.max()))
            out.append(labels)
        return np.stack(out)

    return run


def timed(run: Callable[[], np.ndarray], device: torch.device) -> dict:
    with PeakMemory(device) as memory:
        start = time.perf_counter()
        labels = run()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    return {"labels": labels, "seconds": seconds, "peak_rss_mb": memory.peak_rss / 2**20,
            "cuda_peak_mb": memory.cuda_peak / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="nuclei")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--slices", type=int, default=32)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--skip", nargs="*", default=[], choices=["monai", "onnx"])
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--threads", type=int, help="PyTorch and ONNX Runtime CPU threads (default: PyTorch's)")
    parser.add_argument("--rounds", type=int, default=1, help="runs of every row, interleaved; the fastest is kept")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    device = get_device(args.device)
    checkpoint = resolve_model(args.model)
    threads = torch.get_num_threads()
    print(f"# {platform.processor() or platform.machine()} ({cpu_kind()}; PyTorch dispatches "
          f"{torch.backends.cpu.get_cpu_capability()}), torch {torch.__version__}, device {device}, "
          f"{threads} threads, model {args.model} "
          f"({sum(p.numel() for p in checkpoint.model.parameters()) / 1e6:.2f} M parameters)")
    started = time.perf_counter()
    # the probe runs once per model and process
    precision = resolve_precision(device, "auto", lambda: bfloat16_verdict(checkpoint))
    probe_seconds = time.perf_counter() - started
    runner = type(make_fast_model(checkpoint.model, device, precision)).__name__
    print(f"# default path on {device}: {runner} {precision} (OnnxModel = ONNX Runtime, FastModel = PyTorch; "
          f"precision probe {probe_seconds:.1f} s, once per model and process)")
    rows = []
    speedup_512 = None
    for size in args.sizes:
        stack = make_stack(size, args.slices)
        small = stack[:2]
        runs = {"naive (batch 1, fp32)": lambda s: naive_segment(s, checkpoint, device)}
        variants = {"unetseg torch float32": {"precision": "float32", "backend": "torch"}}
        if device.type == "cpu" and onnxruntime_available():
            variants["unetseg ONNX Runtime float32"] = {"precision": "float32", "backend": "onnxruntime"}
            variants["unetseg ONNX Runtime int8"] = {"precision": "int8", "backend": "onnxruntime"}
        if device.type == "cpu" and cpu_supports_bf16():
            variants["unetseg torch bfloat16"] = {"precision": "bfloat16", "backend": "torch"}
        if device.type == "cuda":
            variants["unetseg torch float16"] = {"precision": "float16", "backend": "torch"}
        variants[DEFAULT] = {"precision": "auto", "backend": "auto"}  # what `unetseg segment` uses
        for name, options in variants.items():
            runs[name] = lambda s, o=options: segment(s, checkpoint, device=device, batch_size=args.batch_size,
                                                      tile_size=max(size, 1024), **o)
        monai_run = None if "monai" in args.skip else monai_segment_factory(checkpoint, device)
        if monai_run is not None:
            runs["MONAI SliceInferer (fp32)"] = monai_run
        onnx_run = None if "onnx" in args.skip or device.type != "cpu" else onnx_segment_factory(checkpoint, threads)
        if onnx_run is not None:
            runs["ONNX Runtime CPU (fp32)"] = onnx_run
        for run in runs.values():  # warm-up: exports, quantization, first calls
            run(small)
        configs: dict[str, dict] = {}
        for _ in range(max(1, args.rounds)):  # interleaved: A, B, ..., A, B, ...
            for name, run in runs.items():
                result = timed(lambda r=run: r(stack), device)
                if name not in configs or result["seconds"] < configs[name]["seconds"]:
                    configs[name] = result
        naive = configs["naive (batch 1, fp32)"]
        for name, result in configs.items():
            row = {
                "size": size, "slices": args.slices, "engine": name, "device": str(device),
                "slices_per_s": args.slices / result["seconds"], "seconds_per_slice": result["seconds"] / args.slices,
                "peak_rss_mb": round(result["peak_rss_mb"]), "cuda_peak_mb": round(result["cuda_peak_mb"]),
                "speedup_vs_naive": naive["seconds"] / result["seconds"],
                **agreement(result["labels"], naive["labels"], checkpoint.info.mode),
            }
            rows.append(row)
            f1 = "-" if row["instance_f1"] is None else f"{row['instance_f1']:.4f}"
            print(f"{size:>5} {name:<28} {row['slices_per_s']:7.2f} slices/s  {row['seconds_per_slice']:.3f} s/slice  "
                  f"RSS {row['peak_rss_mb']:>6} MB  CUDA {row['cuda_peak_mb']:>6} MB  x{row['speedup_vs_naive']:.2f}  "
                  f"agree {row['pixel_agreement']:.4f}  F1 {f1}")
        best = configs[DEFAULT]
        check = agreement(best["labels"], naive["labels"], checkpoint.info.mode)
        print(f"# {size}: optimised labels agree with the naive loop: {'yes' if check['same'] else 'NO'} {check}")
        if size == 512:
            speedup_512 = naive["seconds"] / best["seconds"]
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    if speedup_512 is not None:
        print(f"speedup_vs_naive={speedup_512:.2f}")


if __name__ == "__main__":
    main()
