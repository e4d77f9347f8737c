"""The GPU suite's dry run (what CI runs): every code path on tiny sizes on the CPU, one table, the last line."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MEASURES = ("naive loop", "default: segment() as shipped", "post-processing on cpu", "post-processing on device",
            "model only", "end to end / model only", "agreement: device vs CPU post-processing",
            "agreement probe of postprocess='auto'", "fine-tuning", "one huge plane")


def test_the_dry_run_writes_the_table_and_ends_with_the_speedup(tmp_path):
    table = tmp_path / "suite.md"
    # this checkout's package, as the tests import it (an editable install or PYTHONPATH=src)
    source = os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": source}
    result = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_suite.sh"), "--dry-run", "--out", str(table)],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert re.fullmatch(r"gpu_speedup_vs_naive=\d+\.\d\d", lines[-1]), lines[-1]
    assert any(line.startswith("# CPU: ") and "AVX2" in line for line in lines)
    assert any(line.startswith("# GPU: ") for line in lines)
    text = table.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| measure | size |") and rows[1].startswith("| --- |")
    for measure in MEASURES:
        assert sum(measure in row for row in rows) >= 1, f"no row for {measure!r} in\n{text}"
    assert sum("naive loop" in row for row in rows) == 2  # the small and the large size
    assert "BELOW BAR" not in text and "| passes |" in text
