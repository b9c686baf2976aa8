"""Task metrics on generated texts against paired references: exact match, BLEU, chrF.

BLEU and chrF are sacrebleu's corpus scores (0-100), the standard implementations: writing our own
tokenisation and smoothing would make the numbers incomparable with every paper. sacrebleu is an
optional dependency (`pip install trainformers[metrics]`); exact match needs nothing.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import ConfigError, DataError
from .demo_data import exact_match

__all__ = ["text_metrics"]


def _sacrebleu() -> object:
    try:
        import sacrebleu
    except ImportError:
        raise ConfigError(
            "metrics 'bleu' and 'chrf' need sacrebleu; pip install 'trainformers[metrics]' (or sacrebleu), "
            "or keep only exact_match"
        ) from None
    return sacrebleu


def text_metrics(names: Sequence[str], predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """The named metrics of `predictions` against `references` (one reference per prediction).

    exact_match: fraction in [0, 1] equal after lower-casing and collapsing whitespace.
    bleu, chrf: sacrebleu corpus BLEU / chrF, in [0, 100].
    """
    if len(predictions) != len(references):
        raise DataError(f"{len(predictions)} predictions but {len(references)} references; pass one per reference")
    out: dict[str, float] = {}
    for name in names:
        if name == "exact_match":
            out[name] = exact_match(list(predictions), list(references))
        elif name == "bleu":
            out[name] = float(_sacrebleu().corpus_bleu(list(predictions), [list(references)]).score)
        elif name == "chrf":
            out[name] = float(_sacrebleu().corpus_chrf(list(predictions), [list(references)]).score)
        else:
            raise ConfigError(f"metrics: unknown metric {name!r}; choose from exact_match, bleu, chrf")
    return out
