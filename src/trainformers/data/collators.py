"""Collators: turn a list of tokenized rows into one batch of tensors for the model.

Every collator pads dynamically (to the longest row of the batch, rounded up to a multiple),
pads labels with -100 so padding never trains, and never pads to a fixed length. Rows are
dicts with `input_ids` and optionally `labels` and `attention_mask` (lists or 1-D tensors);
other keys are ignored. `PaddingFreeCollator` packs a batch into one row without padding.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from trainformers.errors import ConfigError, DataError
from trainformers.losses import IGNORE_INDEX

__all__ = [
    "CausalLMCollator",
    "CompletionOnlyCollator",
    "PaddingFreeCollator",
    "Seq2SeqCollator",
    "check_padding_free_model",
    "pad_sequences",
]

logger = logging.getLogger(__name__)

_SIDES = ("left", "right")
# Attention implementations whose masks (or varlen kernels) keep packed documents apart in
# transformers 5.x when given position_ids and no attention mask; see PaddingFreeCollator.
_DOCUMENT_LOCAL_ATTENTION = {
    "sdpa",
    "eager",
    "flex_attention",
    "flash_attention_2",
    "flash_attention_3",
    "flash_attention_4",
}

Row = Mapping[str, Any]
Ids = Sequence[int] | torch.Tensor


def pad_sequences(seqs: Sequence[Ids], value: int, side: str = "right", multiple: int | None = None) -> torch.Tensor:
    """Stack 1-D sequences into a 2-D int64 tensor, padding to the longest one.

    Args:
        seqs: The rows (lists of ints or 1-D tensors); at least one.
        value: The padding value.
        side: "right" puts padding after each row, "left" before it.
        multiple: Round the width up to a multiple of this; None keeps the longest length.

    Returns:
        A tensor of shape (len(seqs), width).
    """
    rows = [torch.as_tensor(s, dtype=torch.long).reshape(-1) for s in seqs]
    width = _round_up(max(len(r) for r in rows), multiple)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, row in enumerate(rows):
        if side == "right":
            out[i, : len(row)] = row
        else:
            out[i, width - len(row) :] = row
    return out


class CausalLMCollator:
    """Pad rows for a causal LM: labels are a copy of `input_ids` unless the rows bring their own.

    Labels are copied before padding and padded with -100, so a pad token that is also the EOS
    token (GPT-2 style) still trains where it ends a row. Use right padding for training and
    left padding for batches handed to `generate()` (which derives positions from the mask).

    Args:
        pad_token_id: Id used to pad `input_ids`.
        pad_to_multiple_of: Round the batch length up to this multiple; None pads to the longest row.
        padding_side: "right" or "left".
        label_pad_id: Label value for padding (ignored by the loss).
        max_length: Rows longer than this are cut to their first `max_length` tokens, and the
            rounded batch length never exceeds it. None keeps whole rows.

    Raises:
        ConfigError: `pad_token_id` is None, `padding_side` is unknown, or a size is below 1.
    """

    def __init__(
        self,
        pad_token_id: int,
        *,
        pad_to_multiple_of: int | None = 8,
        padding_side: str = "right",
        label_pad_id: int = IGNORE_INDEX,
        max_length: int | None = None,
    ) -> None:
        self.pad_token_id = _check_pad_id(pad_token_id)
        self.pad_to_multiple_of = _check_size("pad_to_multiple_of", pad_to_multiple_of)
        self.padding_side = _check_side(padding_side)
        self.label_pad_id = label_pad_id
        self.max_length = _check_size("max_length", max_length)

    def __call__(self, features: Sequence[Row]) -> dict[str, torch.Tensor]:
        """Collate rows into `input_ids`, `attention_mask` and `labels` of shape (batch, width)."""
        rows = _read_rows(features)
        ids = [r["input_ids"] for r in rows]
        labels = [r.get("labels", r["input_ids"]) for r in rows]
        masks = [r.get("attention_mask", [1] * len(r["input_ids"])) for r in rows]
        if self.max_length is not None:
            ids, labels, masks = ([s[: self.max_length] for s in seqs] for seqs in (ids, labels, masks))
        multiple = self.pad_to_multiple_of
        longest = max(len(s) for s in ids)
        if self.max_length is not None and _round_up(longest, multiple) > self.max_length:
            multiple = None  # rounding up would exceed max_length: pad to the longest row only
        side = self.padding_side
        return {
            "input_ids": pad_sequences(ids, self.pad_token_id, side, multiple),
            "attention_mask": pad_sequences(masks, 0, side, multiple),
            "labels": pad_sequences(labels, self.label_pad_id, side, multiple),
        }


class PaddingFreeCollator:
    """Concatenate a batch into one row of shape (1, total_tokens), with no padding at all.

    `position_ids` restart at 0 for each document, which is how transformers 5.x recognises
    packed documents: with position_ids and *no* attention mask, `create_causal_mask` builds a
    block-diagonal causal mask for "sdpa", "eager" and "flex_attention", and the flash-attention
    kernels switch to their varlen form. That detection is skipped when the model holds a cache,
    and `LlamaModel` builds one whenever `use_cache` is true (its config default), even in train
    mode: run the model with `use_cache=False` (`check_padding_free_model` checks the config),
    or attention crosses documents silently.

    Labels are each row's `labels` (or `input_ids`) with the first token of every document set
    to -100: after the model's shift, that label would be predicted from the previous document.

    With `max_length`, the batch's documents are instead bin-packed (first-fit decreasing) into
    rows of at most `max_length` tokens, shape (rows, width). Attention cost is then
    rows x width^2 instead of total^2: on CPU, where sdpa has no variable-length kernel and
    computes the masked square, one 4k-token row was 2.5x slower than packed blocks
    (bench/padding.py). The few padding tokens that even out the rows form their own
    pseudo-document (positions restart, labels -100), so no attention mask is needed.

    Args:
        label_pad_id: Label placed on the first token of every document.
        return_flash_attn_kwargs: Also return `cu_seq_lens_q`/`cu_seq_lens_k` (int32 document
            boundaries) and `max_length_q`/`max_length_k` (Python ints), so flash attention need
            not derive them from position_ids in every layer (single-row mode only).
        max_length: Row capacity for bin-packing; None concatenates everything into one row.
        pad_token_id: Token used to even out bin-packed rows.
    """

    def __init__(
        self,
        *,
        label_pad_id: int = IGNORE_INDEX,
        return_flash_attn_kwargs: bool = False,
        max_length: int | None = None,
        pad_token_id: int = 0,
    ) -> None:
        if max_length is not None and max_length < 1:
            raise ConfigError(f"PaddingFreeCollator max_length={max_length} must be at least 1")
        if max_length is not None and return_flash_attn_kwargs:
            raise ConfigError(
                "PaddingFreeCollator: return_flash_attn_kwargs needs the single-row mode (max_length=None)"
            )
        self.label_pad_id = label_pad_id
        self.return_flash_attn_kwargs = return_flash_attn_kwargs
        self.max_length = max_length
        self.pad_token_id = pad_token_id

    def __call__(self, features: Sequence[Row]) -> dict[str, Any]:
        """Collate rows into `input_ids`, `position_ids` and `labels` of shape (1, total_tokens)."""
        rows = _read_rows(features)
        for i, row in enumerate(rows):
            if "attention_mask" in row and 0 in row["attention_mask"]:
                raise DataError(
                    f"row {i} attention_mask has zeros (padding); padding-free batches need unpadded rows: "
                    "tokenize without padding"
                )
        if self.max_length is not None:
            return self._bin_packed(rows)
        lengths = [len(r["input_ids"]) for r in rows]
        labels = []
        for row in rows:
            doc_labels = list(row.get("labels", row["input_ids"]))
            labels += [self.label_pad_id] + doc_labels[1:]
        batch: dict[str, Any] = {
            "input_ids": torch.tensor([[t for r in rows for t in r["input_ids"]]], dtype=torch.long),
            "position_ids": torch.cat([torch.arange(n) for n in lengths]).unsqueeze(0),
            "labels": torch.tensor([labels], dtype=torch.long),
        }
        if self.return_flash_attn_kwargs:
            cu_seq_lens = torch.tensor([0, *lengths], dtype=torch.int32).cumsum(0, dtype=torch.int32)
            batch["cu_seq_lens_q"] = batch["cu_seq_lens_k"] = cu_seq_lens
            batch["max_length_q"] = batch["max_length_k"] = max(lengths)
        return batch

    def _bin_packed(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        """First-fit decreasing into rows of at most max_length; pad runs are pseudo-documents."""
        capacity = self.max_length
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i]["input_ids"]))
        bins: list[list[int]] = []
        room: list[int] = []
        for i in order:
            n = len(rows[i]["input_ids"])
            if n > capacity:
                raise DataError(
                    f"a document of {n} tokens exceeds the padding-free row length {capacity}; truncate to data.max_length"
                )
            slot = next((b for b, free in enumerate(room) if free >= n), None)
            if slot is None:
                bins.append([])
                room.append(capacity)
                slot = len(bins) - 1
            bins[slot].append(i)
            room[slot] -= n
        width = max(capacity - free for free in room)
        ids, positions, labels = [], [], []
        for members in bins:
            row_ids: list[int] = []
            row_pos: list[int] = []
            row_labels: list[int] = []
            for i in sorted(members):  # dataset order inside a row
                doc = rows[i]
                doc_labels = list(doc.get("labels", doc["input_ids"]))
                row_ids += list(doc["input_ids"])
                row_pos += list(range(len(doc["input_ids"])))
                row_labels += [self.label_pad_id] + doc_labels[1:]
            pad = width - len(row_ids)
            row_ids += [self.pad_token_id] * pad
            row_pos += list(range(pad))
            row_labels += [self.label_pad_id] * pad
            ids.append(row_ids)
            positions.append(row_pos)
            labels.append(row_labels)
        return {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "position_ids": torch.tensor(positions, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
        }


def check_padding_free_model(model: Any) -> None:
    """Raise unless `model` keeps padding-free documents apart (see `PaddingFreeCollator`).

    Args:
        model: A transformers model (anything with a `config`).

    Raises:
        ConfigError: `model.config.use_cache` is true, or the attention implementation is one
            that transformers does not mask per document.
    """
    config = model.config
    if getattr(config, "use_cache", False):
        raise ConfigError(
            "model.config.use_cache is True, so transformers skips per-document masking and padding-free "
            "documents attend to each other; set model.config.use_cache = False for training"
        )
    impl = getattr(config, "_attn_implementation", None) or "eager"
    if impl not in _DOCUMENT_LOCAL_ATTENTION:
        raise ConfigError(
            f"model attn_implementation {impl!r} is not known to keep packed documents apart; "
            f"use one of {sorted(_DOCUMENT_LOCAL_ATTENTION)} or turn padding_free off"
        )


class Seq2SeqCollator:
    """Pad encoder inputs and labels separately for an encoder-decoder model.

    Labels are always right-padded with -100, never with the pad id (a model trained on pad
    labels learns to emit pads while its loss falls); a row whose labels contain the pad id is
    an error. When `model` has `prepare_decoder_input_ids_from_labels`, `decoder_input_ids`
    are built from the padded labels (shifted right, -100 replaced by the pad id).

    Args:
        pad_token_id: Id used to pad `input_ids`.
        pad_to_multiple_of: Round each length (encoder and labels) up to this multiple.
        label_pad_id: Label value for padding.
        padding_side: Side for the encoder inputs; labels are always padded on the right.
        model: Optional model providing `prepare_decoder_input_ids_from_labels`.

    Raises:
        ConfigError: `pad_token_id` is None, `padding_side` is unknown, or a size is below 1.
    """

    def __init__(
        self,
        pad_token_id: int,
        *,
        pad_to_multiple_of: int | None = 8,
        label_pad_id: int = IGNORE_INDEX,
        padding_side: str = "right",
        model: Any = None,
    ) -> None:
        self.pad_token_id = _check_pad_id(pad_token_id)
        self.pad_to_multiple_of = _check_size("pad_to_multiple_of", pad_to_multiple_of)
        self.label_pad_id = label_pad_id
        self.padding_side = _check_side(padding_side)
        self.model = model

    def __call__(self, features: Sequence[Row]) -> dict[str, torch.Tensor]:
        """Collate rows into `input_ids`, `attention_mask`, and (when rows have them) `labels` and `decoder_input_ids`.

        Raises:
            DataError: rows disagree on having labels, or a row's labels contain the pad id.
        """
        rows = _read_rows(features, labels_match_inputs=False)
        side, multiple = self.padding_side, self.pad_to_multiple_of
        batch = {
            "input_ids": pad_sequences([r["input_ids"] for r in rows], self.pad_token_id, side, multiple),
            "attention_mask": pad_sequences(
                [r.get("attention_mask", [1] * len(r["input_ids"])) for r in rows], 0, side, multiple
            ),
        }
        with_labels = sum("labels" in r for r in rows)
        if with_labels == 0:
            return batch
        if with_labels != len(rows):
            raise DataError(f"labels present in {with_labels} of {len(rows)} rows; give every row labels or none")
        for i, row in enumerate(rows):
            if self.pad_token_id in row["labels"]:
                raise DataError(
                    f"row {i} labels contain the pad id {self.pad_token_id}; mark ignored targets with "
                    f"{self.label_pad_id} (tokenize targets without padding: this collator pads them)"
                )
        labels = pad_sequences([r["labels"] for r in rows], self.label_pad_id, "right", multiple)
        batch["labels"] = labels
        if hasattr(self.model, "prepare_decoder_input_ids_from_labels"):
            batch["decoder_input_ids"] = self.model.prepare_decoder_input_ids_from_labels(labels=labels)
        return batch


class CompletionOnlyCollator:
    """Train a causal LM only on completions: labels are -100 on the prompt of each row.

    Single-turn (no `instruction_template`): everything up to and including the last
    occurrence of `response_template` is masked. Multi-turn: each response runs from the end
    of a response template to the start of the next `instruction_template` (or the row's end);
    everything else, instruction templates included, is masked.

    Templates are matched by token ids. A string template is tokenized alone
    (`add_special_tokens=False`), and BPE may tokenize the same text differently inside a
    row: with a byte-level tokenizer "Answer:" alone is not " Answer:" after a space. When that
    happens, pass the ids exactly as they appear in tokenized rows (e.g. encode
    "\\n### Answer:" and drop the ids of the leading context).

    A row without a response (template not found, or nothing after it) gets all labels -100,
    is counted in `rows_without_response`, and a warning is logged the first time: a batch of
    such rows has no loss, so watch the counter.

    Args:
        pad_token_id: Id used to pad `input_ids`.
        response_template: Ids (or text, with `tokenizer`) that precede each completion.
        instruction_template: Ids (or text) that start each human turn, for multi-turn rows.
        tokenizer: Tokenizer for string templates.
        pad_to_multiple_of: Round the batch length up to this multiple; None pads to the longest row.
        padding_side: "right" or "left".
        label_pad_id: Label value for padding and masked tokens.

    Raises:
        ConfigError: a template is empty, a string template comes without a tokenizer, or as
            for `CausalLMCollator`.
    """

    def __init__(
        self,
        pad_token_id: int,
        response_template: Sequence[int] | str,
        *,
        instruction_template: Sequence[int] | str | None = None,
        tokenizer: Any = None,
        pad_to_multiple_of: int | None = 8,
        padding_side: str = "right",
        label_pad_id: int = IGNORE_INDEX,
    ) -> None:
        self.response_ids = _template_ids("response_template", response_template, tokenizer)
        self.instruction_ids = (
            None
            if instruction_template is None
            else _template_ids("instruction_template", instruction_template, tokenizer)
        )
        self.label_pad_id = label_pad_id
        self.rows_without_response = 0
        self._pad = CausalLMCollator(
            pad_token_id, pad_to_multiple_of=pad_to_multiple_of, padding_side=padding_side, label_pad_id=label_pad_id
        )

    def __call__(self, features: Sequence[Row]) -> dict[str, torch.Tensor]:
        """Mask prompts in each row's labels, then pad like `CausalLMCollator`."""
        rows = _read_rows(features)
        masked = [{**row, "labels": self._mask(row)} for row in rows]
        return self._pad(masked)

    def _mask(self, row: Row) -> list[int]:
        ids = list(row["input_ids"])
        source = list(row.get("labels", ids))
        labels = [self.label_pad_id] * len(ids)
        starts = _find(ids, self.response_ids)
        if self.instruction_ids is None:
            spans = [(starts[-1] + len(self.response_ids), len(ids))] if starts else []
        else:
            human = _find(ids, self.instruction_ids)
            spans = []
            for start in starts:
                begin = start + len(self.response_ids)
                end = next((h for h in human if h >= begin), len(ids))
                spans.append((begin, end))
        for begin, end in spans:
            labels[begin:end] = source[begin:end]
        if all(label == self.label_pad_id for label in labels):
            if self.rows_without_response == 0:
                logger.warning(
                    "a row has no response after response_template %s (template not found, or nothing after "
                    "it); its labels are all -100. Check the template's ids inside tokenized text (BPE "
                    "context); CompletionOnlyCollator.rows_without_response counts such rows",
                    self.response_ids,
                )
            self.rows_without_response += 1
        return labels


def _round_up(n: int, multiple: int | None) -> int:
    return n if not multiple else -(-n // multiple) * multiple


def _find(ids: list[int], pattern: list[int]) -> list[int]:
    """Start indices of every occurrence of `pattern` in `ids`, left to right, non-overlapping."""
    found, i, n, first = [], 0, len(pattern), pattern[0]
    while i <= len(ids) - n:
        if ids[i] == first and ids[i : i + n] == pattern:
            found.append(i)
            i += n
        else:
            i += 1
    return found


def _read_rows(features: Sequence[Row], *, labels_match_inputs: bool = True) -> list[dict[str, list[int]]]:
    """Check rows and return them with `input_ids`/`labels`/`attention_mask` as lists of ints."""
    if len(features) == 0:
        raise DataError("collator got an empty batch; check the dataset is not empty and batch_size >= 1")
    rows = []
    for i, feature in enumerate(features):
        if "input_ids" not in feature:
            raise DataError(
                f"row {i} has no input_ids (keys: {sorted(feature)}); tokenize the dataset before collating"
            )
        row = {k: _as_list(feature[k]) for k in ("input_ids", "labels", "attention_mask") if k in feature}
        n = len(row["input_ids"])
        if n == 0:
            raise DataError(f"row {i} input_ids is empty; drop empty rows before training")
        for key in ("labels", "attention_mask"):
            must_match = key == "attention_mask" or labels_match_inputs
            if key in row and must_match and len(row[key]) != n:
                raise DataError(
                    f"row {i} {key} has {len(row[key])} tokens but input_ids has {n}; they must be the same length"
                )
        rows.append(row)
    return rows


def _as_list(seq: Ids) -> list[int]:
    return seq.reshape(-1).tolist() if isinstance(seq, torch.Tensor) else list(seq)


def _template_ids(name: str, template: Sequence[int] | str, tokenizer: Any) -> list[int]:
    if isinstance(template, str):
        if tokenizer is None:
            raise ConfigError(f"{name} {template!r} is text but no tokenizer was given; pass tokenizer= or token ids")
        ids = list(tokenizer(template, add_special_tokens=False)["input_ids"])
    else:
        ids = _as_list(template)
    if not ids:
        raise ConfigError(f"{name} {template!r} is empty; give the ids (or text) that precede each turn")
    return ids


def _check_pad_id(pad_token_id: int | None) -> int:
    if pad_token_id is None:
        raise ConfigError(
            "pad_token_id is None; set tokenizer.pad_token (e.g. tokenizer.pad_token = tokenizer.eos_token) "
            "and pass tokenizer.pad_token_id"
        )
    return int(pad_token_id)


def _check_side(side: str) -> str:
    if side not in _SIDES:
        raise ConfigError(f"padding_side {side!r} is unknown; use 'right' (training) or 'left' (generation)")
    return side


def _check_size(name: str, value: int | None) -> int | None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(f"{name} {value!r} must be a positive integer or None")
    return value
