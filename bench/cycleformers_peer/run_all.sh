#!/usr/bin/env bash
# Sequential benchmark runs (never two at once): seq2seq smoke (10 steps), then 3 rounds of
# causal/seq2seq/macct at 50 steps, round-robin so slow drift hits every mode alike.
set -u
cd "$(dirname "$0")"
PY=.venv/bin/python
mkdir -p out
${SMOKE:-true} && $PY run_peer.py --mode seq2seq --steps 10 --out out/smoke_seq2seq.json > out/smoke_seq2seq.log 2>&1
for r in 1 2 3; do
  for m in causal seq2seq macct; do
    $PY run_peer.py --mode $m --steps ${STEPS:-50} --seed 0 --out out/run_${m}_$r.json > out/run_${m}_$r.log 2>&1
    echo "$(date +%T) $m run $r rc=$?"
  done
done
