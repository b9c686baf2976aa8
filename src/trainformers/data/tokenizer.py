"""Train a byte-level BPE tokenizer on local text, for models trained from scratch.

Byte-level means every string encodes (no unknown token) and `decode(encode(text)) == text`.
The result is a plain `transformers` fast tokenizer: saved with `save_pretrained`, it loads
back with `AutoTokenizer.from_pretrained` and needs nothing from trainformers. With
`chat_tokens=True` it also carries chat role tokens and a chat template (`CHAT_TEMPLATE`).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from trainformers.config import DataSection
from trainformers.data.loader import load_raw, raw_texts
from trainformers.errors import ConfigError, DataError

__all__ = [
    "BOS_TOKEN",
    "CHAT_TEMPLATE",
    "CHAT_TOKENS",
    "END_TOKEN",
    "EOS_TOKEN",
    "PAD_TOKEN",
    "SPECIAL_TOKENS",
    "check_vocab_size",
    "train_tokenizer",
    "train_tokenizer_from_data",
]

BOS_TOKEN, EOS_TOKEN, PAD_TOKEN = "<|bos|>", "<|eos|>", "<|pad|>"
SPECIAL_TOKENS = [BOS_TOKEN, EOS_TOKEN, PAD_TOKEN]  # ids 0, 1, 2
END_TOKEN = "<|end|>"
CHAT_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>", END_TOKEN]  # ids 3-6 with chat_tokens=True

# The role markers of `data.chat.DEFAULT_CHAT_TEMPLATE`, here single tokens, with `<|end|>` closing
# every message instead of EOS after answers. EOS stays the document separator of pretraining
# (packing) and is not in the template: a chat model learns to stop by emitting `<|end|>` (it is
# labelled with the answer), so generation stops at `<|end|>` or EOS. The newline goes *before*
# each marker, so an assistant turn's span is exactly "answer<|end|>" and rendering is
# prefix-consistent (render(messages[:k], add_generation_prompt=True) is a prefix of
# render(messages[:k + 1])). "Be brief." / "Hi" / "Hello!" renders as
#     <|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\nHello!<|end|>
# A role other than system/user/assistant (e.g. tool) is written `<|tool|>` as plain text.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if not loop.first %}{{ '\\n' }}{% endif -%}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '" + END_TOKEN + "' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{%- if messages %}{{ '\\n' }}{% endif -%}"
    "{{ '<|assistant|>\\n' }}"
    "{%- endif -%}"
)

# What `save_pretrained` writes for a tokenizer (transformers 4 and 5). Those an earlier tokenizer
# left in `out_dir` and this one does not write are removed: a stale chat template or
# special-tokens map would be loaded together with the new vocabulary.
_TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "chat_template.jinja", "chat_template.json", "vocab.json", "merges.txt",
)  # fmt: skip

# No length limit of its own: the model's context length is the model's business, and packing
# tokenises whole documents longer than any context.
_MODEL_MAX_LENGTH = 2**63 - 1


def check_vocab_size(vocab_size: int, *, chat_tokens: bool = False, name: str = "model.vocab_size") -> None:
    """Raise unless `vocab_size` holds every byte and the special tokens.

    Raises:
        ConfigError: `vocab_size` is below 256 + the number of special tokens (259, or 263 with
            chat tokens); the message calls it `name`.
    """
    specials = len(SPECIAL_TOKENS) + (len(CHAT_TOKENS) if chat_tokens else 0)
    if not isinstance(vocab_size, int) or vocab_size < 256 + specials:
        raise ConfigError(
            f"{name} {vocab_size} is too small for a byte-level tokenizer; "
            f"use at least {256 + specials} (256 bytes + {specials} special tokens)"
        )


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    out_dir: str | Path | None = None,
    *,
    min_frequency: int = 2,
    chat_tokens: bool = False,
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
        chat_tokens: Also add `CHAT_TOKENS` (`<|system|>`, `<|user|>`, `<|assistant|>`, `<|end|>`,
            ids 3-6, as `extra_special_tokens`, the transformers 5 name of
            `additional_special_tokens`) and set `chat_template` to `CHAT_TEMPLATE`.

    Returns:
        The trained tokenizer, with `bos_token`, `eos_token` and `pad_token` set.

    Raises:
        ConfigError: `vocab_size` is below 259 (256 bytes + 3 special tokens; 263 with chat tokens).
    """
    check_vocab_size(vocab_size, chat_tokens=chat_tokens)
    specials = SPECIAL_TOKENS + (CHAT_TOKENS if chat_tokens else [])
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=specials,
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
        **({"extra_special_tokens": list(CHAT_TOKENS)} if chat_tokens else {}),
    )
    if chat_tokens:
        tokenizer.chat_template = CHAT_TEMPLATE
    if out_dir is not None:
        tokenizer.save_pretrained(str(out_dir))
    return tokenizer


def train_tokenizer_from_data(
    data: DataSection,
    vocab_size: int,
    out_dir: str | Path,
    *,
    chat_tokens: bool = False,
    min_frequency: int = 2,
) -> PreTrainedTokenizerFast:
    """Train and save a tokenizer on any source the data pipeline reads.

    It trains on the rows `trainformers train` would train its own tokenizer on, given the same
    `data` section: the training split of `data.source` (after `num_samples`, without the
    held-out rows), pretraining rows' `text_field`, instruction rows' message contents. Set
    `data.validation_split_percentage=0` to train on every row.

    Args:
        data: The `data` section; `source=None` is the embedded corpus.
        vocab_size: Largest vocabulary size, special tokens and bytes included.
        out_dir: Directory to save the tokenizer in (`save_pretrained`).
        chat_tokens: Add the chat role tokens and template (see `train_tokenizer`).
        min_frequency: A pair must occur at least this often to be merged.

    Returns:
        The trained tokenizer, saved in `out_dir`; tokenizer files of an earlier one there that
        this one does not write (e.g. `chat_template.jinja`) are removed, other files are kept.

    Raises:
        ConfigError: `vocab_size` too small (checked before any data is read), or a bad `data`.
        DataError: the source cannot be read, or has no text.
    """
    check_vocab_size(vocab_size, chat_tokens=chat_tokens, name="vocab_size")
    train, _ = load_raw(data)
    seen = 0

    def counted() -> Iterable[str]:
        nonlocal seen
        for text in raw_texts(train, data):
            seen += 1
            yield text

    tokenizer = train_tokenizer(counted(), vocab_size, min_frequency=min_frequency, chat_tokens=chat_tokens)
    if seen == 0:  # checked before saving: nothing is written for an empty source
        raise DataError(
            f"data.source {data.source!r} has no text to train a tokenizer on; check data.text_field "
            "(pretraining) or data.format (instruction)"
        )
    written = {Path(f).name for f in tokenizer.save_pretrained(str(out_dir))}
    for name in set(_TOKENIZER_FILES) - written:
        (Path(out_dir) / name).unlink(missing_ok=True)
    return tokenizer
