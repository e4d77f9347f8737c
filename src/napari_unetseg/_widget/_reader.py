"""Opening a checkpoint file or a bioimage.io package (``*.zip`` with an rdf.yaml) in napari (File > Open, drag
and drop) loads it into the U-Net Segmentation widget."""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path

SUFFIXES = (".pt", ".pth", ".zip")


def get_reader(path: str | list[str]) -> Callable[[str], list[tuple[None]]] | None:
    """The checkpoint reader for a single PyTorch file (a zip archive) or bioimage.io package, else ``None``."""
    if isinstance(path, list) or Path(path).suffix.lower() not in SUFFIXES or not zipfile.is_zipfile(path):
        return None
    if Path(path).suffix.lower() == ".zip":
        from ..bioimageio_load import is_package

        return read_checkpoint if is_package(path) else None  # other zips are for other readers
    return read_checkpoint


def read_checkpoint(path: str) -> list[tuple[None]]:
    """Open the widget (if needed) and add the model to its list; adds no layer."""
    import napari

    from ..checkpoint import CheckpointError
    from ._layers import notify

    viewer = napari.current_viewer()
    if viewer is None:
        return [(None,)]
    _, widget = viewer.window.add_plugin_dock_widget("napari-unetseg", "U-Net Segmentation")
    try:
        entry = widget.models.add_file(path)
    except CheckpointError as exc:
        notify("error", str(exc))
    else:
        notify("info", f"Model {entry.name} is ready in U-Net Segmentation: pick an image and click Segment.")
    return [(None,)]
