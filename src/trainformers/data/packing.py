"""Packing for pretraining, for documents held in memory as a `list[str]`.

Documents become one token stream, cut into blocks: all full but the last, which holds the rest
(the collator pads that one row), so no token is dropped or repeated and every other position is
a real token that trains. The price: attention crosses document boundaries (an EOS token marks
each one). Both functions are `pretraining.tokenize_for_pretraining`'s steps; use that directly
on a `datasets` dataset (cached, streaming, several text fields).
"""

from __future__ import annotations

from collections.abc import Sequence

import datasets
import numpy as np

from trainformers.data.pretraining import encode_texts, tokenize_for_pretraining

__all__ = ["pack_texts", "token_stream"]

_TEXT = datasets.Features({"text": datasets.Value("string")})


def token_stream(texts: Sequence[str], tokenizer, *, add_eos: bool = True) -> np.ndarray:
    """Tokenise documents and concatenate them, with an EOS token after each one.

    The stream that `pack_texts` cuts into blocks: the same tokenisation step as
    `tokenize_for_pretraining` (no special tokens besides the EOS; blank texts left out).

    Args:
        texts: The documents.
        tokenizer: A `transformers` tokenizer.
        add_eos: Append `tokenizer.eos_token_id` after every document.

    Returns:
        A 1-D int64 array of token ids.

    Raises:
        DataError: `add_eos` is set but the tokenizer has no EOS token.
    """
    ids = encode_texts(texts, tokenizer, add_eos=add_eos)
    return np.fromiter((t for row in ids for t in row), dtype=np.int64)


def pack_texts(texts: Sequence[str], tokenizer, block_size: int, *, add_eos: bool = True) -> datasets.Dataset:
    """Pack in-memory documents into blocks of `block_size` tokens for causal LM training.

    `pretraining.tokenize_for_pretraining` on `Dataset.from_dict({"text": texts})`: block `i`
    holds tokens `[i * block_size, (i + 1) * block_size)` of `token_stream(texts)` (blank texts
    left out), and the last block the rest, so the blocks end to end are exactly the stream (the
    last one is shorter unless the stream length is a multiple of `block_size`; pad it with
    `CausalLMCollator`). `labels` is a copy of `input_ids`: the model shifts them itself.

    Args:
        texts: The documents, in the order they are packed.
        tokenizer: A `transformers` tokenizer with an EOS token (when `add_eos`).
        block_size: Tokens per block (the model's training context, `data.max_length`).
        add_eos: Append the EOS token after every document.

    Returns:
        A `datasets.Dataset` with int64 columns `input_ids` and `labels`, one row per block.

    Raises:
        ConfigError: `block_size` is not positive.
        DataError: every text is blank, or the tokenizer has no EOS (with `add_eos`).
    """
    rows = datasets.Dataset.from_dict({"text": list(texts)}, features=_TEXT)
    packed, stats = tokenize_for_pretraining(rows, tokenizer, max_length=block_size, add_eos=add_eos, name="packed")
    stats.log()
    return packed
