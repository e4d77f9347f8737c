"""Per-plane percentile normalisation, shared by inference and training so both see the same input."""

from __future__ import annotations

import numpy as np

_MAX_SAMPLES = 1 << 22  # percentiles of huge planes are estimated from a regular subsample


def normalize_plane(plane: np.ndarray, low: float = 1.0, high: float = 99.8) -> np.ndarray | None:
    """Map the ``low`` and ``high`` percentiles of ``plane`` to 0 and 1 (float32).

    NaN and inf are ignored when computing percentiles and become 0 afterwards, so they cannot
    poison a plane. Returns ``None`` for a plane with no finite values or no contrast, which
    callers treat as background.
    """
    data = np.asarray(plane)
    finite = np.isfinite(data) if data.dtype.kind == "f" else None
    sample = data[finite] if finite is not None else data.ravel()
    if sample.size == 0:
        return None
    if sample.size > _MAX_SAMPLES:
        sample = sample[:: sample.size // _MAX_SAMPLES]
    lo, hi = np.percentile(sample, [low, high]).astype(np.float64)
    if not hi > lo:
        hi = float(sample.max())
        if not hi > lo:
            return None
    out = (data.astype(np.float32) - np.float32(lo)) * np.float32(1.0 / (hi - lo))
    if finite is not None and not finite.all():
        out[~finite] = 0.0
    return out
