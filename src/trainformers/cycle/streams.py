"""Row streams of the cycle datasets: each cycles through its own seeded epochs, independently.

A cycle step draws one accumulation window of rows from the dataset of the target domain. The
two training sets (and the paired set) almost never have the same length, so each is a
`DomainStream` with its own epoch counter: the shorter one simply starts its next epoch sooner.
Nothing is zipped or truncated.

The order of epoch `e` is a pure function of (seed, e) (`EpochSampler`), and the position is two
integers, so a resumed run jumps straight to where it stopped: no row is read, collated or
generated again. Under distributed training every rank draws the same global window and takes
its own slice (`rank_rows`), so N processes see exactly the rows one process would.
"""

from __future__ import annotations

from typing import Any

from ..errors import DataError
from ..sampling import EpochSampler


class DomainStream:
    """Windows of row indices over `length` rows, epoch after epoch, in a seeded order.

    A window never straddles two epochs: when fewer than `window` rows are left, they are
    skipped and the next epoch (a new shuffle) starts. The skipped tail differs from epoch to
    epoch, so no row is left out for good.

    Args:
        length: Rows in the dataset.
        seed: Epoch `e` uses the order of `EpochSampler(length, seed)` at epoch `e`.
        window: Rows drawn per call (accumulation steps x per-device batch x processes).
        name: Used in errors, e.g. "train_dataset_B".
        shuffle: False keeps dataset order.
    """

    def __init__(self, length: int, seed: int, window: int, name: str, shuffle: bool = True) -> None:
        if length < window:
            raise DataError(
                f"{name} has {length} rows but one step needs {window} (accumulation x batch x processes); "
                "give more rows or lower per_device_train_batch_size / gradient_accumulation_steps"
            )
        self.length, self.window, self.name = length, window, name
        self.sampler = EpochSampler(length, seed, shuffle=shuffle)
        self.epoch, self.position = 0, 0
        self._order: list[int] | None = None

    @property
    def windows_per_epoch(self) -> int:
        return self.length // self.window

    @property
    def progress(self) -> float:
        """Epochs completed, with the fraction of the current one."""
        return self.epoch + self.position / self.length

    def _epoch_order(self) -> list[int]:
        if self._order is None:
            self.sampler.set_epoch(self.epoch)
            self._order = list(iter(self.sampler))
        return self._order

    def next_window(self) -> list[int]:
        """The global row indices of the next window."""
        if self.position + self.window > self.length:
            self.epoch, self.position, self._order = self.epoch + 1, 0, None
        rows = self._epoch_order()[self.position : self.position + self.window]
        self.position += self.window
        return rows

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "length": self.length, "window": self.window}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("length") != self.length or state.get("window") != self.window:
            raise DataError(
                f"{self.name}: the checkpoint was saved with {state.get('length')} rows and windows of "
                f"{state.get('window')}, now {self.length} and {self.window}; resume with the same data and batch settings"
            )
        self.epoch, self.position, self._order = int(state["epoch"]), int(state["position"]), None


def rank_rows(window: list[int], micro: int, batch: int, rank: int, world: int) -> list[int]:
    """This rank's rows of micro-batch `micro` of a global window: micro-batches are consecutive
    blocks of `batch * world` rows, and each rank takes its own `batch` rows of the block."""
    start = micro * batch * world + rank * batch
    return window[start : start + batch]
