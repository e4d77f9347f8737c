"""napari's File > Save for a labels layer: a TIFF that keeps the layer's provenance record.

The record the panel puts in ``layer.metadata`` (model, its sha256, parameters, the equivalent
command) goes into the TIFF's metadata under the same key as ``unetseg segment`` writes it, so
``napari_unetseg.provenance.read_record`` and ``unetseg`` read it back the same way. The file is
written atomically (temporary file, then rename); napari's save dialog has already asked before
replacing a file.
"""

from __future__ import annotations

from typing import Any

from ..io import write_labels
from ..provenance import RECORD_KEY
from ._layers import METADATA_KEY


def write_labels_with_provenance(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write one labels layer (``data``, ``meta`` as napari passes them) to ``path``; return what was written."""
    if isinstance(data, list):  # a multiscale layer: its full-resolution level
        data = data[0]
    record = dict((meta.get("metadata") or {}).get(METADATA_KEY) or {})
    metadata = {RECORD_KEY: record} if record else None
    return [str(write_labels(path, data, overwrite=True, metadata=metadata))]
