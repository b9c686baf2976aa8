"""`Meter`: everything a training loop accumulates between two log rows, for both loops.

Values are sums by name ("loss", "tokens", "loss_A", "term:aux_loss", ...) plus a few latest
values ("grad_norm"). A tensor stays on the device, so the hot path never waits for it, and is
read when a row is built or a checkpoint saved; plain numbers stay on the host.

The meter also keeps the training time since the last row, with evaluation and checkpoint time
left out (`pause`). `state_dict()` holds all of it as JSON values, so a run resumed from a
checkpoint logs the same rows as one that never stopped.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import torch


def _plain(value: Any) -> Any:
    """A sum as a JSON value: a tensor read to a Python number, a number as it is (ints stay ints)."""
    return value.item() if torch.is_tensor(value) else value


class Meter:
    """Sums (and latest values) since the last log row.

    Args:
        device: Where tensor values live (restored ones are put back there).
    """

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.reset()

    def reset(self) -> None:
        """Start a new row: no sums, no latest values, the clock at zero."""
        self.sums: dict[str, Any] = {}
        self.latest: dict[str, Any] = {}
        self.start = time.perf_counter()
        self.paused = 0.0  # seconds spent evaluating and saving since `start`: not training time
        self.carried = 0.0  # training seconds of a restored row, counted when the clock starts

    def add(self, name: str, value: Any) -> None:
        """Add `value` (a number, or a tensor kept on its device: float32, or an integer count) to the sum `name`."""
        if torch.is_tensor(value):
            value = value.detach()
            value = value.float() if value.is_floating_point() else value
        current = self.sums.get(name)
        self.sums[name] = value if current is None else current + value

    def set(self, name: str, value: Any) -> None:
        """Record the latest value of `name` (e.g. the last gradient norm)."""
        self.latest[name] = value.detach() if torch.is_tensor(value) else value

    def get(self, name: str, default: Any = 0) -> Any:
        """The sum (or latest value) of `name` as it is kept (a tensor or a number), or `default`."""
        return self.sums.get(name, self.latest.get(name, default))

    def read(self, name: str, default: float = 0) -> Any:
        """`get` as a Python number (a device tensor is read here: one host sync)."""
        return _plain(self.get(name, default))

    def summed_over_ranks(self, name: str, accel: Any) -> float:
        """The sum `name` added up over every process (a collective: every rank must call it), read once.

        Each rank holds its part of a mean (the step kernel's shares), so the parts' sum is the mean.
        """
        total = torch.as_tensor(self.get(name), dtype=torch.float32, device=accel.device)
        if accel.num_processes > 1:
            total = accel.reduce(total.clone(), reduction="sum")
        return total.item()

    def pop(self, name: str) -> Any:
        """Read the sum `name` (a Python number) and remove it."""
        return _plain(self.sums.pop(name, 0))

    def names(self, prefix: str) -> list[str]:
        """The sums whose names start with `prefix`, sorted."""
        return sorted(n for n in self.sums if n.startswith(prefix))

    def start_clock(self) -> None:
        """Count training time from now on (plus what a restored row had already counted)."""
        self.start, self.paused, self.carried = time.perf_counter() - self.carried, 0.0, 0.0

    def pause(self, seconds: float) -> None:
        """Leave `seconds` (an evaluation, a checkpoint) out of the training time."""
        self.paused += seconds

    def elapsed(self) -> float:
        """Training seconds since the last row (evaluation and checkpoint time left out)."""
        return max(time.perf_counter() - self.start - self.paused, 1e-9)

    # ---- checkpoints ------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The unlogged sums, latest values and training time, as JSON values."""
        return {
            "sums": {n: _plain(v) for n, v in self.sums.items()},
            "tensors": sorted(n for n, v in self.sums.items() if torch.is_tensor(v)),
            "latest": {n: _plain(v) for n, v in self.latest.items() if v is not None},
            "elapsed": time.perf_counter() - self.start - self.paused,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from `state_dict()`: the same sums (tensors again on `device`) and time."""
        self.reset()
        tensors = set(state.get("tensors", ()))
        for name, value in state.get("sums", {}).items():
            self.sums[name] = torch.tensor(value, device=self.device) if name in tensors else value
        self.latest = dict(state.get("latest", {}))
        self.carried = float(state.get("elapsed", 0.0))


def add_loss_terms(meter: Meter, terms: Mapping[str, torch.Tensor]) -> None:
    """Add the extra loss terms a model reports (`outputs.loss_terms`, e.g. MoE router losses)."""
    for name, value in terms.items():
        meter.add(f"term:{name}", value)
    meter.add("term_batches", 1)


def loss_term_means(meter: Meter, accel: Any) -> dict[str, float]:
    """The mean of each loss term since the last row (averaged over ranks), removed from the meter."""
    names = meter.names("term:")
    batches = meter.pop("term_batches")
    if not names or not batches:
        return {}
    stacked = torch.stack([torch.as_tensor(meter.sums.pop(n), dtype=torch.float32) for n in names]) / batches
    if accel.num_processes > 1:
        stacked = accel.reduce(stacked.to(accel.device), reduction="mean")
    return {n.removeprefix("term:"): v for n, v in zip(names, stacked.tolist())}
