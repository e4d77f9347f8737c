"""Open a napari viewer with the U-Net Segmentation widget docked and an image (or the sample) loaded."""

from __future__ import annotations

from pathlib import Path

PLUGIN = "napari-unetseg"
WIDGET = "U-Net Segmentation"


def open_viewer(image: Path | None = None, sample: str = "nuclei-2d", run: bool = True):
    """Start napari showing ``image`` (or the plugin's ``sample``) with the widget docked.

    ``run=False`` returns the viewer without entering the Qt event loop (for tests and scripts).
    """
    import napari

    viewer = napari.Viewer(title="napari-unetseg")
    if image is not None:
        viewer.open(str(image))
    else:
        viewer.open_sample(PLUGIN, sample)
    viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    if run:
        napari.run()
    return viewer
