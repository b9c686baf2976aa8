"""Medians (min-max) of out/run_<mode>_<r>.json, as a Markdown table (run in either venv)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

OUT = Path(__file__).resolve().parent / "out"


def fmt(vals: list[float], nd: int = 3) -> str:
    if not vals:
        return "-"
    return f"{statistics.median(vals):.{nd}f} ({min(vals):.{nd}f}–{max(vals):.{nd}f})"


def main() -> None:
    print(
        "| mode | runs | cycle steps/s | samples/s | s/step (median step) | train() s | peak RSS MB (ru_maxrss) | peak RSS MB during train | foreign cores | last loss A / B |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for mode in ("causal", "seq2seq", "macct"):
        runs = [json.loads(p.read_text()) for p in sorted(OUT.glob(f"run_{mode}_*.json"))]
        ok = [r for r in runs if "error" not in r]
        bad = [r for r in runs if "error" in r]
        if not ok:
            print(f"| {mode} | 0 ok / {len(bad)} failed: {bad[0]['error'][:120] if bad else 'none'} |")
            continue
        col = lambda k: [r[k] for r in ok if r.get(k) is not None]  # noqa: E731, B023 (called in this iteration)
        losses = "; ".join(
            f"{r['last_loss_A']:.2f}/{r['last_loss_B']:.2f}" for r in ok if r.get("last_loss_A") is not None
        )
        print(
            f"| {mode} | {len(ok)} (steps {ok[0]['steps_done']}){' +' + str(len(bad)) + ' failed' if bad else ''} "
            f"| {fmt(col('steps_per_s'), 4)} | {fmt(col('samples_per_s'), 2)} | {fmt(col('step_s_median'), 2)} "
            f"| {fmt(col('train_wall_s'), 1)} | {fmt(col('peak_rss_mb_ru_maxrss'), 0)} "
            f"| {fmt(col('peak_rss_mb_during_train'), 0)} | {fmt(col('foreign_cores_during_train'), 2)} | {losses} |"
        )


if __name__ == "__main__":
    main()
