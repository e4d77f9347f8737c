"""The team's data sets, kept beside the clone in ``../shared/data`` (or where ``UNETSEG_TEAM_DATA`` points);
they are not shipped (see docs/models.md, "Data").

* ``isbi2012/``: ``train-volume.tif`` and ``train-labels.tif``, the ISBI 2012 EM segmentation
  challenge training stack (30 slices of 512 x 512) and its membrane labels (Cardona et al. 2010).
* ``cells3d-nuclei/``: ``nuclei.tif``, the nuclei channel of scikit-image's ``cells3d`` stack, and
  ``nuclei_label.tif``, rough 3D nucleus labels made by the team.

A script that needs them calls :func:`require` first: a missing file ends it with one line naming
the file and what it is (exit status 2), not with a FileNotFoundError traceback.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(os.environ.get("UNETSEG_TEAM_DATA") or Path(__file__).resolve().parents[2] / "shared" / "data")
ISBI2012 = ROOT / "isbi2012"
CELLS3D = ROOT / "cells3d-nuclei"
_WHAT = {ISBI2012: "the ISBI 2012 EM training stack and labels", CELLS3D: "the cells3d nuclei stack and labels"}


def require(script: str, *files: Path, skip_hint: str = "") -> None:
    """Exit with ``<script>: error: ...`` (status 2) when one of ``files`` is missing."""
    missing = [path for path in files if not path.is_file()]
    if not missing:
        return
    what = _WHAT.get(missing[0].parent, "team data")
    hint = f"; {skip_hint}" if skip_hint else ""
    print(f"{script}: error: needs {what}, and {missing[0]} is missing (the team data folder; see docs/models.md, "
          f"'Data'){hint}", file=sys.stderr)
    sys.exit(2)
