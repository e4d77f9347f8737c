"""The settings every front (API, widget, command line, cluster) gives the engine, with one default.

Importable without PyTorch, so the command line can build its parser from the defaults here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from .options import BACKENDS, DEVICE_CHOICES, POSTPROCESS_CHOICES, PRECISIONS


@dataclass(frozen=True)
class EngineSettings:
    """Where and how the network runs; the labels do not depend on these beyond the agreement bar.

    ``device`` as in :func:`~.device.get_device` (``"cuda:1"`` style indices too); ``batch_size``
    planes or tiles per network call (``None``: the largest that fits the GPU, 4 on a CPU);
    ``tile_size`` the side above which planes are cut into overlapping tiles; ``precision`` and
    ``backend`` as in :mod:`.optimize` (``"auto"`` picks the fastest that keeps the labels);
    ``postprocess`` where probabilities become labels (:mod:`.postprocess_torch`).
    """

    device: str = "auto"
    batch_size: int | None = 4
    tile_size: int = 1024
    precision: str = "auto"
    backend: str = "auto"
    postprocess: str = "auto"

    def __post_init__(self) -> None:
        device = str(self.device)
        if device.split(":")[0] not in DEVICE_CHOICES:
            raise ValueError(f"device must be one of {', '.join(DEVICE_CHOICES)} (or cuda:N), got {device!r}")
        object.__setattr__(self, "device", device)
        for name, choices in (("precision", PRECISIONS), ("backend", BACKENDS), ("postprocess", POSTPROCESS_CHOICES)):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {', '.join(choices)}, got {getattr(self, name)!r}")
        if self.batch_size is not None and int(self.batch_size) < 1:
            raise ValueError(f"batch_size must be at least 1 (or None: as large as fits), got {self.batch_size}")
        if int(self.tile_size) < 1:
            raise ValueError(f"tile_size must be at least 1, got {self.tile_size}")

    def with_changes(self, **changes: Any) -> EngineSettings:
        """A copy with ``changes`` (validated like a new one)."""
        return replace(self, **changes)

    def as_record(self) -> dict[str, Any]:
        """The settings as plain values, for provenance records and the cluster's task specs."""
        return asdict(self)


def settings_with(settings: EngineSettings | None = None, **overrides: Any) -> EngineSettings:
    """``settings`` (default ``EngineSettings()``) with the fields named in ``overrides`` changed.

    The one way a front turns loose keyword arguments (``device="cpu"``, ``batch_size=8``...)
    into settings, e.g. :func:`~.inference.segment`'s. A name that is not a setting is a TypeError.
    """
    unknown = sorted(set(overrides) - {f.name for f in fields(EngineSettings)})
    if unknown:
        raise TypeError(f"not an engine setting: {', '.join(unknown)} (settings: "
                        f"{', '.join(f.name for f in fields(EngineSettings))})")
    base = EngineSettings() if settings is None else settings
    return base.with_changes(**overrides) if overrides else base
