"""The one place that chooses a compute device and explains the choice in plain words."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .options import DEVICE_CHOICES


class DeviceUnavailableError(RuntimeError):
    """A device was asked for by name but this machine or this PyTorch build cannot use it."""


class OutOfMemoryError(MemoryError):
    """Out of memory even with one plane or tile per batch: the message says what to try instead."""


def is_out_of_memory(exc: BaseException) -> bool:
    """True for a GPU (or CPU allocator) out-of-memory error, the kind a smaller batch may avoid."""
    if isinstance(exc, torch.cuda.OutOfMemoryError | MemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def free_gpu_memory() -> None:
    """Give cached GPU memory back (after an out-of-memory error), so a smaller batch can use it."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def available_devices() -> list[str]:
    """Device names usable here, fastest first; ``"cpu"`` is always last."""
    devices = []
    if torch.cuda.is_available():
        devices.append("cuda")
    if _mps_available():
        devices.append("mps")
    devices.append("cpu")
    return devices


def get_device(name: str | torch.device = "auto") -> torch.device:
    """Resolve ``"auto"`` (CUDA, then Apple MPS, then CPU) or check that a named device works."""
    if isinstance(name, torch.device):
        return name
    name = name.lower()
    if name == "auto":
        return torch.device(available_devices()[0])
    kind = name.split(":")[0]
    if kind not in DEVICE_CHOICES:
        raise DeviceUnavailableError(f"unknown device {name!r}; choose one of {', '.join(DEVICE_CHOICES)}")
    if kind != "cpu" and kind not in available_devices():
        raise DeviceUnavailableError(f"device {name!r} is not available: {explain_devices().why_no_gpu}")
    return torch.device(name)


@dataclass(frozen=True)
class DeviceReport:
    """What PyTorch sees, for people: the usable devices and, without a GPU, why and what to do."""

    devices: list[str]
    names: dict[str, str]
    why_no_gpu: str

    def summary(self) -> str:
        lines = [f"PyTorch {torch.__version__} can use: " + ", ".join(
            f"{d} ({self.names[d]})" if d in self.names else d for d in self.devices
        )]
        if self.why_no_gpu:
            lines.append(self.why_no_gpu)
        return "\n".join(lines)


def explain_devices() -> DeviceReport:
    """Report usable devices; when no GPU is usable, say why (CPU-only build, no driver) and the fix."""
    devices = available_devices()
    names = {"cpu": f"{torch.get_num_threads()} threads"}
    if "cuda" in devices:
        names["cuda"] = torch.cuda.get_device_name(0)
    if "mps" in devices:
        names["mps"] = "Apple GPU"
    why = ""
    if len(devices) == 1:
        if torch.version.cuda is None and not _mps_built():
            why = (
                "No GPU: this PyTorch is a CPU-only build. For an NVIDIA GPU, install a CUDA build "
                "of PyTorch (see pytorch.org, 'Get started')."
            )
        elif torch.version.cuda is not None:
            why = (
                f"No GPU: PyTorch was built for CUDA {torch.version.cuda} but finds no usable NVIDIA "
                "GPU; check that a GPU and its driver are installed (nvidia-smi) and that the driver "
                "supports this CUDA version."
            )
        else:
            why = "No GPU: Apple MPS is built in but not available (it needs macOS 12.3+ on Apple silicon)."
    return DeviceReport(devices=devices, names=names, why_no_gpu=why)


def _mps_built() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_built())


CPU_BATCH_SIZE = 4
_MAX_AUTO_BATCH = 64


def activation_bytes(base_channels: int, tile_size: int, bytes_per_value: int = 2) -> int:
    """Rough peak activation memory of one U-Net inference input of ``tile_size`` squared.

    Kept skip features sum to about ``2 * base * tile**2`` values and a few full-resolution
    tensors are live at once, so ``10 * base * tile**2`` values is a safe upper estimate.
    """
    return 10 * base_channels * tile_size**2 * bytes_per_value


def fit_to_memory(
    device: torch.device, base_channels: int, batch_size: int | None, tile_size: int, bytes_per_value: int = 2
) -> tuple[int, int]:
    """Batch and tile sizes that fit the free memory of ``device`` (half of it, leaving headroom).

    ``batch_size=None`` asks for as large a batch as fits on a GPU (``CPU_BATCH_SIZE`` on a CPU).
    On a GPU a requested tile that does not fit even alone is halved until it does.
    """
    if device.type != "cuda":
        return batch_size or CPU_BATCH_SIZE, tile_size
    free, _ = torch.cuda.mem_get_info(device)
    budget = free // 2
    while tile_size > 256 and activation_bytes(base_channels, tile_size, bytes_per_value) > budget:
        tile_size //= 2
    fits = max(1, int(budget // activation_bytes(base_channels, tile_size, bytes_per_value)))
    wanted = _MAX_AUTO_BATCH if batch_size is None else batch_size
    return max(1, min(wanted, fits)), tile_size
