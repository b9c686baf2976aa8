"""Data: where text comes from, the tokenizer trained on it, and how it is shaped for training.

`load_texts` → `split_texts` → `train_tokenizer` (from-scratch runs) → `pack_texts`.
"""

from trainformers.data.corpus import default_corpus, load_texts, split_paragraphs, split_texts
from trainformers.data.packing import pack_texts, token_stream
from trainformers.data.tokenizer import SPECIAL_TOKENS, train_tokenizer

__all__ = [
    "SPECIAL_TOKENS",
    "default_corpus",
    "load_texts",
    "pack_texts",
    "split_paragraphs",
    "split_texts",
    "token_stream",
    "train_tokenizer",
]
