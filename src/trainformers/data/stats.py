"""What the data pipeline did to the rows: kept, skipped, truncated, masked.

Every shaping step (tokenisation, packing, chat rendering) returns a `DataStats` so nothing is
dropped or cut silently; the run logs the summary line at start.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields

logger = logging.getLogger("trainformers.data")


@dataclass
class DataStats:
    """Counts of what happened to the rows of one dataset.

    Attributes:
        rows_in: Rows read from the source.
        rows_out: Training rows produced (blocks when packed).
        skipped_empty: Rows whose text was empty or null (skipped).
        truncated: Sequences longer than max_length that were cut.
        no_assistant: Chat rows without an assistant turn (skipped: nothing to learn).
        all_masked: Rows whose labels were all -100 after rendering and truncation (skipped).
        tokens: Real (non-pad) tokens in the produced rows.
        notes: Free-form remarks (e.g. the detected chat format).
    """

    name: str = "data"
    rows_in: int = 0
    rows_out: int = 0
    skipped_empty: int = 0
    truncated: int = 0
    no_assistant: int = 0
    all_masked: int = 0
    tokens: int = 0
    notes: list[str] = field(default_factory=list)

    def merge(self, other: DataStats) -> DataStats:
        """Add another shard's counts (e.g. from a batched map) into this one."""
        for f in fields(self):
            if f.name in ("name", "notes"):
                continue
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))
        self.notes.extend(n for n in other.notes if n not in self.notes)
        return self

    def summary(self) -> str:
        """One line, e.g. `train: 120 rows -> 88 blocks, 11264 tokens; skipped 2 empty; truncated 3`."""
        if not self.rows_in and any("stream" in note for note in self.notes):
            return f"{self.name}: streamed (rows are not counted up front); " + "; ".join(self.notes)
        parts = [f"{self.name}: {self.rows_in} rows -> {self.rows_out} rows, {self.tokens} tokens"]
        for label, value in (
            ("skipped empty/null", self.skipped_empty),
            ("truncated to max_length", self.truncated),
            ("skipped without an assistant turn", self.no_assistant),
            ("skipped with every label masked", self.all_masked),
        ):
            if value:
                parts.append(f"{label}: {value}")
        parts.extend(self.notes)
        return "; ".join(parts)

    def log(self) -> None:
        logger.warning(self.summary()) if self.no_assistant or self.all_masked else logger.info(self.summary())
