"""`make bench`: run the performance suite and write its figures into docs/benchmarks.md.

Each script below runs in its own process with `--markdown FILE`; its fragment (what it measures,
the machine and versions, the exact command, a table of medians with min–max) goes, in this
order, between the `make bench` markers of docs/benchmarks.md; the rest of that file is prose
and older one-off measurements, left as it is. A script that fails leaves its previous fragment
in place and is named at the end (the exit status is then 1).

Timings need an idle machine (docs/perf-notes.md: one busy core makes a 2-thread run many times
slower): the scripts discard disturbed rounds, and this runner waits for the 1-minute load
average to settle before each. Not part of CI: about 25 minutes on 2 cores.

    make bench                                   # the whole suite
    .venv/bin/python bench/run_all.py --only step_overhead bf16_cpu
    .venv/bin/python bench/run_all.py --quick    # tiny settings: checks the scripts run, figures not kept
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
DOC = HERE.parent / "docs" / "benchmarks.md"
BEGIN, END = "<!-- make bench: begin -->", "<!-- make bench: end -->"

# name -> (arguments of the full run, arguments of --quick)
SUITE: dict[str, tuple[list[str], list[str]]] = {
    "step_overhead": (["--tune-malloc"], ["--sizes", "nano", "--rounds", "1"]),
    "padding": ([], ["--rounds", "1", "--steps", "1"]),
    "bf16_cpu": ([], ["--rounds", "1", "--steps", "2", "--curve-steps", "4"]),
    "decoder_lm": ([], ["--sizes", "1M", "--rounds", "1", "--steps", "3"]),
    "eval_memory": ([], ["--rows", "16", "--repeats", "1"]),
    "resume_startup": ([], ["--rows", "20000", "--positions", "0", "1000", "--repeats", "1"]),
}


def wait_for_quiet(limit: float, patience_s: float = 300) -> float:
    """Wait (up to `patience_s`) until the 1-minute load average is below `limit`; returns it."""
    deadline = time.monotonic() + patience_s
    while os.getloadavg()[0] > limit and time.monotonic() < deadline:
        time.sleep(10)
    return os.getloadavg()[0]


def fragments_in(text: str) -> dict[str, str]:
    """The fragments now between the markers, by script name (from their `bench/NAME.py` heading)."""
    if BEGIN not in text:
        return {}
    body = text.split(BEGIN, 1)[1].split(END, 1)[0]
    out = {}
    for chunk in re.split(r"(?m)^(?=### )", body):
        match = re.search(r"`bench/(\w+)\.py`", chunk.splitlines()[0] if chunk.strip() else "")
        if match:
            out[match.group(1)] = chunk.strip()
    return out


def render(text: str, fragments: dict[str, str], header: str) -> str:
    block = "\n\n".join([header] + [fragments[name] for name in SUITE if name in fragments])
    section = f"{BEGIN}\n{block}\n{END}"
    if BEGIN in text:
        before, rest = text.split(BEGIN, 1)
        return before + section + rest.split(END, 1)[1]
    return text.rstrip() + "\n\n## Performance suite (`make bench`)\n\n" + section + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--only", nargs="+", choices=list(SUITE), help="run these scripts only (others keep their fragments)"
    )
    parser.add_argument("--quick", action="store_true", help="tiny settings; docs/benchmarks.md is not written")
    parser.add_argument(
        "--max-load", type=float, default=0.5, help="wait for the load average to fall below this before each script"
    )
    opts = parser.parse_args()
    names = opts.only or list(SUITE)
    fragments = fragments_in(DOC.read_text()) if DOC.exists() else {}
    failed, start = [], time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            load = wait_for_quiet(opts.max_load) if not opts.quick else os.getloadavg()[0]
            full, quick = SUITE[name]
            out = Path(tmp) / f"{name}.md"
            cmd = [sys.executable, str(HERE / f"{name}.py"), *(quick if opts.quick else full), "--markdown", str(out)]
            print(f"## {name} (load average {load:.2f}): {' '.join(cmd[1:])}", flush=True)
            t = time.perf_counter()
            done = subprocess.run(cmd, cwd=HERE)
            print(f"## {name}: exit {done.returncode} in {time.perf_counter() - t:.0f} s", flush=True)
            if done.returncode != 0 or not out.exists():
                failed.append(name)
                continue
            fragments[name] = out.read_text().strip()
    minutes = (time.perf_counter() - start) / 60
    if not opts.quick:
        header = (
            f"Written by `make bench` (`bench/run_all.py`) on {date.today().isoformat()}; "
            f"{'the whole suite' if not opts.only else 'last run: ' + ', '.join(names)} took {minutes:.0f} min. "
            "Each figure is a median over repeated rounds with the min–max beside it; each script's "
            "docstring says exactly how it measures."
        )
        DOC.write_text(render(DOC.read_text() if DOC.exists() else "# Benchmarks\n", fragments, header))
        print(f"wrote {DOC}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
