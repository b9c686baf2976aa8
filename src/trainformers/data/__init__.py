"""Data: sources, tokenisation (pretraining blocks or chat rendering), collators, dataloaders.

    load_splits -> train_tokenizer (from-scratch runs) -> tokenize_for_pretraining |
    tokenize_for_instruction -> CausalLMCollator | PaddingFreeCollator -> Trainer

`prepare_data(data_section, tokenizer)` runs the whole chain; `create_dataloader(...)` returns a
ready DataLoader in one call.
"""

from trainformers.data.chat import (
    DEFAULT_CHAT_TEMPLATE,
    FORMATS,
    detect_format,
    encode_chat,
    render_chat,
    setup_chat_template,
    stop_token_ids,
    to_messages,
    tokenize_for_instruction,
)
from trainformers.data.chat_templates import CHAT_TEMPLATES
from trainformers.data.collators import (
    CausalLMCollator,
    CompletionOnlyCollator,
    PaddingFreeCollator,
    Seq2SeqCollator,
    check_padding_free_model,
)
from trainformers.data.corpus import default_corpus, split_paragraphs, split_texts
from trainformers.data.loader import TrainingData, create_dataloader, make_collator, prepare_data, raw_texts
from trainformers.data.packing import pack_texts, token_stream
from trainformers.data.pretraining import tokenize_for_pretraining
from trainformers.data.sources import load_source, load_splits, load_texts
from trainformers.data.stats import DataStats
from trainformers.data.tokenizer import CHAT_TEMPLATE, SPECIAL_TOKENS, train_tokenizer, train_tokenizer_from_data

__all__ = [
    "CHAT_TEMPLATE",
    "CHAT_TEMPLATES",
    "DEFAULT_CHAT_TEMPLATE",
    "FORMATS",
    "SPECIAL_TOKENS",
    "CausalLMCollator",
    "CompletionOnlyCollator",
    "DataStats",
    "PaddingFreeCollator",
    "Seq2SeqCollator",
    "TrainingData",
    "check_padding_free_model",
    "create_dataloader",
    "default_corpus",
    "detect_format",
    "encode_chat",
    "load_source",
    "load_splits",
    "load_texts",
    "make_collator",
    "pack_texts",
    "prepare_data",
    "raw_texts",
    "render_chat",
    "setup_chat_template",
    "split_paragraphs",
    "split_texts",
    "stop_token_ids",
    "to_messages",
    "token_stream",
    "tokenize_for_instruction",
    "tokenize_for_pretraining",
    "train_tokenizer",
    "train_tokenizer_from_data",
]
