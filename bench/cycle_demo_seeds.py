"""Cycle-training demo over several seeds: paired-only baseline vs paired + cycle, equal budget.

For each seed it runs `run_baseline` (supervised on the paired set for S + K optimizer steps) and
`run_demo` (S supervised steps, then K cycle steps on the unpaired sets) from
`trainformers.cycle.demo`, with `DemoRunConfig()` defaults unless overridden, and prints a
Markdown table of held-out exact match (and chrF) per direction: per seed, then mean ± std.
The "paired S" column is `run_demo`'s phase-1 result (the same models before cycle training).

    OMP_NUM_THREADS=1 python bench/cycle_demo_seeds.py --seeds 0 1 2
    python bench/cycle_demo_seeds.py --seeds 0 1 2 --set paired_mix_every=0 --set do_sample=true

`--set key=value` overrides a `DemoRunConfig` field (values parsed as JSON, else kept as strings;
`data.n_paired_train=32` reaches the nested `DemoConfig`). About 1.5 minutes per seed with the
defaults on one CPU thread. Progress goes to stderr, the table to stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from typing import Any

import torch

from trainformers.cycle.demo import DemoRunConfig, run_baseline, run_demo

COLUMNS = [("A_to_B", "words→digits"), ("B_to_A", "digits→words")]


def parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def make_config(overrides: list[str], seed: int) -> DemoRunConfig:
    top: dict[str, Any] = {}
    data: dict[str, Any] = {}
    for item in overrides:
        key, _, value = item.partition("=")
        if key.startswith("data."):
            data[key[5:]] = parse_value(value)
        else:
            top[key] = parse_value(value)
    cfg = DemoRunConfig(**top, seed=seed)
    if data:
        cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, **data))
    return cfg


def mean_std(values: list[float]) -> str:
    if len(values) < 2:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override a DemoRunConfig field"
    )
    args = parser.parse_args()

    rows: list[dict[str, Any]] = []
    for seed in args.seeds:
        cfg = make_config(args.set, seed)
        start = time.perf_counter()
        base = run_baseline(cfg)
        demo = run_demo(cfg, echo=None)
        rows.append(
            {
                "seed": seed,
                "base": base["metrics"],
                "before": demo["before"],
                "after": demo["after"],
                "seconds": {"baseline": base["seconds"], **demo["seconds"]},
            }
        )
        line = ", ".join(
            f"{d}: base {base['metrics'][f'{d}_exact_match']:.3f} / cycle {demo['after'][f'{d}_exact_match']:.3f}"
            for d, _ in COLUMNS
        )
        print(f"seed {seed}: {line} ({time.perf_counter() - start:.0f} s)", file=sys.stderr, flush=True)

    cfg = make_config(args.set, args.seeds[0])
    s, k = cfg.paired_steps, cfg.cycle_steps
    out = [
        (
            f"Held-out exact match ({cfg.data.n_eval} pairs never seen in training), {cfg.data.n_paired_train} "
            f"training pairs, budget {s + k} optimizer steps per model."
        ),
        "",
        f"| seed | metric | direction | paired {s} steps | paired {s + k} steps (baseline) | paired {s} + cycle {k} steps |",
        "|---|---|---|---|---|---|",
    ]
    for metric in ("exact_match", "chrf"):
        for d, name in COLUMNS:
            key = f"{d}_{metric}"
            for r in rows:
                out.append(
                    f"| {r['seed']} | {metric} | {name} | {r['before'][key]:.3f} | {r['base'][key]:.3f} | {r['after'][key]:.3f} |"
                )
            out.append(
                f"| **mean ± std** | {metric} | {name} | {mean_std([r['before'][key] for r in rows])} | "
                f"**{mean_std([r['base'][key] for r in rows])}** | **{mean_std([r['after'][key] for r in rows])}** |"
            )
    secs = {k2: statistics.mean(r["seconds"][k2] for r in rows) for k2 in ("baseline", "paired", "cycle")}
    out += [
        "",
        (
            f"Mean train seconds per seed: baseline {secs['baseline']:.0f}, paired phase {secs['paired']:.0f}, "
            f"cycle phase {secs['cycle']:.0f} (torch {torch.__version__}, {os.cpu_count()} CPUs, "
            f"torch threads {torch.get_num_threads()}, {platform.machine()})."
        ),
        "",
        "Settings: `"
        + json.dumps({k2: v for k2, v in cfg.to_dict().items() if k2 not in ("seed", "output_dir")})
        + "`",
    ]
    print("\n".join(out))


if __name__ == "__main__":
    main()
