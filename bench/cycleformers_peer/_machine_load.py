"""Foreign CPU load during a timed region: a copy of bench/_machine.py's `Load` (that module is
importable here, but its tune_malloc needs trainformers, absent from the peer venv)."""

from __future__ import annotations

import os
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    t = os.times()
    return t.user + t.system


def busy_jiffies() -> int:
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields[:8]) - idle


class Load:
    """Cores used by other processes between start and `foreign()` (machine busy time minus ours)."""

    def __init__(self) -> None:
        self.t, self.c, self.b = time.perf_counter(), own_cpu(), busy_jiffies()

    def foreign(self) -> float:
        wall = time.perf_counter() - self.t
        return max((busy_jiffies() - self.b) / CLK_TCK - (own_cpu() - self.c), 0.0) / wall
