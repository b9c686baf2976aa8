#!/usr/bin/env bash
# The GPU check of issue 17 (`make gpu-check`); tools/gpu_check.py says what each row checks.
#   tools/gpu_check.sh                  on a CUDA machine: every row in under 8 minutes; table in gpu_check.md
#   tools/gpu_check.sh --cpu-smoke      the rows a CPU can run, at toy sizes
# Python: $PYTHON, else this checkout's .venv, else python3 (a GPU machine has its own CUDA torch).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
[ -x "$python" ] || python=python3
exec "$python" "$root/tools/gpu_check.py" "$@"
