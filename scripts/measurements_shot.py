"""The measurements picture for docs/sharing.md: ``unetseg gui``, Segment, and the result's features table.

    xvfb-run -a python scripts/measurements_shot.py --out docs/images

Opens the viewer as ``unetseg gui`` does (:func:`napari_unetseg._widget._launch.open_viewer`), clicks
Segment with the defaults, docks napari's own Features table widget beside the panel and saves
``measurements.png``. Prints what the panel says and the table's columns.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from first_launch import ROOT, run_events


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1500x1100", help="window size WIDTHxHEIGHT (default: 1500x1100)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images", help="folder for the PNG file")
    args = parser.parse_args()
    width, height = (int(n) for n in args.size.lower().split("x"))
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ["NAPARI_CONFIG"] = str(Path(tempfile.mkdtemp(prefix="unetseg-measure-shot-")) / "settings.yaml")
    from napari_unetseg._widget._launch import open_viewer
    from napari_unetseg._widget._main import UNetSegWidget

    viewer = open_viewer(run=False, size=(width, height))
    run_events(2.0)
    widget = next(w for w in viewer.window.dock_widgets.values() if isinstance(w, UNetSegWidget))
    widget.segment.run_button.clicked.emit()
    run_events(600.0, until=lambda: not widget.busy())
    result = next(layer for layer in viewer.layers if layer.name.startswith("nuclei 2D labels"))
    viewer.layers.selection.active = result
    dock, table = viewer.window.add_plugin_dock_widget("napari", "Features table widget")
    dock.setParent(None)  # napari docks it under the panel, too small to read: below the canvas instead
    table.setMinimumHeight(240)  # a few rows of the table
    viewer.window.add_dock_widget(table, name="Features table widget (napari)", area="bottom")
    run_events(2.0)
    path = args.out / "measurements.png"
    viewer.screenshot(str(path), canvas_only=False)
    print(f"saved {path}; panel: {' '.join(widget.measure.count.value.split())}", flush=True)
    print(f"columns: {', '.join(result.features.columns)}", flush=True)
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
