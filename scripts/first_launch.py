"""What a new user sees: ``unetseg gui`` at a given window size, then one click on Segment with the defaults.

    xvfb-run -a python scripts/first_launch.py --size 1280x800 --out docs/images

Opens the viewer exactly as ``unetseg gui`` does (:func:`napari_unetseg._widget._launch.open_viewer`),
saves ``first-launch-<W>x<H>.png``, clicks Segment without changing anything, and saves
``first-segment-<W>x<H>.png``. Prints the model that was preselected and the number of objects found.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def run_events(seconds: float, until=lambda: False) -> None:
    """Run the Qt event loop for ``seconds`` (or until ``until()``)."""
    from qtpy.QtWidgets import QApplication

    end = time.monotonic() + seconds
    while time.monotonic() < end and not until():
        QApplication.processEvents()
        time.sleep(0.02)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1280x800", help="window size WIDTHxHEIGHT (default: 1280x800)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images", help="folder for the PNG files")
    args = parser.parse_args()
    width, height = (int(n) for n in args.size.lower().split("x"))
    args.out.mkdir(parents=True, exist_ok=True)

    # a new user: no model remembered from an earlier session (and this run remembers nothing of yours)
    os.environ["NAPARI_CONFIG"] = str(Path(tempfile.mkdtemp(prefix="unetseg-first-launch-")) / "settings.yaml")
    from napari_unetseg._widget._launch import open_viewer
    from napari_unetseg._widget._main import UNetSegWidget

    viewer = open_viewer(run=False, size=(width, height))
    run_events(2.0)
    widget = next(w for w in viewer.window.dock_widgets.values() if isinstance(w, UNetSegWidget))
    first = args.out / f"first-launch-{width}x{height}.png"
    viewer.screenshot(str(first), canvas_only=False)
    print(f"saved {first}; model preselected: {widget.models.current().label}", flush=True)

    widget.segment.run_button.clicked.emit()
    run_events(600.0, until=lambda: not widget.busy())
    run_events(1.0)
    result = next(layer for layer in viewer.layers if layer.name.startswith("nuclei 2D labels"))
    segmented = args.out / f"first-segment-{width}x{height}.png"
    viewer.screenshot(str(segmented), canvas_only=False)
    print(f"saved {segmented}; layer '{result.name}' with {len(np.unique(result.data)) - 1} objects", flush=True)
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
