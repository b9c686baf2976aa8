"""The embedded default corpus, and text as a plain list of documents.

`default_corpus` and `split_paragraphs` make documents out of raw text; `documents_from_lines`
does the same for a file read line by line (`sources.py` reads `.txt` files with it, and its
`load_texts` gives any source as a `list[str]`). `split_texts` holds out a seeded part of such a
list: the in-memory path of small runs.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Iterator

from trainformers.errors import ConfigError

__all__ = ["default_corpus", "documents_from_lines", "split_paragraphs", "split_texts"]

# Documents of about this many characters give the default corpus several hundred documents.
DEFAULT_DOCUMENT_CHARS = 2000

_BLANK_LINE = re.compile(r"\n[ \t]*\n")


def split_paragraphs(text: str, max_chars: int = DEFAULT_DOCUMENT_CHARS) -> list[str]:
    """Split text on blank lines and group consecutive paragraphs into documents.

    Paragraphs are added to the current document until it would exceed `max_chars`; a single
    paragraph longer than that becomes a document on its own (it is never cut). Trailing
    whitespace and blank lines are removed, but a paragraph's leading indentation is kept
    because in code samples it is content.

    Args:
        text: The text to split.
        max_chars: Soft upper bound on a document's length in characters.

    Returns:
        The non-empty documents, in order; paragraphs inside one are joined by a blank line.
    """
    return list(_group_paragraphs(_BLANK_LINE.split(text), max_chars))


def documents_from_lines(lines: Iterable[str], max_chars: int = DEFAULT_DOCUMENT_CHARS) -> Iterator[str]:
    """`split_paragraphs` of the lines joined, yielded as they are read.

    For a text file iterated line by line (`sources.py` reads `.txt` files so): it holds the
    current paragraph, not the file, so memory does not grow with the file
    (`bench/scaling.py`: the whole file and its list of documents were held before).
    """
    return _group_paragraphs(_blank_line_pieces(lines), max_chars)


def _blank_line_pieces(lines: Iterable[str]) -> Iterator[str]:
    """`_BLANK_LINE.split("".join(lines))`, without joining all the lines.

    A match ends only at the end of a blank line (spaces or tabs, then a newline), so the lines
    held so far are split there; what follows the last match is held on, as `re.split` would
    resume there. Matches found in a prefix are those of the whole text: one running past the
    prefix's end has only spaces and tabs after its newline, so no other match can start there.
    """
    held: list[str] = []
    for line in lines:
        held.append(line)
        if line.endswith("\n") and not line[:-1].strip(" \t"):
            pieces = _BLANK_LINE.split("".join(held))
            held = [pieces.pop()]
            yield from pieces
    yield from _BLANK_LINE.split("".join(held))


def _group_paragraphs(pieces: Iterable[str], max_chars: int) -> Iterator[str]:
    current: list[str] = []
    size = 0
    for raw in pieces:
        paragraph = raw.rstrip().lstrip("\n")
        if not paragraph.strip():
            continue
        if current and size + 2 + len(paragraph) > max_chars:
            yield "\n\n".join(current)
            current, size = [], 0
        size += (2 if current else 0) + len(paragraph)
        current.append(paragraph)
    if current:
        yield "\n\n".join(current)


def default_corpus() -> list[str]:
    """Return the corpus of the embedded default run: Python's own help topics.

    `pydoc_data.topics` ships with every CPython (about 0.5 MB of English prose and code).
    Topics are read in sorted-key order and each is split with `split_paragraphs`, which gives
    several hundred documents, the same ones on every call.
    """
    from pydoc_data.topics import topics

    return [doc for key in sorted(topics) for doc in split_paragraphs(topics[key])]


def split_texts(texts: list[str], validation_split_percentage: float, seed: int) -> tuple[list[str], list[str]]:
    """Shuffle documents with `seed` and hold out a percentage of them for evaluation.

    At least one document is held out when the percentage is positive and there are two or
    more documents, and at least one is always left for training. The split is by whole
    documents, so no document is in both parts.

    Args:
        texts: The documents.
        validation_split_percentage: Share held out, in percent, in `[0, 100)`.
        seed: Seed of the shuffle; the same seed gives the same split.

    Returns:
        `(train, validation)`, both in shuffled order; `(texts, [])` when the percentage is 0.

    Raises:
        ConfigError: the percentage is outside `[0, 100)`.
    """
    if not 0 <= validation_split_percentage < 100:
        raise ConfigError(
            f"data.validation_split_percentage must be in [0, 100), got "
            f"{validation_split_percentage!r}; use e.g. 5 to hold out 5% of the documents"
        )
    if validation_split_percentage == 0 or len(texts) < 2:
        return list(texts), []
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    n_validation = round(len(texts) * validation_split_percentage / 100)
    n_validation = min(max(n_validation, 1), len(texts) - 1)
    validation = [texts[i] for i in order[:n_validation]]
    train = [texts[i] for i in order[n_validation:]]
    return train, validation
