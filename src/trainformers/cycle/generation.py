"""Synthetic sources: one model of the pair translates a batch of real texts for the other.

Generation runs with the KV cache, stops as soon as every row has emitted EOS (transformers'
default stopping), and bounds the new tokens by the input length when a ratio is set: a fixed
`max_new_tokens` of 64 for 5-token sentences is most of the generation time of a model that has
not yet learnt to stop (docs/cycle-notes.md measured half the wall time in generate).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch import nn

from .inputs import CycleBatchBuilder, extract_generated_ids


def new_token_bound(longest_source: int, max_new_tokens: int, ratio: float | None, min_new_tokens: int) -> int:
    """The max_new_tokens of one batch: `ceil(ratio * longest_source) + 1` (room for EOS), at least
    `min_new_tokens + 1`, at most `max_new_tokens`; `max_new_tokens` when no ratio is set."""
    if ratio is None:
        return max_new_tokens
    return min(max_new_tokens, max(min_new_tokens + 1, math.ceil(ratio * longest_source) + 1))


@torch.no_grad()
def generate_ids(
    model: nn.Module,
    builder: CycleBatchBuilder,
    texts: Sequence[str],
    settings: dict[str, Any],
    *,
    max_new_tokens: int,
    ratio: float | None = None,
    min_new_tokens: int = 0,
    device: torch.device | str = "cpu",
    autocast: AbstractContextManager | None = None,
) -> list[list[int]]:
    """Generate from `texts` with `model` (its own builder gives the prompt layout it trains on).

    Returns the new ids of each row in the generator's vocabulary, up to (not including) the first
    EOS, special ids removed (`extract_generated_ids`).
    """
    input_ids, attention_mask, longest = builder.generation_batch(texts)
    bound = new_token_bound(longest, max_new_tokens, ratio, min_new_tokens)
    was_training = model.training
    model.eval()
    try:
        with autocast if autocast is not None else nullcontext():
            out = model.generate(
                input_ids=input_ids.to(device),
                attention_mask=attention_mask.to(device),
                max_new_tokens=bound,
                min_new_tokens=min(min_new_tokens, bound),
                eos_token_id=builder.eos_id,
                pad_token_id=builder.pad_id,
                use_cache=True,
                **settings,
            )
    finally:
        model.train(was_training)
    width = input_ids.shape[1] if builder.kind == "causal" else 0
    return extract_generated_ids(out, width, builder.tokenizer)
