"""Train a byte-level BPE tokenizer on local text, for models trained from scratch.

Byte-level means every string encodes (no unknown token) and `decode(encode(text)) == text`.
The result is a plain `transformers` fast tokenizer: saved with `save_pretrained`, it loads
back with `AutoTokenizer.from_pretrained` and needs nothing from trainformers.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from trainformers.errors import ConfigError

__all__ = ["BOS_TOKEN", "EOS_TOKEN", "PAD_TOKEN", "SPECIAL_TOKENS", "train_tokenizer"]

BOS_TOKEN, EOS_TOKEN, PAD_TOKEN = "<|bos|>", "<|eos|>", "<|pad|>"
SPECIAL_TOKENS = [BOS_TOKEN, EOS_TOKEN, PAD_TOKEN]  # ids 0, 1, 2
_MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)  # every byte, plus the special tokens

# No length limit of its own: the model's context length is the model's business, and packing
# tokenises whole documents longer than any context.
_MODEL_MAX_LENGTH = 2**63 - 1


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    out_dir: str | Path | None = None,
    *,
    min_frequency: int = 2,
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer with the special tokens `<|bos|>`, `<|eos|>`, `<|pad|>`.

    The special tokens get ids 0, 1 and 2, then come the 256 byte symbols, then the merges.
    Nothing is added around encoded text (no BOS/EOS); packing adds EOS between documents.
    On a small corpus BPE can run out of merges before `vocab_size`: size the model's
    embedding with `len(tokenizer)`, not `vocab_size`.

    Args:
        texts: Training documents (any iterable; it is consumed once).
        vocab_size: Largest vocabulary size, special tokens and bytes included.
        out_dir: When given, the tokenizer is saved there with `save_pretrained`.
        min_frequency: A pair must occur at least this often to be merged.

    Returns:
        The trained tokenizer, with `bos_token`, `eos_token` and `pad_token` set.

    Raises:
        ConfigError: `vocab_size` is below 259 (256 bytes + 3 special tokens).
    """
    if vocab_size < _MIN_VOCAB_SIZE:
        raise ConfigError(
            f"model.vocab_size {vocab_size} is too small for a byte-level tokenizer; "
            f"use at least {_MIN_VOCAB_SIZE} (256 bytes + {len(SPECIAL_TOKENS)} special tokens)"
        )
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        model_max_length=_MODEL_MAX_LENGTH,
        # The default "clean-up" deletes spaces before punctuation, breaking the round trip.
        clean_up_tokenization_spaces=False,
    )
    if out_dir is not None:
        tokenizer.save_pretrained(str(out_dir))
    return tokenizer
