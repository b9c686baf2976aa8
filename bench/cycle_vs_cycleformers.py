"""CycleTrainer vs cycleformers 0.1.0: the same tiny models, data and settings, alternating runs.

    bash bench/cycleformers_peer/setup_venv.sh         # once: cycleformers in its own venv
    .venv/bin/python bench/cycle_vs_cycleformers.py --steps 20 --rounds 3 > docs/cycle-bench.md

For each round and mode (causal, seq2seq, macct) it runs, one process at a time: cycleformers
(run_peer.py, its venv), ours at parity settings, ours with bounded generation (run_ours.py).
Reports cycle steps/s, samples/s (2 x batch x steps/s), peak RSS during train(), losses after N
steps: medians with min-max. See bench/cycleformers_peer/NOTES.md for the peer's API and traps.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEER = ROOT / "bench" / "cycleformers_peer"


def run(cmd: list[str], out: Path) -> dict:
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0 or not out.is_file():
        return {"error": (done.stderr or done.stdout)[-800:]}
    return json.loads(out.read_text())


def fmt(values: list[float], digits: int = 2) -> str:
    if not values:
        return "n/a"
    med = statistics.median(values)
    return (
        f"{med:.{digits}f} ({min(values):.{digits}f}–{max(values):.{digits}f})"
        if len(values) > 1
        else f"{med:.{digits}f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--modes", nargs="+", default=["causal", "seq2seq", "macct"])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    outdir = PEER / "out" / "compare"
    outdir.mkdir(parents=True, exist_ok=True)
    runners = {
        "cycleformers 0.1.0": [str(PEER / ".venv" / "bin" / "python"), str(PEER / "run_peer.py")],
        "trainformers (parity)": [sys.executable, str(PEER / "run_ours.py"), "--gen", "parity"],
        "trainformers (bounded)": [sys.executable, str(PEER / "run_ours.py"), "--gen", "bounded"],
    }
    results: dict[tuple[str, str], list[dict]] = {}
    for r in range(args.rounds):
        for mode in args.modes:
            for name, cmd in runners.items():
                out = outdir / f"{mode}_{name.split()[0]}_{name.split()[-1].strip('()')}_{r}.json"
                res = run(
                    [
                        *cmd,
                        "--mode",
                        mode,
                        "--steps",
                        str(args.steps),
                        "--threads",
                        str(args.threads),
                        "--out",
                        str(out),
                    ],
                    out,
                )
                results.setdefault((mode, name), []).append(res)
                print(
                    f"# round {r} {mode} {name}: {res.get('steps_per_s', res.get('error'))}",
                    file=sys.stderr,
                    flush=True,
                )
    print(
        f"{args.steps} cycle steps, batch 16 per direction, {args.rounds} alternating rounds, medians (min–max); "
        f"torch threads {args.threads}.\n"
    )
    print("| mode | library | cycle steps/s | samples/s | peak RSS MB | loss A first→last | loss B first→last |")
    print("|---|---|---|---|---|---|---|")
    for mode in args.modes:
        for name in runners:
            ok = [x for x in results[(mode, name)] if "error" not in x]
            if not ok:
                print(f"| {mode} | {name} | failed: {results[(mode, name)][0]['error'][-120:]!r} | | | | |")
                continue
            loss = {
                s: f"{statistics.median(x[f'first_loss_{s}'] for x in ok):.2f}→{statistics.median(x[f'last_loss_{s}'] for x in ok):.2f}"
                if ok[0].get(f"first_loss_{s}") is not None
                else "n/a"
                for s in "AB"
            }
            print(
                f"| {mode} | {name} | {fmt([x['steps_per_s'] for x in ok], 3)} | {fmt([x['samples_per_s'] for x in ok], 1)} | "
                f"{fmt([x['peak_rss_mb_during_train'] for x in ok], 0)} | {loss['A']} | {loss['B']} |"
            )
    foreign = [
        x.get("foreign_cores_during_train")
        for v in results.values()
        for x in v
        if isinstance(x.get("foreign_cores_during_train"), (int, float))
    ]
    if foreign:
        print(f"\nOther processes used {max(foreign):.2f} cores at most during any run.")


if __name__ == "__main__":
    main()
