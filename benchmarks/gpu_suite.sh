#!/usr/bin/env bash
# The GPU suite of issue 17 in one go (under 5 minutes on a CUDA machine); see benchmarks/gpu_suite.py.
#   bash benchmarks/gpu_suite.sh             # full run; the table goes to gpu_suite.md
#   bash benchmarks/gpu_suite.sh --dry-run   # every code path on tiny sizes, on the CPU (CI)
# Extra arguments go to the driver (--out FILE, --device NAME, --model NAME). PYTHON picks the interpreter.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader | sed 's/^/# nvidia-smi: /'
fi
exec "${PYTHON:-python}" "$here/gpu_suite.py" "$@"
