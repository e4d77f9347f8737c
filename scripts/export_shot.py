"""The bioimage.io picture for docs/sharing.md: the panel's model row with Load… and Export….

    xvfb-run -a python scripts/export_shot.py --out docs/images

Opens the viewer as ``unetseg gui`` does and saves the panel (``U-Net Segmentation``) alone as
``export-button.png``.
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
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "images", help="folder for the PNG file")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ["NAPARI_CONFIG"] = str(Path(tempfile.mkdtemp(prefix="unetseg-export-shot-")) / "settings.yaml")
    from napari_unetseg._widget._launch import open_viewer
    from napari_unetseg._widget._main import UNetSegWidget

    viewer = open_viewer(run=False, size=(1300, 900))
    run_events(2.0)
    widget = next(w for w in viewer.window.dock_widgets.values() if isinstance(w, UNetSegWidget))
    path = args.out / "export-button.png"
    top = widget.models.native.parentWidget()  # the panel's top part: image, model row, device
    top.grab().save(str(path))
    print(f"saved {path}; buttons: {widget.models.load_button.text}, {widget.models.export_button.text}", flush=True)
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
