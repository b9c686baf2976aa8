"""Block until the machine is idle: other processes use < --max-foreign cores over --window s.
Exit 0 when idle, 1 after --timeout s (the caller then runs anyway and the JSON records the load)."""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/_machine.py
from _machine import CLK_TCK, busy_jiffies  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--max-foreign", type=float, default=0.25)
ap.add_argument("--window", type=float, default=5.0)
ap.add_argument("--timeout", type=float, default=600.0)
a = ap.parse_args()
t_end = time.time() + a.timeout
while True:
    b0, t0 = busy_jiffies(), time.perf_counter()
    time.sleep(a.window)
    load = (busy_jiffies() - b0) / CLK_TCK / (time.perf_counter() - t0)
    print(f"{time.strftime('%T')} machine load {load:.2f} cores", flush=True)
    if load < a.max_foreign:
        sys.exit(0)
    if time.time() > t_end:
        sys.exit(1)
