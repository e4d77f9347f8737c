"""Benchmarks and recipes that need the team data say so in one line when it is absent."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("script", "args", "missing"),
    [
        ("benchmarks/accuracy.py", [], "isbi2012/train-volume.tif"),
        ("benchmarks/accuracy.py", ["--skip", "em"], "cells3d-nuclei/nuclei.tif"),
        ("benchmarks/finetune.py", [], "isbi2012/train-volume.tif"),
        ("benchmarks/finetune_nuclei.py", [], "cells3d-nuclei/nuclei.tif"),
        ("recipes/train_em_membranes.py", [], "isbi2012/train-volume.tif"),
    ],
)
def test_a_script_without_the_team_data_ends_with_one_clear_line(tmp_path, script, args, missing):
    clone = tmp_path / "clone"  # a clone with no ../shared/data beside it
    for folder in ("benchmarks", "recipes"):
        shutil.copytree(ROOT / folder, clone / folder)
    env = {k: v for k, v in os.environ.items() if k != "UNETSEG_TEAM_DATA"}
    result = subprocess.run([sys.executable, str(clone / script), *args], capture_output=True, text=True,
                            cwd=tmp_path, timeout=300, env=env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{script}: error: needs "), result.stderr
    assert f"{tmp_path / 'shared' / 'data' / missing} is missing" in lines[0] and "docs/models.md" in lines[0]
