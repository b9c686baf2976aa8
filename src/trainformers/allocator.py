"""glibc malloc on CPU: keep freed memory for speed, or give it back for a smaller peak.

Every CPU step allocates and frees the activations again. glibc either keeps that memory in its heap
(no page faults next step: faster, docs/perf-notes.md measured 7-15% on small models) or maps large
blocks afresh and returns them to the system on free (a smaller resident set). glibc's own default
does neither on purpose: its mmap threshold starts at 128 KiB but rises to the size of every mapped
block freed (up to 32 MiB), so after a model is built most activations land in the heap, and the
heap fragments — `bench/macct_memory.py` measured 230 MB (9%) of a 362M-parameter MACCT run's peak
held by freed, unreturned heap memory.

`cpu_malloc` picks one on purpose:

- ``speed``: mmap threshold 128 MiB, trim threshold 2 GiB - 1 (what the CLI applies by default);
- ``memory``: both thresholds fixed at 128 KiB: every block of 128 KiB or more is its own mapping,
  returned when freed (a few page faults per step; a smaller peak, for large models near the limit);
- ``system``: glibc's own behaviour, untouched;
- ``auto``: ``speed`` in the `trainformers` CLI, ``system`` through the Python API.

The variables MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_, when set, win over every choice.
Off Linux/glibc there is nothing to tune; an explicit choice then says so in one line.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

MALLOC_POLICIES = ("auto", "speed", "memory", "system")
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
# bytes: (mmap threshold, trim threshold). `mallopt` takes a C int, so 2 GiB - 1 is the largest trim
# threshold (the 16 GiB of docs/perf-notes.md's environment variable would wrap to 0 and trim on every free)
_SETTINGS = {"speed": (128 * 2**20, 2**31 - 1), "memory": (128 * 2**10, 128 * 2**10)}
_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def apply_malloc_policy(policy: str, *, cli: bool = False) -> str | None:
    """Set glibc's thresholds for `policy` (one of MALLOC_POLICIES) in this process.

    Returns one line for the log when the choice was explicit or could not be applied as asked
    (the environment's MALLOC_* variables win; no glibc), None when there is nothing to say
    (``auto`` and ``system`` as expected). The 128 MiB mmap threshold of ``speed`` keeps a 32 MiB
    logits tensor (batch 8 x 128 x vocab 8192) in the heap too (bench/decoder_lm.py).
    """
    if policy not in MALLOC_POLICIES:
        raise ValueError(f"cpu_malloc={policy!r} is not one of {', '.join(MALLOC_POLICIES)}")
    chosen = ("speed" if cli else "system") if policy == "auto" else policy
    if chosen == "system":
        return None
    said = policy != "auto"
    if any(name in os.environ for name in _ENV):
        where = ", ".join(f"{k}={os.environ[k]}" for k in _ENV if k in os.environ)
        return f"cpu_malloc={policy}: not applied, the environment sets {where}" if said else None
    mmap_threshold, trim_threshold = _SETTINGS[chosen]
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        applied = sys.platform == "linux" and bool(
            libc.mallopt(_M_MMAP_THRESHOLD, mmap_threshold) and libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold)
        )
    except (OSError, AttributeError):  # no mallopt: not glibc (musl, macOS, Windows)
        applied = False
    if not applied:
        return f"cpu_malloc={policy}: not applied, this C library is not glibc" if said else None
    if not said:
        return None
    return f"cpu_malloc={chosen}: mmap threshold {_size(mmap_threshold)}, trim threshold {_size(trim_threshold)}"


def _size(n: int) -> str:
    return f"{n / 2**20:.0f} MiB" if n >= 2**20 else f"{n // 2**10} KiB"
