"""`skip_memory_metrics=False`: the `*_mem_*_delta` metrics of transformers' `TrainerMemoryTracker`.

For each stage (init, train, eval, test): `{stage}_mem_cpu_alloc_delta` (resident memory at the end
minus at the start, bytes), `{stage}_mem_cpu_peaked_delta` (the peak above the end state), and with
CUDA the same for `torch.cuda.memory_allocated` (`_gpu_`). A stage started inside another one (an
evaluation during training) is not tracked separately, as in transformers. The CPU peak is sampled
by a background thread every 5 ms, so a spike shorter than that can be missed.
"""

from __future__ import annotations

import gc
import threading
from typing import Any

import torch


def peak_memory_mb(device: torch.device) -> float:
    """This process's peak memory so far, in MiB: `torch.cuda.max_memory_allocated` on a CUDA device,
    else the peak resident set size (weights, optimizer state, activations, data and the Python
    runtime; the kernel's high-water mark, so no spike is missed)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource
    except ImportError:  # Windows: psutil's peak working set
        import psutil

        return float(getattr(psutil.Process().memory_info(), "peak_wset", 0)) / 2**20
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def peak_memory_mb_of_ranks(accel: Any) -> float:
    """`peak_memory_mb` of the process that holds the most, over every rank (the device that runs out
    first); a collective when there are several: every rank must call it. One decimal, as logged."""
    peak = torch.tensor(peak_memory_mb(accel.device), dtype=torch.float64, device=accel.device)
    if accel.num_processes > 1:
        torch.distributed.all_reduce(peak, op=torch.distributed.ReduceOp.MAX)
    return round(float(peak), 1)


def _rss() -> int:
    import psutil  # a dependency of accelerate

    return int(psutil.Process().memory_info().rss)


class MemoryTracker:
    """Start/stop memory accounting per stage; does nothing unless `enabled`."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.stage: str | None = None
        self._start: dict[str, int] = {}
        self._peak = 0
        self._stop_sampling = threading.Event()
        self._sampler: threading.Thread | None = None

    def start(self, stage: str) -> bool:
        """Begin `stage`; False (nothing tracked) when disabled or inside another stage."""
        if not self.enabled or self.stage is not None:
            return False
        self.stage = stage
        gc.collect()
        self._start = {"cpu": _rss()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.reset_peak_memory_stats()
            self._start["gpu"] = torch.cuda.memory_allocated()
        self._peak = self._start["cpu"]
        self._stop_sampling.clear()
        self._sampler = threading.Thread(target=self._sample, name="memory-peak", daemon=True)
        self._sampler.start()
        return True

    def _sample(self) -> None:
        while not self._stop_sampling.wait(0.005):
            self._peak = max(self._peak, _rss())

    def stop(self, stage: str) -> dict[str, Any]:
        """The stage's metrics ({} when not enabled, or when `stage` is nested in another one)."""
        if not self.enabled or self.stage != stage:
            return {}
        self._stop_sampling.set()
        if self._sampler is not None:
            self._sampler.join()
        gc.collect()
        now = _rss()
        peak = max(self._peak, now)
        metrics = {
            f"{stage}_mem_cpu_alloc_delta": now - self._start["cpu"],
            f"{stage}_mem_cpu_peaked_delta": max(0, peak - now),
        }
        if "gpu" in self._start:
            allocated = torch.cuda.memory_allocated()
            metrics[f"{stage}_mem_gpu_alloc_delta"] = allocated - self._start["gpu"]
            metrics[f"{stage}_mem_gpu_peaked_delta"] = max(0, torch.cuda.max_memory_allocated() - allocated)
        self.stage = None
        return metrics
