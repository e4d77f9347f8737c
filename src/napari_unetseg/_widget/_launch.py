"""Open a napari viewer with the U-Net Segmentation widget docked and an image (or the sample) loaded."""

from __future__ import annotations

from pathlib import Path

PLUGIN = "napari-unetseg"
WIDGET = "U-Net Segmentation"


def open_viewer(
    image: Path | None = None, sample: str = "nuclei-2d", run: bool = True, size: tuple[int, int] | None = None
):
    """Start napari showing ``image`` (or the plugin's ``sample``) with the widget docked.

    ``run=False`` returns the viewer without entering the Qt event loop (for scripts);
    ``size`` sets the window's (width, height).
    """
    import napari

    viewer = set_up_viewer(napari.Viewer(title="napari-unetseg"), image, sample, size)
    if run:
        napari.run()
    return viewer


def set_up_viewer(viewer, image: Path | None = None, sample: str = "nuclei-2d", size: tuple[int, int] | None = None):
    """What ``unetseg gui`` does to a new viewer (tests pass one from napari's viewer fixture)."""
    if size is not None:
        viewer.window.resize(*size)
    if image is not None:
        viewer.open(str(image))
    else:
        viewer.open_sample(PLUGIN, sample)
    viewer.window.add_plugin_dock_widget(PLUGIN, WIDGET)
    fit_to_canvas(viewer)
    return viewer


def fit_to_canvas(viewer) -> None:
    """Fit the image to the canvas as laid out with the dock, now and once the event loop shows the window.

    napari fits a new image to the canvas as it is at that moment: before the window has its size
    and the dock its place, so the sample showed as a strip cut off at the sides (more so in a
    larger window).
    """
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    QApplication.processEvents()  # lay the window out with the dock
    viewer.reset_view()
    QTimer.singleShot(0, viewer.reset_view)  # after the window manager has given the window its size
