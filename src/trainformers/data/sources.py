"""Where rows come from: one `load_source` for every kind of source, as a `datasets` dataset.

A source is the embedded corpus (`None`), an in-memory `Dataset`/`DatasetDict`/`IterableDataset`,
local files (json, jsonl, csv, parquet, txt; a list or a glob), a `save_to_disk` directory, a
directory of data files, or a Hub dataset name. `load_splits` adds the held-out set: a named
split, or a seeded share carved from train. Shaping (tokenisation, packing) comes after, in
`pretraining.py` and `chat.py`, and never cares where the rows came from.
"""

from __future__ import annotations

import codecs
import contextlib
import glob
import json
import logging
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
from datasets.data_files import EmptyDatasetError
from datasets.exceptions import DataFilesNotFoundError, DatasetGenerationError, DatasetNotFoundError
from datasets.fingerprint import Hasher

from trainformers.data.corpus import DEFAULT_DOCUMENT_CHARS, default_corpus, documents_from_lines
from trainformers.errors import ConfigError, DataError, did_you_mean, not_utf8

__all__ = ["check_text_field", "dataset_columns", "load_source", "load_splits", "load_texts", "quiet_progress"]

AnyDataset = datasets.Dataset | datasets.IterableDataset
Source = str | os.PathLike | Sequence[str] | datasets.Dataset | datasets.DatasetDict | None

# File types read through a `datasets` packaged builder; `.txt` is read by `documents_from_lines`.
_BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
_SUFFIXES = (".txt", *_BUILDERS)
_TEXT_FEATURES = datasets.Features({"text": datasets.Value("string")})
_TEXT_DTYPES = ("string", "large_string", "null")  # null: a column with no value yet
# Bump when the way .txt files become documents changes: it is part of their cache key.
_TXT_FORMAT_VERSION = 1
# Local data below this size loads in a moment: no progress bars (they would fill the CLI's stderr).
_QUIET_BYTES = 64 * 2**20


def load_source(
    source: Source | datasets.IterableDataset | datasets.IterableDatasetDict,
    *,
    subset: str | None = None,
    split: str = "train",
    revision: str | None = None,
    streaming: bool = False,
    num_samples: int | None = None,
    data_files: str | Sequence[str] | dict[str, Any] | None = None,
) -> AnyDataset:
    """Load one split of a data source as a `datasets.Dataset` (or `IterableDataset` when streaming).

    What `source` can be:

    - `None`: the embedded corpus (`corpus.default_corpus()`), one document per row of `text`.
    - a `Dataset` or `IterableDataset`: returned as it is (a source with a single split).
    - a `DatasetDict` / `IterableDatasetDict`: its `split`.
    - a path to a `.json`/`.jsonl`/`.csv`/`.parquet` file, a list of such files or a glob: read
      with the `datasets` builder of that type (one type per source). A `.txt` file: one
      document per group of blank-line-separated paragraphs (`corpus.split_paragraphs`), in a
      `text` column. Files have a single split, `train`.
    - a directory written by `save_to_disk` (a `Dataset`, or a `DatasetDict` whose `split` is
      taken); a directory of `.txt` files (as above); any other directory is read by
      `load_dataset(directory, split=split, data_files=data_files)` (file names such as
      `train.jsonl` / `validation.jsonl` become splits).
    - anything else: a Hub dataset (or a packaged builder such as `"json"` with `data_files`),
      `load_dataset(source, subset, split=split, revision=revision, streaming=streaming)`.

    Local files are converted to Arrow once, in the `datasets` cache (`.txt` included, keyed by
    the files' paths, sizes and modification times), so later `map` calls on them are cached.
    The embedded corpus and in-memory datasets stay in memory and are not cached.

    Args:
        source: The data source, as above.
        subset: The Hub dataset's configuration name, if it has several.
        split: The split to read; sources with a single split accept only `"train"`.
        revision: Hub dataset revision (branch, tag or commit).
        streaming: Return an `IterableDataset` read lazily (local sources too). An
            `IterableDataset` source stays one whatever this says.
        num_samples: Keep only the first N rows (`select` / `take`); `None` keeps all.
        data_files: Data files for a directory or a builder/Hub name (as `load_dataset` takes
            them, e.g. `{"train": "a.jsonl", "validation": "b.jsonl"}` with source `"json"`).

    Returns:
        The rows of the split.

    Raises:
        DataError: the source does not exist, mixes file types, lacks `split`, or cannot be
            reached.
        ConfigError: `num_samples` is not a positive integer, or `subset`/`data_files` are given
            with a source they do not apply to.
    """
    if num_samples is not None and not _positive_int(num_samples):
        raise ConfigError(
            f"data.num_samples must be a positive integer, got {num_samples!r}; leave it unset to use every sample"
        )
    dataset = _load(source, subset=subset, split=split, revision=revision, data_files=data_files, streaming=streaming)
    if isinstance(dataset, datasets.Dataset):
        if streaming:
            dataset = dataset.to_iterable_dataset()
        elif num_samples is not None and num_samples < len(dataset):
            dataset = dataset.select(range(num_samples))
    if isinstance(dataset, datasets.IterableDataset) and num_samples is not None:
        dataset = dataset.take(num_samples)
    return dataset


def load_splits(
    source: Source | datasets.IterableDataset | datasets.IterableDatasetDict,
    *,
    subset: str | None = None,
    split: str = "train",
    eval_split: str | None = None,
    revision: str | None = None,
    streaming: bool = False,
    num_samples: int | None = None,
    num_eval_samples: int | None = None,
    validation_split_percentage: float = 5.0,
    seed: int = 42,
    data_files: str | Sequence[str] | dict[str, Any] | None = None,
) -> tuple[AnyDataset, AnyDataset | None]:
    """Load the training rows and the held-out rows of a source.

    The held-out rows come from, in this order of precedence:

    1. `eval_split`, a named split of the source (a `DatasetDict`, a Hub dataset, a directory
       with `validation.*` files); `num_eval_samples` keeps its first N rows.
    2. `num_eval_samples`: exactly that many rows held out of train (a seeded random sample;
       the first N rows of a stream, which the training stream then skips).
    3. `validation_split_percentage` of train, seeded with `seed` (`Dataset.train_test_split`):
       at least one row when the percentage is positive and train has two rows or more, and
       at least one row always left to train on; 0 means no held-out set. A stream has no
       length, so it needs `eval_split` or `num_eval_samples` instead (or 0).

    `num_samples` is applied to train before the held-out rows are carved from it.

    Returns:
        `(train, eval)`; `eval` is `None` when nothing is held out.

    Raises:
        ConfigError: a percentage outside `[0, 100)`, or a percentage asked of a stream.
        DataError: as `load_source`, for either split.
    """
    if not 0 <= validation_split_percentage < 100:
        raise ConfigError(
            f"data.validation_split_percentage must be in [0, 100), got {validation_split_percentage!r}; "
            "use e.g. 5 to hold out 5% of the rows, or 0 for none"
        )
    if num_eval_samples is not None and not _positive_int(num_eval_samples):
        raise ConfigError(f"data.num_eval_samples must be a positive integer, got {num_eval_samples!r}")
    common = {"subset": subset, "revision": revision, "streaming": streaming, "data_files": data_files}
    train = load_source(source, split=split, num_samples=num_samples, **common)
    if eval_split is not None:
        if eval_split == split:
            raise ConfigError(
                f"data.eval_split {eval_split!r} is also data.split; name another split, or leave "
                "eval_split unset to hold out validation_split_percentage of train"
            )
        try:
            held_out = load_source(source, split=eval_split, num_samples=num_eval_samples, **common)
        except DataError as error:
            raise DataError(str(error).replace("data.split", "data.eval_split")) from None
        return train, held_out

    if isinstance(train, datasets.IterableDataset):
        if num_eval_samples is not None:
            return train.skip(num_eval_samples), train.take(num_eval_samples)
        if validation_split_percentage:
            raise ConfigError(
                f"data.validation_split_percentage={validation_split_percentage} can't be carved from a stream "
                "(its length is unknown); set data.eval_split (e.g. 'validation'), data.num_eval_samples, "
                "or data.validation_split_percentage: 0"
            )
        return train, None

    n_rows = len(train)
    if num_eval_samples is not None:
        n_eval = num_eval_samples
    elif validation_split_percentage:
        n_eval = max(round(n_rows * validation_split_percentage / 100), 1)
    else:
        return train, None
    n_eval = min(n_eval, n_rows - 1)
    if n_eval < 1:
        return train, None  # a single row: it has to train
    parts = train.train_test_split(test_size=n_eval, shuffle=True, seed=seed)
    return parts["train"], parts["test"]


def check_text_field(dataset: Any, field: str | Sequence[str]) -> list[str]:
    """Check that `dataset` has the text column(s) `field`, holding text.

    Args:
        dataset: A `Dataset` or `IterableDataset` (a stream without known features is peeked at).
        field: A column name, or several (pretraining joins them).

    Returns:
        The field names, as a list.

    Raises:
        DataError: a field is not a column (the message lists the columns and the closest name),
            or a column holds something other than text.
    """
    fields = [field] if isinstance(field, str) else list(field)
    if isinstance(dataset, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        raise DataError(
            f"the dataset is a {type(dataset).__name__} with splits {list(dataset)}; pass one split, "
            f"e.g. dataset[{next(iter(dataset), 'train')!r}]"
        )
    columns, features = dataset_columns(dataset)
    for name in fields:
        if name not in columns:
            raise DataError(
                f"data.text_field {name!r} not in columns {columns}{did_you_mean(name, columns)}; set data.text_field"
            )
        feature = features.get(name) if features else None
        if feature is None or (isinstance(feature, datasets.Value) and feature.dtype in _TEXT_DTYPES):
            continue
        if isinstance(feature, datasets.Value):
            kind = feature.dtype
        else:
            kind = (
                "list" if isinstance(feature, (list, datasets.Sequence, datasets.List, datasets.LargeList)) else "dict"
            )
        raise DataError(
            f"data.text_field {name!r} holds {kind} values, not text; point data.text_field at a text column"
        )
    return fields


@contextlib.contextmanager
def quiet_progress(quiet: bool = True) -> Iterator[None]:
    """Switch `datasets`' progress bars off inside the block (when `quiet`), as they were after it."""
    was_disabled = datasets.utils.are_progress_bars_disabled()
    if quiet and not was_disabled:
        datasets.utils.disable_progress_bars()
    try:
        yield
    finally:
        if quiet and not was_disabled:
            datasets.utils.enable_progress_bars()


def dataset_columns(dataset: AnyDataset) -> tuple[list[str], datasets.Features | None]:
    """Column names and features; a stream that does not know them yet is peeked at (one row)."""
    if dataset.column_names is not None:
        return list(dataset.column_names), dataset.features
    first = next(iter(dataset.take(1)), None)
    return (list(first) if first else []), None


# ---- sources ---------------------------------------------------------------------------------


def _load(
    source: Any, *, subset: str | None, split: str, revision: str | None, data_files: Any, streaming: bool
) -> AnyDataset:
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if isinstance(source, (list, tuple)):
        _local_only(source, subset, data_files)
        return _load_files([os.fspath(f) for f in source], source, split=split, streaming=streaming)
    if source is None or isinstance(source, (datasets.Dataset, datasets.IterableDataset)):
        _single_split(source, split)
        if source is None:
            return datasets.Dataset.from_dict({"text": default_corpus()}, features=_TEXT_FEATURES)
        return source
    if isinstance(source, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        return _pick_split(source, split, f"the {type(source).__name__}")
    if not isinstance(source, str):
        raise ConfigError(
            f"data.source must be a path, a list of paths, a Hub dataset name or a datasets.Dataset, "
            f"got {type(source).__name__}"
        )
    if _looks_like_path(source):
        _local_only(source, subset, data_files)
        path = Path(source).expanduser()
        if path.is_dir():
            return _load_directory(path, source, split=split, data_files=data_files, streaming=streaming)
        files = sorted(glob.glob(str(path))) if _is_glob(source) else [str(path)]
        return _load_files(files, source, split=split, streaming=streaming)
    return _load_hub(source, subset, split=split, revision=revision, data_files=data_files, streaming=streaming)


def _load_files(files: list[str], source: Any, *, split: str, streaming: bool) -> AnyDataset:
    found = [f for f in files if Path(f).expanduser().is_file()]
    if not found or len(found) < len(files):
        missing = next((f for f in files if f not in found), source)
        what = "not found (no file matches the glob)" if _is_glob(str(missing)) else "not found"
        raise DataError(f"data.source {str(missing)!r} {what}; check the path")
    _single_split(source, split)
    suffixes = {Path(f).suffix.lower() for f in found}
    if len(suffixes) > 1 or not suffixes <= set(_SUFFIXES):
        raise DataError(
            f"data.source {_show(source)} has files of type {', '.join(sorted(suffixes))}; "
            f"use files of one type among {', '.join(_SUFFIXES)}"
        )
    (suffix,) = suffixes
    named = {str(Path(f).expanduser().resolve()): f for f in found}  # as given, for messages
    _check_files(named, suffix)
    with quiet_progress(sum(os.path.getsize(f) for f in named) < _QUIET_BYTES), _read_errors(named, suffix, source):
        if suffix == ".txt":
            return _load_txt(list(named), streaming=streaming)
        return datasets.load_dataset(_BUILDERS[suffix], data_files=list(named), split="train", streaming=streaming)


def _load_directory(path: Path, source: str, *, split: str, data_files: Any, streaming: bool) -> AnyDataset:
    if (path / "dataset_dict.json").exists() or (path / "dataset_info.json").exists():
        dataset = datasets.load_from_disk(str(path))
        if isinstance(dataset, datasets.DatasetDict):
            return _pick_split(dataset, split, f"data.source {source!r}")
        _single_split(source, split)
        return dataset
    named: dict[str, str] = {}
    if data_files is None:
        data = [p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in _SUFFIXES and not _hidden(p, path)]
        named = {str(p.resolve()): str(p) for p in sorted(data)}
        suffixes = {p.suffix.lower() for p in data}
        if len(suffixes) == 1:
            _check_files(named, suffixes.pop())
        if data and all(p.suffix.lower() == ".txt" for p in data):
            _single_split(source, split)
            with (
                quiet_progress(sum(p.stat().st_size for p in data) < _QUIET_BYTES),
                _read_errors(named, ".txt", source),
            ):
                return _load_txt(list(named), streaming=streaming)
    try:
        with _read_errors(named, "", source):
            return datasets.load_dataset(str(path), split=split, data_files=data_files, streaming=streaming)
    except (EmptyDatasetError, DataFilesNotFoundError):
        held = sorted(p.name for p in path.iterdir() if not p.name.startswith("."))
        holds = f" (it holds {', '.join(held[:3])}{', ...' if len(held) > 3 else ''})" if held else " (it is empty)"
        raise DataError(
            f"data.source {source!r} is a directory without data files{holds}; point it at a save_to_disk "
            "directory or at .txt/.json/.jsonl/.csv/.parquet files"
        ) from None
    except ValueError as error:
        _raise_unknown_split(error, source, split)
        raise


def _load_hub(
    source: str, subset: str | None, *, split: str, revision: str | None, data_files: Any, streaming: bool
) -> AnyDataset:
    extra = {"data_files": data_files} if data_files is not None else {}
    try:
        return datasets.load_dataset(source, subset, split=split, revision=revision, streaming=streaming, **extra)
    except (DatasetNotFoundError, ConnectionError) as error:
        reason = " ".join(str(error).split())
        raise DataError(
            f"data.source {source!r} is neither a local path nor a Hub dataset that can be reached "
            f"({reason}); check the name, or give the path of a file"
        ) from error
    except ValueError as error:
        _raise_unknown_split(error, source, split)
        raise


def _load_txt(files: list[str], *, streaming: bool) -> AnyDataset:
    """`.txt` files as documents (`split_paragraphs`), written to the `datasets` cache once."""
    if streaming:
        return datasets.IterableDataset.from_generator(
            _txt_documents, features=_TEXT_FEATURES, gen_kwargs={"files": files}
        )
    # The cache key names the files' contents by size and modification time, so an edited file
    # is read again; datasets would otherwise key it by the generator and the paths only.
    stamps = [(f, os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in files]
    fingerprint = Hasher.hash(("trainformers-txt", _TXT_FORMAT_VERSION, DEFAULT_DOCUMENT_CHARS, stamps))
    try:
        return datasets.Dataset.from_generator(
            _txt_documents, features=_TEXT_FEATURES, gen_kwargs={"files": files}, fingerprint=fingerprint
        )
    except ValueError as error:  # 'Instruction "train" corresponds to no data!': blank files
        if "corresponds to no data" not in str(error):
            raise
        return datasets.Dataset.from_dict({"text": []}, features=_TEXT_FEATURES)


def _txt_documents(files: list[str]) -> Iterator[dict[str, str]]:
    for file in files:
        with open(file, encoding="utf-8") as lines:  # line by line: a paragraph is held, not the file
            for document in documents_from_lines(lines):
                yield {"text": document}


# ---- unreadable files ------------------------------------------------------------------------

_FIXES = {
    ".json": "write one JSON object per line (.jsonl) or a JSON array of objects (.json)",
    ".jsonl": "write one JSON object per line",
    ".csv": "check its quoting, and that every row has as many fields as the header",
    ".parquet": "give a Parquet file (e.g. written by Dataset.to_parquet or pandas.DataFrame.to_parquet)",
    ".txt": "check the file",
    "": "check the files, or name them in data.source",
}
_CHUNK = 1 << 24


def _check_files(named: dict[str, str], suffix: str) -> None:
    """Refuse empty files, and JSON that is not UTF-8 (pyarrow's reader would take it and fail on each row later).

    Other text (csv, txt) is decoded as it loads; `_read_errors` names the file and line when that fails.
    """
    for path, given in named.items():
        if suffix != ".txt" and os.path.getsize(path) == 0:
            raise DataError(f"data.source file {given!r} is empty (0 bytes); fill it, or leave it out of data.source")
        if suffix in (".json", ".jsonl"):
            _check_utf8(path, given)


def _check_utf8(path: str, given: str) -> None:
    decoder = codecs.getincrementaldecoder("utf-8")()
    lines = 0
    with open(path, "rb") as file:  # in chunks: a corpus is not held in memory
        while chunk := file.read(_CHUNK):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as error:
                raise DataError(
                    f"data.source file {given!r} {not_utf8(error.object, error.start, lines)}; save it as UTF-8 "
                    "(a Latin-1 file: iconv -f latin1 -t utf-8), or point data.source at text data"
                ) from None
            lines += chunk.count(b"\n")


class _Messages(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def _read_errors(named: dict[str, str], suffix: str, source: Any) -> Iterator[None]:
    """What datasets, pyarrow or pandas raise for a file they can't parse, as one `DataError` naming the file.

    The packaged builders log which file failed ("Failed to read file '...'") before raising; that log
    is kept off stderr (the one-line error says it) and read to name the file.
    """
    logger, handler = logging.getLogger("datasets.packaged_modules"), _Messages()
    logger.addHandler(handler)
    propagate, logger.propagate = logger.propagate, False
    try:
        yield
    except (DatasetGenerationError, pa.ArrowException, StopIteration, UnicodeDecodeError) as error:
        raise _unreadable(error, named, suffix, source, handler.messages) from None
    except ValueError as error:
        if "corresponds to no data" not in str(error):  # 'Instruction "train" corresponds to no data!'
            raise
        raise DataError(
            f"data.source {_show(source)} has no rows (only blank lines); add rows or check the path"
        ) from None
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def _unreadable(error: BaseException, named: dict[str, str], suffix: str, source: Any, logged: list[str]) -> DataError:
    cause = error.__cause__ if isinstance(error, DatasetGenerationError) and error.__cause__ else error
    if isinstance(cause, UnicodeDecodeError) or isinstance(cause.__context__, UnicodeDecodeError):
        for path, given in named.items():
            _check_utf8(path, given)  # raises, naming the file and line
    failed = [m.group(1) for m in (re.search(r"'([^']+)'", message) for message in logged) if m]
    path = next((p for p in failed if p in named), next(iter(named)) if len(named) == 1 else None)
    where = f"file {named[path]!r}" if path else _show(source)
    kind = Path(path).suffix.lower() if path else suffix
    if path and kind in (".json", ".jsonl"):
        problem = _json_problem(path)
        if problem:
            return DataError(f"data.source {where} is not valid JSON: {problem}; fix it ({_FIXES[kind]})")
    reason = " ".join(str(cause).split())[:300] or type(cause).__name__
    return DataError(f"data.source {where} cannot be read ({reason}); {_FIXES.get(kind, _FIXES[''])}")


def _json_problem(path: str) -> str | None:
    """Where a JSON Lines file stops parsing (or, when not even its first value is a line, the one JSON
    document a .json file holds); None when it parses."""
    lines_parse = False
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                json.loads(line.rstrip("\r\n"))  # so an error's column is on this line, not after it
            except json.JSONDecodeError as error:
                if lines_parse or os.path.getsize(path) > _CHUNK:
                    return f"line {number}, column {error.colno}: {error.msg}"
                break  # one document over many lines (a pretty-printed .json array)
            lines_parse = True
        else:
            return None
    try:
        with open(path, encoding="utf-8") as document:
            json.load(document)
    except json.JSONDecodeError as error:
        return f"line {error.lineno}, column {error.colno}: {error.msg}"
    return None


# ---- checks ----------------------------------------------------------------------------------


def _pick_split(dataset: Any, split: str, what: str) -> AnyDataset:
    if split not in dataset:
        raise DataError(
            f"data.split {split!r} is not in {what}; available splits: {', '.join(dataset)}"
            f"{did_you_mean(split, dataset)}"
        )
    return dataset[split]


def _single_split(source: Any, split: str) -> None:
    if split != "train":
        raise DataError(
            f"data.split {split!r} is not in data.source {_show(source)}, which has a single split "
            "('train'); use a source with named splits (a DatasetDict, a Hub dataset, a directory with "
            "train/validation files), or hold out data.validation_split_percentage of train"
        )


def _local_only(source: Any, subset: str | None, data_files: Any) -> None:
    if subset is not None:
        raise ConfigError(
            f"data.subset {subset!r} only applies to Hub datasets, and data.source {_show(source)} is a "
            "local path; remove data.subset"
        )
    if data_files is not None and not (isinstance(source, str) and Path(source).expanduser().is_dir()):
        raise ConfigError(
            f"data_files only applies to a directory or a Hub/builder name, and data.source {_show(source)} "
            "names files; list the files in data.source instead"
        )


def _raise_unknown_split(error: ValueError, source: str, split: str) -> None:
    # load_dataset: 'Unknown split "x". Should be one of ['train', 'test'].'
    message = str(error)
    if message.startswith("Unknown split") or "Bad split" in message:
        raise DataError(
            f"data.split {split!r} is not a split of data.source {source!r} ({' '.join(message.split())})"
        ) from error


def _show(source: Any) -> str:
    if isinstance(source, (list, tuple)):
        return repr(list(source)) if len(source) <= 3 else f"[{source[0]!r}, ... ({len(source)} files)]"
    if source is None:
        return "None (the embedded corpus)"
    return repr(source) if isinstance(source, str) else f"(a {type(source).__name__})"


def _looks_like_path(source: str) -> bool:
    # A Hub name is "name" or "owner/name": it never has a file suffix, glob characters, or a
    # leading "/", "." or "~", and it is not a path that exists here.
    return (
        source.lower().endswith(_SUFFIXES)
        or source.startswith(("/", ".", "~"))
        or _is_glob(source)
        or Path(source).exists()
    )


def _is_glob(source: str) -> bool:
    return any(c in source for c in "*?[")


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith((".", "_")) for part in path.relative_to(root).parts)


def load_texts(
    source: str | os.PathLike | None,
    *,
    text_field: str = "text",
    split: str = "train",
    subset: str | None = None,
    num_samples: int | None = None,
) -> list[str]:
    """Load the documents of a data source as a list of strings.

    `load_source` reads the source (see it for every kind of source: `None` for the
    embedded corpus, local files, a glob, a `save_to_disk` directory, a Hub name); this keeps
    the non-empty strings of its `text_field` column. For data larger than memory, use
    `load_source` and `pretraining.tokenize_for_pretraining` instead.

    Args:
        source: The data source.
        text_field: The column that holds the text.
        split: The split to read, for saved `DatasetDict`s and Hub datasets.
        subset: The Hub dataset's configuration name, if it has several.
        num_samples: Keep only the first N records of the source (before empty texts are
            dropped); `None` keeps all.

    Returns:
        The non-empty texts, in source order.

    Raises:
        DataError: the source does not exist, lacks `text_field` or `split`, or has no text.
        ConfigError: `num_samples` is not a positive integer, or `subset` is given with a
            local source.
    """
    dataset = load_source(source, subset=subset, split=split, num_samples=num_samples)
    check_text_field(dataset, text_field)
    texts = []
    for value in dataset[text_field]:
        if value is None:
            continue
        if not isinstance(value, str):  # a column of mixed or untyped values
            raise DataError(
                f"data.text_field {text_field!r} holds {type(value).__name__} values, not text; "
                "point data.text_field at a text column"
            )
        if value.strip():
            texts.append(value)
    if not texts:
        raise DataError(
            f"data.source {os.fspath(source) if source is not None else None!r} has no non-empty texts; "
            "check the file or data.text_field"
        )
    return texts
