"""Shared by the bench scripts: CPU-load accounting (docs/perf-notes.md: a busy neighbour ruins any
timing, so rounds with foreign load are discarded), process memory, and the CLI's malloc tuning.

Standard library only at import (trainformers is imported inside `tune_malloc`), so the
cycleformers scripts, which run in a venv without trainformers, import it too."""

from __future__ import annotations

import os
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    """CPU seconds used by this process and its finished children."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def busy_jiffies() -> int:
    """Whole-machine non-idle time, in clock ticks."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields[:8]) - idle


class Load:
    """Cores used by other processes between start and `foreign()` (machine busy time minus ours)."""

    def __init__(self) -> None:
        self.t, self.c, self.b = time.perf_counter(), own_cpu(), busy_jiffies()

    def foreign(self) -> float:
        wall = time.perf_counter() - self.t
        return max((busy_jiffies() - self.b) / CLK_TCK - (own_cpu() - self.c), 0.0) / wall


def vm_mb(field: str) -> float:
    """A memory line of /proc/self/status (VmRSS, VmHWM, ...), in MB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def tune_malloc(policy: str = "speed") -> str:
    """Apply trainformers' `cpu_malloc` policy (the CLI applies 'speed' by default), and say what that was."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return "from environment: " + ", ".join(
            f"{k}={os.environ[k]}" for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_") if k in os.environ
        )
    from trainformers.allocator import apply_malloc_policy

    return apply_malloc_policy(policy) or f"cpu_malloc={policy}: glibc untouched"


def spread(values: list[float], fmt: str = "{:.3g}") -> str:
    """'median (min–max)' of repeated measurements, the form every bench table uses."""
    import statistics

    if not values:
        return "n/a"
    med = fmt.format(statistics.median(values))
    return med if len(values) == 1 else f"{med} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def machine_line() -> str:
    """One line naming the machine and the versions that matter, for every bench fragment."""
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    parts = [f"{os.cpu_count()} cores ({cpu})", f"Python {platform.python_version()}"]
    for name in ("torch", "transformers", "accelerate"):
        try:
            module = __import__(name)
            parts.append(f"{name} {module.__version__}")
        except ImportError:
            pass
    return ", ".join(parts)


def command_line(markdown: str | None) -> str:
    """How this script was run, for its fragment: `python bench/NAME.py ARGS` without `--markdown PATH`."""
    import sys

    args = [a for a in sys.argv[1:] if a not in (markdown, "--markdown")]
    return " ".join(["python", f"bench/{os.path.basename(sys.argv[0])}", *args])


def write_fragment(path: str | None, text: str) -> None:
    """`--markdown PATH`: the section `make bench` puts into docs/benchmarks.md."""
    if path:
        with open(path, "w") as f:
            f.write(text.rstrip() + "\n")
