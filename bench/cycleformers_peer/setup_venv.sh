#!/usr/bin/env bash
# Isolated venv for the cycleformers 0.1.0 peer benchmark (bench/cycleformers_peer/).
# torch 2.13.0 (CPU wheel) is installed first and pinned by a constraints file so that
# resolving cycleformers' pins (transformers 4.46, peft, ...) never replaces it.
# Idempotent: does nothing if the venv already imports cycleformers with torch 2.13.0.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$HERE/.venv"
PY="${PYTHON:-python3.11}"

if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - <<'PY' 2>/dev/null
import torch, transformers, datasets, tokenizers, peft, cycleformers
assert torch.__version__.startswith("2.13.0"), torch.__version__
PY
then
  echo "peer venv OK: $VENV"; exit 0
fi

"$PY" -m venv "$VENV"
CONSTRAINTS="$HERE/.venv/constraints.txt"
echo "torch==2.13.0" > "$CONSTRAINTS"
"$VENV/bin/pip" install --upgrade pip
# 1) torch first: the local CPU wheel (pip's find-links /opt/wheels) or the CPU index
if ls /opt/wheels/torch-2.13.0+cpu-*.whl >/dev/null 2>&1; then
  "$VENV/bin/pip" install /opt/wheels/torch-2.13.0+cpu-*.whl
else
  "$VENV/bin/pip" install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
fi
# 2) cycleformers and its pins, torch held at 2.13.0
"$VENV/bin/pip" install -c "$CONSTRAINTS" cycleformers==0.1.0
# 3) datasets/tokenizers are needed by task.py (installed only if cycleformers did not pull them)
"$VENV/bin/pip" install -c "$CONSTRAINTS" datasets tokenizers
"$VENV/bin/python" -c "import torch, transformers, peft, cycleformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
"$VENV/bin/pip" freeze > "$HERE/.venv/freeze.txt"
