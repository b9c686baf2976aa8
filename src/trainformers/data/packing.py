"""Packing for pretraining: documents become one token stream, cut into full blocks.

No padding at all: every token in a block is a real token, so every position trains. The
price, measured in PERF-NOTES.md: the tail after the last full block is dropped, and attention
crosses document boundaries (an EOS token marks each one).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import datasets
import numpy as np
import pyarrow as pa

from trainformers.errors import ConfigError, DataError

__all__ = ["pack_texts", "token_stream"]

logger = logging.getLogger(__name__)


def token_stream(texts: Sequence[str], tokenizer, *, add_eos: bool = True) -> np.ndarray:
    """Tokenise documents and concatenate them, with an EOS token after each one.

    Args:
        texts: The documents.
        tokenizer: A `transformers` tokenizer; no special tokens are added besides the EOS.
        add_eos: Append `tokenizer.eos_token_id` after every document.

    Returns:
        A 1-D int64 array of token ids.

    Raises:
        DataError: `add_eos` is set but the tokenizer has no EOS token.
    """
    eos = tokenizer.eos_token_id
    if add_eos and eos is None:
        raise DataError(
            f"tokenizer {type(tokenizer).__name__} has no eos_token, so packed documents "
            "cannot be separated; set tokenizer.eos_token or pack with add_eos=False"
        )
    if not texts:
        return np.zeros(0, dtype=np.int64)
    # verbose=False: documents longer than the tokenizer's model_max_length are expected here.
    encoded = tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
    if add_eos:
        encoded = [ids + [eos] for ids in encoded]
    return np.fromiter((t for ids in encoded for t in ids), dtype=np.int64)


def pack_texts(
    texts: Sequence[str], tokenizer, block_size: int, *, add_eos: bool = True
) -> datasets.Dataset:
    """Pack documents into blocks of exactly `block_size` tokens for causal LM training.

    Block `i` holds tokens `[i * block_size, (i + 1) * block_size)` of `token_stream(texts)`;
    only the final partial block is dropped. `labels` is a copy of `input_ids`: the model
    shifts them itself.

    Args:
        texts: The documents, in the order they are packed.
        tokenizer: A `transformers` tokenizer with an EOS token (when `add_eos`).
        block_size: Tokens per block (the model's training context, `data.max_length`).
        add_eos: Append the EOS token after every document.

    Returns:
        A `datasets.Dataset` with int64 columns `input_ids` and `labels`, one row per block.

    Raises:
        ConfigError: `block_size` is not positive.
        DataError: the texts yield fewer tokens than one block, or the tokenizer has no EOS.
    """
    if block_size < 1:
        raise ConfigError(
            f"data.max_length must be a positive number of tokens, got {block_size}; use e.g. 256"
        )
    stream = token_stream(texts, tokenizer, add_eos=add_eos)
    n_blocks = len(stream) // block_size
    if n_blocks == 0:
        raise DataError(
            f"data.max_length {block_size} is longer than the {len(stream)} tokens the "
            f"{len(texts)} texts yield; lower data.max_length or add data"
        )
    dropped = len(stream) - n_blocks * block_size
    logger.info(
        "packed %d tokens into %d blocks of %d; dropped the last %d",
        len(stream), n_blocks, block_size, dropped,
    )
    flat = pa.array(stream[: n_blocks * block_size])
    # Arrow list arrays share the one flat buffer; offsets mark block boundaries.
    # (int32 offsets: the cast fails loudly past 2**31 tokens instead of wrapping.)
    offsets = np.arange(0, n_blocks * block_size + 1, block_size, dtype=np.int64)
    offsets = pa.array(offsets, type=pa.int32())
    blocks = pa.ListArray.from_arrays(offsets, flat)
    return datasets.Dataset(pa.table({"input_ids": blocks, "labels": blocks}))
