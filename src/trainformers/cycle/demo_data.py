"""Embedded demo task for cycle training: number words (domain A) ↔ digits (domain B).

``build_demo_data(DemoConfig(seed=0))`` draws distinct integers in ``0..max_number`` without
replacement and hands them out, in this order, to the held-out paired eval set, the tiny paired
training set, unpaired set A (spelled out: "three hundred forty two") and unpaired set B (digits:
"342"). Every number therefore belongs to exactly one set: eval numbers never appear in training,
and A and B are built from *different* numbers (empty intersection), each shuffled separately,
so the unpaired sets cannot be lined up into pairs. Fully deterministic for a given config.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from datasets import Dataset

from ..config import arg
from ..errors import ConfigError, DataError
from .tasks import ConfigMixin, CycleTaskData

__all__ = [
    "CycleDemoData",
    "DemoConfig",
    "build_demo_data",
    "exact_match",
    "number_to_words",
    "words_to_number",
]

_ONES = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
_TENS = [
    "_",
    "_",
    "twenty",
    "thirty",
    "forty",
    "fifty",
    "sixty",
    "seventy",
    "eighty",
    "ninety",
]
MAX_SUPPORTED = 999_999


def _below_thousand(n: int) -> list[str]:
    words: list[str] = []
    if n >= 100:
        words += [_ONES[n // 100], "hundred"]
        n %= 100
        if n == 0:
            return words
    if n >= 20:
        words.append(_TENS[n // 10])
        if n % 10:
            words.append(_ONES[n % 10])
    else:
        words.append(_ONES[n])
    return words


def number_to_words(n: int) -> str:
    """0..999999 -> lowercase words without 'and' or hyphens: 342 -> 'three hundred forty two'."""
    if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= MAX_SUPPORTED:
        raise DataError(f"number_to_words: n={n!r} is outside 0..{MAX_SUPPORTED}; pass an int in that range.")
    if n < 1000:
        return " ".join(_below_thousand(n))
    words = _below_thousand(n // 1000) + ["thousand"]
    if n % 1000:
        words += _below_thousand(n % 1000)
    return " ".join(words)


_VALUES = {w: i for i, w in enumerate(_ONES)} | {w: 10 * i for i, w in enumerate(_TENS) if i >= 2}


def words_to_number(text: str) -> int | None:
    """Inverse of `number_to_words` (case/whitespace-insensitive); None when it is not canonical."""
    words = str(text).lower().split()
    if not words:
        return None
    total = current = 0
    for w in words:
        if w in _VALUES:
            current += _VALUES[w]
        elif w == "hundred":
            current *= 100
        elif w == "thousand":
            total += current * 1000
            current = 0
        else:
            return None
    n = total + current
    # only canonical spellings count ("one one" or "twenty hundred" are not numbers)
    return n if n <= MAX_SUPPORTED and number_to_words(n) == " ".join(words) else None


def exact_match(predictions: list[str], references: list[str]) -> float:
    """Fraction of predictions equal to their reference after stripping, lower-casing and
    collapsing whitespace. 0.0 for empty inputs."""
    if len(predictions) != len(references):
        raise DataError(
            f"exact_match: {len(predictions)} predictions but {len(references)} references; pass one per reference."
        )
    if not references:
        return 0.0

    def norm(s: Any) -> str:
        return " ".join(str(s).split()).lower()

    return sum(norm(p) == norm(r) for p, r in zip(predictions, references)) / len(references)


@dataclass
class DemoConfig(ConfigMixin):
    """Sizes and seed of the number-words ↔ digits demo."""

    n_paired_train: int = arg(64, "Tiny paired training set (supervised warm-up).")
    n_unpaired_A: int = arg(2000, "Unpaired domain-A strings (number words).")
    n_unpaired_B: int = arg(2000, "Unpaired domain-B strings (digits).")
    n_eval: int = arg(200, "Held-out paired pairs for exact-match accuracy.")
    max_number: int = arg(9999, f"Numbers are drawn from 0..max_number (at most {MAX_SUPPORTED}).")
    seed: int = arg(0, "Seed for drawing and shuffling.")
    text_field: str = arg("text", "Output column; paired sets use <text_field>_A and <text_field>_B.")

    def __post_init__(self) -> None:
        for name in (
            "n_paired_train",
            "n_unpaired_A",
            "n_unpaired_B",
            "n_eval",
            "max_number",
            "seed",
        ):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ConfigError(f"DemoConfig.{name}={v!r} is invalid; use an int >= 0.")
        if self.max_number > MAX_SUPPORTED:
            raise ConfigError(f"DemoConfig.max_number={self.max_number} is too large; use at most {MAX_SUPPORTED}.")
        need = self.n_paired_train + self.n_unpaired_A + self.n_unpaired_B + self.n_eval
        if need > self.max_number + 1:
            raise ConfigError(
                f"DemoConfig: the sets need {need} distinct numbers but max_number={self.max_number} gives "
                f"{self.max_number + 1}; raise max_number or shrink the sets."
            )
        if not isinstance(self.text_field, str) or not self.text_field:
            raise ConfigError(
                f"DemoConfig.text_field={self.text_field!r} is invalid; use a column name such as 'text'."
            )


@dataclass
class CycleDemoData(CycleTaskData):
    """The demo's sets; `paired_train` is always present (possibly empty)."""


def build_demo_data(config: DemoConfig | dict | None = None, **overrides: Any) -> CycleDemoData:
    """Generate the demo sets (see module doc); keyword overrides update the config fields."""
    if config is None or isinstance(config, dict):
        cfg = DemoConfig.from_dict({**(config or {}), **overrides})
    else:
        cfg = DemoConfig.from_dict({**config.to_dict(), **overrides}) if overrides else config
    rng = random.Random(cfg.seed)
    nums = rng.sample(
        range(cfg.max_number + 1),
        cfg.n_eval + cfg.n_paired_train + cfg.n_unpaired_A + cfg.n_unpaired_B,
    )
    cuts = [cfg.n_eval, cfg.n_paired_train, cfg.n_unpaired_A, cfg.n_unpaired_B]
    parts, start = [], 0
    for c in cuts:
        parts.append(nums[start : start + c])
        start += c
    ev, pt, a, b = parts  # rng.sample is already in random order; A and B come from disjoint draws
    tf = cfg.text_field

    def paired(ns: list[int]) -> Dataset:
        return Dataset.from_dict(
            {
                f"{tf}_A": [number_to_words(n) for n in ns],
                f"{tf}_B": [str(n) for n in ns],
            }
        )

    return CycleDemoData(
        unpaired_A=Dataset.from_dict({tf: [number_to_words(n) for n in a]}),
        unpaired_B=Dataset.from_dict({tf: [str(n) for n in b]}),
        paired_eval=paired(ev),
        paired_train=paired(pt),
    )
