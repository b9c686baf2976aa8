#!/usr/bin/env bash
# Sequential benchmark runs (never two at once): seq2seq smoke (10 steps), then 3 rounds of
# causal/seq2seq/macct at $STEPS (50) steps, round-robin so slow drift hits every mode alike.
# Before each run, waits (up to $WAIT s) for the machine to be idle (wait_idle.py): a busy
# neighbour makes a 2-thread torch run several times slower. Each JSON records the foreign load.
set -u
cd "$(dirname "$0")"
PY=.venv/bin/python
STEPS=${STEPS:-50}; WAIT=${WAIT:-600}
mkdir -p out
if ${SMOKE:-true}; then
  $PY wait_idle.py --timeout "$WAIT"
  $PY run_peer.py --mode seq2seq --steps 10 --out out/smoke_seq2seq.json > out/smoke_seq2seq.log 2>&1
  echo "$(date +%T) seq2seq smoke rc=$?"
fi
for r in ${ROUNDS:-1 2 3}; do
  for m in ${MODES:-causal seq2seq macct}; do
    $PY wait_idle.py --timeout "$WAIT"
    $PY run_peer.py --mode $m --steps "$STEPS" --seed 0 --out out/run_${m}_$r.json > out/run_${m}_$r.log 2>&1
    echo "$(date +%T) $m run $r rc=$?"
  done
done
