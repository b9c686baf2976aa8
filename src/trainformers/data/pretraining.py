"""Pretraining rows: documents tokenised once (a cached `datasets.map`), then shaped for a causal LM.

Three shapes, all with an EOS token after every document:

- packing (default): the documents form one token stream cut into blocks of `max_length`; every
  block is full but the last, which holds the rest of the stream (the collator pads that one row),
  so no token is dropped or repeated;
- padding-free: one row per document (truncated to `max_length`), concatenated per batch by a
  padding-free collator whose `position_ids` restart at each document;
- neither: one row per document (truncated), padded per batch by the collator.

Each step is a batched `map` whose function is a small picklable object holding only plain
values (the tokenizer as its JSON), so `datasets` fingerprints it the same way in every process:
on file-backed data a second call with the same inputs loads the results from the cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from trainformers.data.sources import check_text_field, dataset_columns, quiet_progress
from trainformers.data.stats import DataStats
from trainformers.errors import ConfigError, DataError

__all__ = ["tokenize_for_pretraining"]

# Part of both map functions' state, hence of the cache key: bump it when what they compute
# changes (datasets hashes a class by reference, not by its code). 2: packing keeps the tail.
_FORMAT_VERSION = 2
# Rows per `datasets.map` batch (datasets' own default); the packing tests lower it so that a
# small corpus crosses several batch boundaries.
_MAP_BATCH_ROWS = 1000
# Fewer rows than this tokenise in a second or two: no progress bars (they would fill the CLI's stderr).
_QUIET_ROWS = 50_000
_IDS = pa.list_(pa.int64())
_TOKENIZED = datasets.Features({"input_ids": datasets.List(datasets.Value("int64"))})
_TRUNCATED = datasets.Features({**_TOKENIZED, "truncated": datasets.Value("bool")})
_BLOCKS = datasets.Features({**_TOKENIZED, "labels": datasets.List(datasets.Value("int64"))})


def tokenize_for_pretraining(
    dataset: datasets.Dataset | datasets.IterableDataset,
    tokenizer: Any,
    *,
    text_field: str | Sequence[str] = "text",
    max_length: int,
    packing: bool = True,
    padding_free: bool = False,
    add_eos: bool = True,
    num_proc: int | None = None,
    name: str = "train",
) -> tuple[datasets.Dataset | datasets.IterableDataset, DataStats]:
    """Tokenise documents for causal LM pretraining and shape them into training rows.

    Documents are tokenised without special tokens; several `text_field`s of a row are joined
    with a blank line (`"\\n\\n"`), empty ones left out. A row whose text is empty, blank or null
    (or tokenises to nothing) is skipped and counted. With `add_eos` an EOS token follows every
    document.

    - `packing=True`: block `i` is tokens `[i * max_length, (i + 1) * max_length)` of the
      documents' concatenated stream, the last block the rest of it (shorter unless the stream
      length is a multiple of `max_length`): concatenated, the blocks are exactly the stream.
      Columns `input_ids` and `labels` (a copy: the model shifts them); batch them with a padding
      collator (`CausalLMCollator`: the short row's padding gets label -100 and attention mask 0).
      Tokenising runs on `num_proc` processes; cutting blocks always runs in one, so the blocks
      do not depend on `num_proc`.
    - `padding_free=True`: one row per document, column `input_ids`, for a padding-free collator.
    - both `False`: one row per document, column `input_ids`, for a padding collator.

    Without packing a document longer than `max_length` keeps its first `max_length` tokens (its
    EOS is cut with the rest: the document does not end there) and is counted in
    `stats.truncated`. Rows of the last two shapes have no `labels`: the collator derives them
    from `input_ids`, masking padding or document starts.

    Caching: on a file-backed dataset (local files, `save_to_disk`, Hub downloads) both maps
    are cached by `datasets` under the input's fingerprint and the map function's hash, so a
    second call with the same data, tokenizer and options reads the results from the cache and
    tokenises nothing. An in-memory dataset (the embedded corpus, `Dataset.from_dict`) keeps its
    results in memory and is tokenised again on every call.

    A stream (`IterableDataset`) is mapped lazily, the same way (blocks are cut across batches),
    and nothing can be counted up front: its stats hold zeros and say so. A map over a stream
    never learns which batch is its last, so a packed stream yields the dataset's full blocks but
    not its final shorter one: the last `< max_length` tokens of each pass are dropped (of each
    DataLoader worker's pass, when several read it), and the stats' note says so.

    Args:
        dataset: The documents (e.g. from `sources.load_source`).
        tokenizer: A `transformers` tokenizer (fast ones are hashed by their JSON).
        text_field: The text column, or several to join.
        max_length: Block length when packing, else the truncation length.
        packing: Cut the stream into blocks of `max_length` (see above).
        padding_free: One row per document, for a padding-free collator; excludes `packing`.
        add_eos: Add the tokenizer's EOS token after every document.
        num_proc: Processes for tokenisation (`datasets.map`); `None` tokenises in this one. A
            stream is tokenised lazily in the reading process (or DataLoader workers).
        name: The stats' name (e.g. "train", "eval").

    Returns:
        `(rows, stats)`: the training rows, and what happened to the documents.

    Raises:
        ConfigError: `max_length` is not positive, or both `packing` and `padding_free` are set.
        DataError: a text field is missing or not text; every text is blank; the tokenizer has
            no EOS token but `add_eos` is set.
    """
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise ConfigError(f"data.max_length must be a positive number of tokens, got {max_length!r}; use e.g. 256")
    if packing and padding_free:
        raise ConfigError(
            "Can't set both data.packing and data.padding_free: padding-free keeps documents as rows "
            "instead of cutting blocks; set data.packing: false"
        )
    fields = check_text_field(dataset, text_field)
    eos = _eos_id(tokenizer, add_eos)
    streaming = isinstance(dataset, datasets.IterableDataset)
    stats = DataStats(name=name)
    if not streaming:
        stats.rows_in = len(dataset)
    truncate_to = None if packing else max_length
    encode = _Tokenize(tokenizer, fields, eos, truncate_to)
    features = _TOKENIZED if packing else _TRUNCATED
    tokenized = _map(dataset, encode, features=features, num_proc=num_proc, desc=f"Tokenizing {name}")

    if packing:
        pack = _PackBlocks(max_length, rows=None if streaming else len(tokenized))
        rows = _map(tokenized, pack, features=_BLOCKS, with_indices=True, desc=f"Packing {name}")
    else:
        rows = tokenized.remove_columns("truncated")
    rows = rows.with_format(None)
    if streaming:
        stats.notes.append("streaming: rows and tokens are not counted up front")
        if packing:
            stats.notes.append(f"packing a stream drops the last < {max_length} tokens of each pass")
        return rows, stats

    lengths = pc.list_value_length(_column(tokenized, "input_ids"))
    total = pc.sum(lengths).as_py() or 0
    stats.skipped_empty = stats.rows_in - len(tokenized)
    stats.rows_out = len(rows)
    if len(tokenized) == 0:
        raise DataError(
            f"every row of {name} ({stats.rows_in}) has empty or null text in {text_field!r}; "
            "check data.text_field and data.source"
        )
    stats.tokens = total  # packed blocks hold the whole stream; rows per document were cut already
    if not packing:
        stats.truncated = pc.sum(_column(tokenized, "truncated")).as_py() or 0
    return rows, stats


def encode_texts(texts: Sequence[str], tokenizer: Any, *, add_eos: bool = True) -> list[list[int]]:
    """The tokenisation step of `tokenize_for_pretraining` on a list: ids (+ EOS) per non-blank text."""
    encode = _Tokenize(tokenizer, ["text"], _eos_id(tokenizer, add_eos), None)
    return encode(pa.table({"text": pa.array(list(texts), pa.string())}))["input_ids"].to_pylist()


def _eos_id(tokenizer: Any, add_eos: bool) -> int | None:
    if not add_eos:
        return None
    if tokenizer.eos_token_id is None:
        raise DataError(
            f"tokenizer {type(tokenizer).__name__} has no eos_token, so documents cannot be separated; "
            "set tokenizer.eos_token, or add_eos=False"
        )
    return tokenizer.eos_token_id


class _Tokenize:
    """The tokenising map function: text field(s) -> `input_ids` (+ EOS), batch by batch.

    Holds the tokenizer as its JSON (truncation and padding switched off), which hashes the same
    whatever calls the tokenizer has seen; a slow tokenizer without one is held as it is.
    """

    def __init__(self, tokenizer: Any, fields: list[str], eos: int | None, truncate_to: int | None):
        self.fields, self.eos, self.truncate_to = fields, eos, truncate_to
        self.version = _FORMAT_VERSION
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is not None:
            from tokenizers import Tokenizer

            plain = Tokenizer.from_str(backend.to_str())
            plain.no_truncation()
            plain.no_padding()
            self.tokenizer_json, self.slow_tokenizer = plain.to_str(), None
        else:
            self.tokenizer_json, self.slow_tokenizer = None, tokenizer
        self._backend = None

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "_backend"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _backend=None)

    def __call__(self, batch: pa.Table) -> pa.Table:
        texts = _join_fields(batch, self.fields)
        kept = [text for text in texts if text is not None]
        ids = self._encode(kept)
        if self.eos is not None:
            ids = [row + [self.eos] for row in ids if row]
        else:
            ids = [row for row in ids if row]
        columns: dict[str, Any] = {}
        if self.truncate_to is not None:
            columns["truncated"] = pa.array([len(row) > self.truncate_to for row in ids], pa.bool_())
            ids = [row[: self.truncate_to] for row in ids]
        return pa.table({"input_ids": pa.array(ids, _IDS), **columns})

    def _encode(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        if self.tokenizer_json is None:
            # verbose=False: documents longer than the tokenizer's model_max_length are expected here.
            return self.slow_tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
        if self._backend is None:
            from tokenizers import Tokenizer

            self._backend = Tokenizer.from_str(self.tokenizer_json)
        return [encoding.ids for encoding in self._backend.encode_batch_fast(texts, add_special_tokens=False)]


class _PackBlocks:
    """The packing map function: consecutive `input_ids` rows -> blocks of `block_size`.

    What does not fill a block is carried into the next batch, so blocks cross batch boundaries:
    one remainder for the whole pass, not one per batch. The batch holding row `rows - 1`, the
    last, emits that remainder as a shorter final block; with `rows=None` (a stream, whose length
    is unknown) it is never emitted. A pass starts at row index 0, where the carry is reset (a
    stream is iterated once per epoch through the same function object).
    """

    def __init__(self, block_size: int, rows: int | None):
        self.block_size, self.rows = block_size, rows
        self.version = _FORMAT_VERSION
        self._carry = np.zeros(0, dtype=np.int64)

    def __getstate__(self) -> dict[str, Any]:
        return {"block_size": self.block_size, "rows": self.rows, "version": self.version}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _carry=np.zeros(0, dtype=np.int64))

    def __call__(self, batch: pa.Table, indices: list[int]) -> pa.Table:
        if indices and indices[0] == 0:
            self._carry = np.zeros(0, dtype=np.int64)
        ids = pc.list_flatten(batch["input_ids"]).to_numpy()
        stream = np.concatenate([self._carry, ids.astype(np.int64, copy=False)])
        last = self.rows is not None and bool(indices) and indices[-1] == self.rows - 1
        used = len(stream) if last else len(stream) // self.block_size * self.block_size
        self._carry = stream[used:].copy()
        # One flat buffer; list offsets mark the block boundaries (shared by both columns). The
        # last batch's final block ends where the stream does.
        offsets = np.append(np.arange(0, used, self.block_size), used).astype(np.int32)
        blocks = pa.ListArray.from_arrays(pa.array(offsets), pa.array(stream[:used], pa.int64()))
        return pa.table({"input_ids": blocks, "labels": blocks})


def _join_fields(batch: pa.Table, fields: list[str]) -> list[str | None]:
    """Each row's non-blank fields joined by a blank line; `None` when every field is blank."""
    columns = [batch[field].to_pylist() for field in fields]
    out: list[str | None] = []
    for values in zip(*columns):
        parts = []
        for field, value in zip(fields, values):
            if value is None:
                continue
            if not isinstance(value, str):
                raise DataError(
                    f"data.text_field {field!r} holds {type(value).__name__} values, not text; "
                    "point data.text_field at a text column"
                )
            if value.strip():
                parts.append(value)
        out.append("\n\n".join(parts) if parts else None)
    return out


def _map(
    dataset: Any,
    function: Any,
    *,
    features: datasets.Features,
    with_indices: bool = False,
    num_proc: int | None = None,
    desc: str,
) -> Any:
    """A batched map over Arrow batches that replaces every input column with the function's."""
    arrow = dataset.with_format("arrow")
    if isinstance(dataset, datasets.IterableDataset):
        # An IterableDataset drops `remove_columns` from the *output*: remove only what is not replaced.
        remove = [c for c in dataset_columns(dataset)[0] if c not in features]
        return arrow.map(
            function,
            batched=True,
            batch_size=_MAP_BATCH_ROWS,
            with_indices=with_indices,
            remove_columns=remove,
            features=features,
        )
    with quiet_progress(len(dataset) < _QUIET_ROWS):
        return arrow.map(
            function,
            batched=True,
            batch_size=_MAP_BATCH_ROWS,
            with_indices=with_indices,
            remove_columns=dataset.column_names,
            features=features,
            num_proc=num_proc,
            desc=desc,
        )


def _column(dataset: datasets.Dataset, column: str) -> pa.ChunkedArray:
    """A column as Arrow, without copying it into Python (map outputs have no indices mapping)."""
    values = dataset.with_format("arrow")[column]
    return values if isinstance(values, (pa.ChunkedArray, pa.Array)) else pa.chunked_array([values])
