"""The 3D objects picture for docs/plugin.md: ``unetseg gui`` on the 3D sample, Segment, an X-Z section.

    xvfb-run -a python scripts/objects_3d_shot.py --out docs/images

Opens the viewer as ``unetseg gui`` does (:func:`napari_unetseg._widget._launch.open_viewer`) with
the ``nuclei-3d`` sample, clicks Segment with the defaults ("3D objects" on, diameter auto, the
voxel size from the layer's scale), turns the view to Z-X (``viewer.dims.order``) and saves
``09-3d-objects-xz.png``. Prints what the panel says and the objects found against the truth.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from first_launch import ROOT, run_events


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="1500x1100", help="window size WIDTHxHEIGHT (default: 1500x1100)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images", help="folder for the PNG file")
    args = parser.parse_args()
    width, height = (int(n) for n in args.size.lower().split("x"))
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ["NAPARI_CONFIG"] = str(Path(tempfile.mkdtemp(prefix="unetseg-3d-shot-")) / "settings.yaml")
    from napari_unetseg._widget._launch import open_viewer
    from napari_unetseg._widget._main import UNetSegWidget
    from napari_unetseg.synthetic import sample_stack_3d

    viewer = open_viewer(sample="nuclei-3d", run=False, size=(width, height))
    run_events(2.0)
    widget = next(w for w in viewer.window.dock_widgets.values() if isinstance(w, UNetSegWidget))
    widget.segment.run_button.clicked.emit()
    run_events(900.0, until=lambda: not widget.busy())
    result = next(layer for layer in viewer.layers if layer.name.startswith("nuclei 3D labels"))
    viewer.layers.selection.active = result
    viewer.dims.order = (1, 0, 2)  # rows: Z, columns: X; one colour per nucleus through its slices
    viewer.dims.set_current_step(1, result.data.shape[1] // 2)
    run_events(1.0)
    viewer.reset_view()
    run_events(1.0)
    path = args.out / "09-3d-objects-xz.png"
    viewer.screenshot(str(path), canvas_only=False)
    _, truth = sample_stack_3d()
    labels = np.asarray(result.data)
    print(f"saved {path}; panel: {' '.join(widget.segment.status.value.split())}", flush=True)
    print(f"objects: {len(np.unique(labels[labels > 0]))} found, {len(np.unique(truth[truth > 0]))} true; "
          f"scale {tuple(result.scale)}", flush=True)
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
