"""`cpu_malloc` on the default run: tokens/s and peak memory under each policy, side by side.

The embedded default run (`trainformers train`, a 1M-parameter DecoderLM on the embedded corpus), cut
to `--steps` optimizer steps, once per policy per round, the policies' order alternating between
rounds; each run in its own process (malloc settings are per process). Read from the run's
`log.jsonl`: `train_tokens_per_second` (training time only) and `train_peak_memory_mb` (peak RSS).
A round is discarded when other processes used more than `--max-foreign` cores meanwhile. Median
(min–max) per policy and the per-round ratio to `speed`, the CLI's default. Small models are where
page faults cost the most per step (docs/perf-notes.md); large ones are where `memory` pays
(`bench/macct_memory.py`).

    .venv/bin/python bench/malloc_policy.py                  # 3 rounds x 3 policies, about 10 minutes
    .venv/bin/python bench/malloc_policy.py --rounds 1 --steps 10
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from _machine import Load, command_line, machine_line, spread, write_fragment  # bench/_machine.py

POLICIES = ("speed", "memory", "system")


def one_run(policy: str, steps: int, out: Path) -> dict[str, float]:
    cmd = [sys.executable, "-m", "trainformers.cli", "train", "--training.output_dir", str(out)]
    cmd += ["--training.max_steps", str(steps), "--training.cpu_malloc", policy, "--training.save_strategy", "no"]
    cmd += ["--training.eval_strategy", "no", "--model.sample_prompt", "''", "--training.report_at_end", "false"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"{policy}: the run failed\n{done.stderr[-3000:]}")
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if line.strip()]
    final = next(r for r in reversed(rows) if "train_tokens_per_second" in r)
    return {"tokens_per_second": final["train_tokens_per_second"], "peak_mb": final["train_peak_memory_mb"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--max-foreign", type=float, default=0.3, help="cores other processes may use in a round")
    parser.add_argument("--markdown", help="write the docs/benchmarks.md fragment here")
    opts = parser.parse_args()
    kept: list[dict[str, dict[str, float]]] = []
    dropped = 0
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(opts.rounds):
            order = POLICIES if r % 2 == 0 else tuple(reversed(POLICIES))
            load = Load()
            results = {p: one_run(p, opts.steps, Path(tmp) / f"{r}-{p}") for p in order}
            foreign = load.foreign()
            line = ", ".join(
                f"{p} {v['tokens_per_second']:.0f} tok/s {v['peak_mb']:.0f} MB" for p, v in results.items()
            )
            print(f"# round {r}: {line}; foreign load {foreign:.2f} cores", file=sys.stderr, flush=True)
            if foreign > opts.max_foreign:
                dropped += 1
                continue
            kept.append(results)
    if not kept:
        sys.exit("every round was disturbed by other processes; run again on a quiet machine")
    rows = []
    for p in POLICIES:
        tps = [k[p]["tokens_per_second"] for k in kept]
        ratio = [k[p]["tokens_per_second"] / k["speed"]["tokens_per_second"] for k in kept]
        peak = [k[p]["peak_mb"] for k in kept]
        rows.append(f"| `{p}` | {spread(tps, '{:.0f}')} | {spread(ratio, '{:.3f}')} | {spread(peak, '{:.0f}')} |")
    text = f"""### `cpu_malloc` on the default run (`bench/malloc_policy.py`)

The embedded default run (1M-parameter DecoderLM), {opts.steps} optimizer steps, each policy in its own
process; `train_tokens_per_second` and `train_peak_memory_mb` from the run's log. Median (min–max)
over {len(kept)} rounds ({dropped} discarded for other processes' load).

Machine: {machine_line()}. Command: `{command_line(opts.markdown)}`

| cpu_malloc | tokens/s | vs speed | peak RSS MB |
|---|---:|---:|---:|
{chr(10).join(rows)}
"""
    print(text)
    write_fragment(opts.markdown, text)


if __name__ == "__main__":
    main()
