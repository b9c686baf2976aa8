"""Instruction and chat rows → `input_ids` + `labels`, with the loss only on assistant tokens.

A row in any of `FORMATS` becomes role/content messages (`to_messages`), is rendered to text by a
chat template (one named in `chat_templates.CHAT_TEMPLATES`, the tokenizer's, or
`DEFAULT_CHAT_TEMPLATE`), tokenised once with character offsets, and labelled: a token trains iff
it overlaps an assistant answer (its end marker included). Rows with nothing to learn are skipped
and counted in `DataStats`, never trained on.
"""

from __future__ import annotations

import functools
import logging
import string
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import datasets
import jinja2
import numpy as np
import pyarrow.compute as pc
from transformers.utils.chat_template_utils import render_jinja_template

from trainformers.config import INSTRUCTION_FORMATS as FORMATS
from trainformers.data.chat_templates import end_of_turn_tokens, is_jinja, named_template, resolve_chat_template
from trainformers.data.stats import DataStats
from trainformers.errors import ConfigError, DataError, did_you_mean
from trainformers.losses import IGNORE_INDEX

__all__ = [
    "DEFAULT_CHAT_TEMPLATE",
    "FORMATS",
    "IGNORE_INDEX",
    "detect_format",
    "encode_chat",
    "render_chat",
    "setup_chat_template",
    "stop_token_ids",
    "to_messages",
    "tokenize_for_instruction",
]

logger = logging.getLogger(__name__)


# What auto-detection looks for, in this order: each group is "any of these columns".
_SIGNATURES: dict[str, tuple[tuple[str, ...], ...]] = {
    "messages": (("messages",),),
    "conversations": (("conversations",),),
    "prompt_response": (("prompt",), ("response", "completion")),
    "alpaca": (("instruction",), ("output",)),
}
# ShareGPT speaker names (and the OpenAI ones, which some ShareGPT dumps use).
_ROLE_ALIASES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "tool": "tool",
}

# Plain-text role markers, so it works with any tokenizer; the EOS token ends each answer (the
# model must learn to stop). Turns are separated by a newline *before* each marker, so an
# assistant span is exactly "answer<eos>". `render_chat` shows a rendered conversation.
# (transformers compiles templates with trim_blocks/lstrip_blocks: newlines are written as '\n'.)
DEFAULT_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if not loop.first %}{{ '\\n' }}{% endif -%}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] }}"
    "{%- if message['role'] == 'assistant' %}{{ eos_token }}{% endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{%- if messages %}{{ '\\n' }}{% endif -%}"
    "{{ '<|assistant|>\\n' }}"
    "{%- endif -%}"
)

# Temporary per-row columns of the map, used to count and filter, then dropped.
_SKIP, _TRUNCATED = "_chat_skip", "_chat_truncated"
# Skip reason ("" = kept) → the DataStats counter it adds to.
_SKIP_COUNTERS = {"empty": "skipped_empty", "no_assistant": "no_assistant", "all_masked": "all_masked"}
_FEATURES = datasets.Features(
    {
        "input_ids": datasets.List(datasets.Value("int64")),
        "labels": datasets.List(datasets.Value("int64")),
        _SKIP: datasets.Value("string"),
        _TRUNCATED: datasets.Value("bool"),
    }
)


# --- formats ------------------------------------------------------------------------------


def detect_format(column_names: Iterable[str]) -> str:
    """Name the instruction format that a dataset's columns match.

    Looked for in order: `messages`, `conversations`, `prompt` + `response`|`completion`
    (prompt_response), `instruction` + `output` (alpaca). The template format is never detected:
    it needs `template` and `response_field`.

    Args:
        column_names: The dataset's columns (or one row's keys).

    Returns:
        One of `FORMATS`.

    Raises:
        DataError: no format matches; the message names the columns present.
    """
    columns = list(column_names)
    for fmt in _SIGNATURES:
        if _has_columns(fmt, columns):
            return fmt
    looked_for = ", ".join(f"{fmt} ({_describe(fmt)})" for fmt in _SIGNATURES)
    raise DataError(
        f"cannot detect the instruction format from the columns {columns}; looked for {looked_for}; "
        "rename the columns or set data.format='template' with data.template and data.response_field"
    )


def to_messages(
    row: Mapping[str, Any],
    fmt: str,
    *,
    template: str | None = None,
    response_field: str | None = None,
    system_prompt: str | None = None,
) -> list[dict[str, str]]:
    """Normalise one row to a list of `{"role", "content"}` messages.

    Args:
        row: The row, column name → value.
        fmt: One of `FORMATS`, or "auto" to detect it from the row's keys.
        template: For "template": the user turn as a format string over the row, e.g.
            "Question: {question}\\nContext: {context}".
        response_field: For "template": the column holding the assistant's answer.
        system_prompt: A system message put first when the row has none.

    Returns:
        The messages; an empty list when the row is empty (a turn's content is null or blank).

    Raises:
        ConfigError: `fmt` is unknown, or "template" lacks `template`/`response_field`.
        DataError: a turn has an unknown role or non-text content, or a template field is missing.
    """
    fmt = _check_format(detect_format(row) if fmt == "auto" else fmt)
    if fmt in ("messages", "conversations"):
        messages = _turns(row[fmt])
    elif fmt == "prompt_response":
        response = row["response"] if "response" in row else row["completion"]
        messages = _turns(row["prompt"], "user") + _turns(response, "assistant")
    elif fmt == "alpaca":
        user, extra = row["instruction"], row.get("input")
        if isinstance(user, str) and isinstance(extra, str) and extra.strip():
            user = f"{user}\n\n{extra}"
        messages = [{"role": "user", "content": user}, {"role": "assistant", "content": row["output"]}]
    else:
        messages = _template_turns(row, template, response_field)
    if not messages or any(_blank(m["content"]) for m in messages):
        return []
    if system_prompt and not any(m["role"] == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": system_prompt})
    return messages


def _has_columns(fmt: str, columns: Sequence[str]) -> bool:
    return all(any(c in columns for c in group) for group in _SIGNATURES[fmt])


def _describe(fmt: str) -> str:
    return " + ".join("|".join(group) for group in _SIGNATURES[fmt])


def _check_format(fmt: str, *, allow_auto: bool = False) -> str:
    choices = (("auto",) if allow_auto else ()) + FORMATS
    if fmt not in choices:
        raise ConfigError(
            f"data.format {fmt!r} is not a known instruction format{did_you_mean(fmt, choices)}; "
            f"use one of: {', '.join(choices)}"
        )
    return fmt


def _blank(content: Any) -> bool:
    return content is None or (isinstance(content, str) and not content.strip())


def _turns(value: Any, role: str | None = None) -> list[dict[str, str]]:
    """A string becomes one `role` turn; a list of OpenAI or ShareGPT turns is normalised."""
    if role is not None and (value is None or isinstance(value, str)):
        return [{"role": role, "content": value}]
    if value is None:
        return []
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise DataError(
            f"expected a list of turns ({{role, content}} or {{from, value}}), got {type(value).__name__}; "
            "decode JSON-encoded conversations before training"
        )
    return [_turn(turn) for turn in value]


def _turn(turn: Mapping[str, Any]) -> dict[str, str]:
    # A struct column holds every key of every row: the unused pair is present but None.
    raw_role = turn.get("role") if turn.get("role") is not None else turn.get("from")
    content = turn.get("content") if turn.get("role") is not None else turn.get("value")
    role = _ROLE_ALIASES.get(str(raw_role).lower()) if raw_role is not None else None
    if role is None:
        raise DataError(
            f"turn role {raw_role!r} is not one of {sorted(_ROLE_ALIASES)}; "
            "map it to system/user/assistant/tool before training"
        )
    if content is not None and not isinstance(content, str):
        raise DataError(
            f"a {role} turn has content of type {type(content).__name__}, not text; "
            "flatten multi-part content to a string before training"
        )
    return {"role": role, "content": content}


def _template_turns(row: Mapping[str, Any], template: str | None, response_field: str | None) -> list[dict]:
    _check_template(template, response_field, list(row))
    if any(row[f] is None for f in _template_fields(template)):
        return []  # a null field would render as "None"
    return [
        {"role": "user", "content": template.format(**row)},
        {"role": "assistant", "content": row[response_field]},
    ]


def _check_template(template: str | None, response_field: str | None, columns: list[str]) -> None:
    if not template or not response_field:
        raise ConfigError("data.format='template' needs data.template (e.g. 'Q: {question}') and data.response_field")
    missing = sorted(f for f in _template_fields(template) | {response_field} if f not in columns)
    if missing:
        raise DataError(
            f"data.template/data.response_field name the columns {missing} that the rows lack; "
            f"the columns are {columns}"
        )


@functools.lru_cache(maxsize=16)
def _template_fields(template: str) -> frozenset[str]:
    """The columns a format string reads: "{a.b}" and "{a[0]}" both read column "a"."""
    names = (field for _, field, _, _ in string.Formatter().parse(template) if field)
    return frozenset(name.split(".")[0].split("[")[0] for name in names)


# --- rendering and labels -----------------------------------------------------------------


def render_chat(
    messages: Sequence[Mapping[str, str]],
    tokenizer,
    *,
    chat_template: str | None = None,
    add_generation_prompt: bool = False,
) -> str:
    """Render messages to text with `chat_template`, else the tokenizer's, else the default.

    With `DEFAULT_CHAT_TEMPLATE` and a tokenizer whose EOS is `<|eos|>`, the conversation
    system "Be brief." / user "Hi" / assistant "Hello!" renders as::

        <|system|>
        Be brief.
        <|user|>
        Hi
        <|assistant|>
        Hello!<|eos|>

    with no newline at the end; `add_generation_prompt=True` appends "\\n<|assistant|>\\n".

    Args:
        messages: `{"role", "content"}` dicts.
        tokenizer: A `transformers` tokenizer (its special tokens fill the template).
        chat_template: A template name (`CHAT_TEMPLATES`) or a Jinja template, overriding the tokenizer's.
        add_generation_prompt: End with the header of a new assistant turn.

    Returns:
        The rendered text.

    Raises:
        DataError: the template fails on this conversation.
    """
    template = _template_for(tokenizer, chat_template)
    try:
        if messages:
            return tokenizer.apply_chat_template(
                list(messages), chat_template=template, add_generation_prompt=add_generation_prompt, tokenize=False
            )
        # transformers refuses an empty conversation, but the header before an opening assistant
        # turn is exactly that rendering.
        rendered, _ = render_jinja_template(
            conversations=[[]],
            chat_template=tokenizer.get_chat_template(template),
            add_generation_prompt=add_generation_prompt,
            **tokenizer.special_tokens_map,
        )
        return rendered[0]
    except jinja2.TemplateError as err:
        roles = [m["role"] for m in messages]
        message = " ".join(str(err).split())
        raise DataError(
            f"the chat template failed on a conversation with roles {roles}: {message}; "
            "fix the rows or pass another data.chat_template"
        ) from err


def encode_chat(
    messages: Sequence[Mapping[str, str]],
    tokenizer,
    *,
    chat_template: str | None = None,
    train_on_prompt: bool = False,
) -> tuple[list[int], list[int]]:
    """Tokenise one conversation; labels are its ids on assistant tokens and -100 elsewhere.

    Assistant turn k spans the characters `[len(render(messages[:k], add_generation_prompt=True)),
    len(render(messages[:k + 1])))` of the full rendering: the answer and whatever the template
    puts after it (EOS, end-of-turn marker). A token is labelled when its characters overlap a
    span. The text is tokenised without added special tokens: the template decides them.

    Args:
        messages: `{"role", "content"}` dicts.
        tokenizer: A fast `transformers` tokenizer (character offsets are needed).
        chat_template: A template name (`CHAT_TEMPLATES`) or a Jinja template, overriding the tokenizer's.
        train_on_prompt: Label every token (labels == input_ids).

    Returns:
        `(input_ids, labels)`, not truncated.

    Raises:
        DataError: the template is not prefix-consistent or fails on the conversation.
    """
    text, spans = _render_with_spans(messages, tokenizer, chat_template, train_on_prompt)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    return _label(encoded["input_ids"], encoded["offset_mapping"], spans, train_on_prompt)


def _template_for(tokenizer, chat_template: str | None) -> str | None:
    """None lets transformers use the tokenizer's own template (it may hold several, by name)."""
    if chat_template is not None:
        return resolve_chat_template(chat_template)
    return None if tokenizer.chat_template else DEFAULT_CHAT_TEMPLATE


def setup_chat_template(tokenizer, chat_template: str | None = None) -> list[str]:
    """Make `tokenizer` carry the chat template a run trains with, and the tokens that template needs.

    `tokenizer.chat_template` becomes the template used (a name resolved to its Jinja source; None:
    the tokenizer's own, or `DEFAULT_CHAT_TEMPLATE` when it has none), so a saved tokenizer renders
    conversations as training did. A named template's markers that the tokenizer lacks (`<|im_start|>`
    for chatml, `<|eot_id|>` for llama3, ...) are added as special tokens, as TRL's
    `setup_chat_format` does: the model's embeddings must then grow to `len(tokenizer)`
    (`model.resize_token_embeddings`; `trainformers train` does it). Adding nothing twice, it can run
    again on a tokenizer it has set up (a resumed run gets the same ids).

    Args:
        tokenizer: A `transformers` tokenizer, changed in place.
        chat_template: A template name, a Jinja template, or None.

    Returns:
        The tokens added, in order (empty when the tokenizer had them all).

    Raises:
        ConfigError: an unknown template name.
    """
    template = _template_for(tokenizer, chat_template)
    if template is not None:
        tokenizer.chat_template = template
    missing = _missing_tokens(tokenizer, chat_template)
    if missing:
        tokenizer.add_special_tokens({"extra_special_tokens": missing}, replace_extra_special_tokens=False)
    return missing


def _missing_tokens(tokenizer, chat_template: str | None) -> list[str]:
    """The special tokens of a named template that are not (added) tokens of `tokenizer`."""
    family = named_template(chat_template)
    have = tokenizer.get_added_vocab()
    return [token for token in family.special_tokens if token not in have] if family else []


def stop_token_ids(model, tokenizer) -> list[int]:
    """The ids generation stops at: the model's and the tokenizer's EOS, and every named template's
    end-of-turn token the tokenizer holds (`<|im_end|>`, `<|eot_id|>`, `<end_of_turn>`, `<|end|>`)."""
    ids: list[int] = []
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    added = tokenizer.get_added_vocab()
    ends = [added[token] for token in end_of_turn_tokens() if token in added]
    for value in [*(configured if isinstance(configured, list) else [configured]), tokenizer.eos_token_id, *ends]:
        if value is not None and value not in ids:
            ids.append(value)
    return ids


def _render_with_spans(
    messages: Sequence[Mapping[str, str]], tokenizer, chat_template: str | None, train_on_prompt: bool
) -> tuple[str, list[tuple[int, int]]]:
    """The full rendering and the character span of each assistant turn (none if train_on_prompt)."""
    full = render_chat(messages, tokenizer, chat_template=chat_template)
    if train_on_prompt:
        return full, []
    spans = []
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        before = render_chat(messages[:k], tokenizer, chat_template=chat_template, add_generation_prompt=True)
        through = render_chat(messages[: k + 1], tokenizer, chat_template=chat_template)
        if not (full.startswith(before) and full.startswith(through) and len(before) < len(through)):
            raise DataError(
                f"the chat template is not prefix-consistent: rendering the conversation up to assistant "
                f"turn {k} is not a prefix of rendering all of it, so the assistant tokens cannot be "
                "located; use a template that renders past turns the same whatever follows "
                "(data.chat_template), or set data.train_on_prompt=true"
            )
        spans.append((len(before), len(through)))
    return full, spans


def _label(
    input_ids: list[int], offsets: list[tuple[int, int]], spans: list[tuple[int, int]], train_on_prompt: bool
) -> tuple[list[int], list[int]]:
    if train_on_prompt:
        return input_ids, list(input_ids)
    labels, j = [], 0
    for token, (start, end) in zip(input_ids, offsets):
        end = max(end, start + 1)  # a zero-width token counts as the character it sits on
        while j < len(spans) and spans[j][1] <= start:  # spans are sorted and disjoint
            j += 1
        inside = j < len(spans) and spans[j][0] < end
        labels.append(token if inside else IGNORE_INDEX)
    return input_ids, labels


# --- datasets -----------------------------------------------------------------------------


def tokenize_for_instruction(
    dataset: datasets.Dataset | datasets.IterableDataset,
    tokenizer,
    *,
    fmt: str = "auto",
    max_length: int,
    template: str | None = None,
    response_field: str | None = None,
    system_prompt: str | None = None,
    train_on_prompt: bool = False,
    chat_template: str | None = None,
    num_proc: int | None = None,
    name: str = "train",
) -> tuple[datasets.Dataset | datasets.IterableDataset, DataStats]:
    """Turn instruction/chat rows into `input_ids` and `labels` with the loss on assistant tokens.

    One batched `map` renders and labels every row (`encode_chat`), truncates it on the right
    to `max_length`, and marks why a row is skipped: empty (a null or blank turn), no assistant
    turn, or every label masked after truncation (nothing to learn; a zero-loss row would still
    count in the loss normalisation). Skipped rows are counted and dropped, and the stats logged.

    A `datasets.IterableDataset` (streaming) is mapped and filtered lazily: nothing is known up
    front, so the returned stats start at zero (with a note) and count rows as the stream is read
    in this process, over every pass; DataLoader workers count in their own copies. `num_proc`
    is ignored for streams.

    Args:
        dataset: Rows in one of `FORMATS`.
        tokenizer: A fast `transformers` tokenizer.
        fmt: One of `FORMATS`, or "auto" (detected from the columns; "template" when `template`
            is given).
        max_length: Longest sequence in tokens; longer ones are cut on the right.
        template: For "template": the user turn as a format string over the row.
        response_field: For "template": the column holding the assistant's answer.
        system_prompt: A system message put first in rows that have none.
        train_on_prompt: Label every token, prompt included.
        chat_template: A template name (`CHAT_TEMPLATES`: chatml, llama3, ...) or a Jinja template,
            overriding the tokenizer's (default: the tokenizer's, or `DEFAULT_CHAT_TEMPLATE` when it
            has none). A named template's special tokens must be tokens of `tokenizer`
            (`setup_chat_template` adds them).
        num_proc: Processes for `datasets.map`.
        name: The dataset's name in the stats and messages.

    Returns:
        The dataset with int64 list columns `input_ids` and `labels` only, and its `DataStats`.

    Raises:
        ConfigError: unknown `fmt`, `max_length` < 1, or a tokenizer that cannot be used.
        DataError: the columns match no format, or every row was skipped.
    """
    if not isinstance(max_length, int) or max_length < 1:
        raise ConfigError(f"data.max_length must be a positive number of tokens, got {max_length!r}; use e.g. 512")
    _check_tokenizer(tokenizer, chat_template, train_on_prompt)
    columns = _column_names(dataset)
    fmt = _resolve_format(fmt, columns, template, response_field)
    encode = functools.partial(
        _encode_batch,
        tokenizer=tokenizer,
        fmt=fmt,
        max_length=max_length,
        template=template,
        response_field=response_field,
        system_prompt=system_prompt,
        train_on_prompt=train_on_prompt,
        chat_template=chat_template,
    )
    source = _template_source(tokenizer, chat_template)
    stats = DataStats(name=name, notes=[f"format: {fmt}", f"chat template: {source}"])
    if isinstance(dataset, datasets.IterableDataset):
        return _stream(dataset, encode, stats), stats
    mapped = dataset.map(
        encode, batched=True, remove_columns=columns, features=_FEATURES, num_proc=num_proc, desc=f"chat {name}"
    )
    return _keep_and_count(mapped, stats, max_length, fmt), stats


def _check_tokenizer(tokenizer, chat_template: str | None, train_on_prompt: bool) -> None:
    if not train_on_prompt and not getattr(tokenizer, "is_fast", False):
        raise ConfigError(
            f"tokenizer {type(tokenizer).__name__} is not a fast tokenizer, so assistant tokens cannot be "
            "located by character offsets; load it with use_fast=True or set data.train_on_prompt=true"
        )
    template = _template_for(tokenizer, chat_template)
    if template is not None and "eos_token" in template and tokenizer.eos_token is None:
        raise ConfigError(
            f"tokenizer {type(tokenizer).__name__} has no eos_token, which the {_template_source(tokenizer, chat_template)} "
            "chat template puts after each answer; set tokenizer.eos_token or pass another data.chat_template"
        )
    missing = _missing_tokens(tokenizer, chat_template)
    if missing:
        raise ConfigError(
            f"data.chat_template {chat_template!r} needs the special tokens {', '.join(missing)}, which tokenizer "
            f"{type(tokenizer).__name__} lacks; add them with trainformers.data.setup_chat_template(tokenizer, "
            f"{chat_template!r}) and grow the model's embeddings to len(tokenizer) (trainformers train does both)"
        )


def _template_source(tokenizer, chat_template: str | None) -> str:
    if chat_template is not None:
        return "given" if is_jinja(chat_template) else chat_template.strip().lower()
    return "the tokenizer's" if tokenizer.chat_template else "default"


def _column_names(dataset: datasets.Dataset | datasets.IterableDataset) -> list[str]:
    if dataset.column_names is not None:
        return list(dataset.column_names)
    first = next(iter(dataset.take(1)), None)  # a stream with unknown features: peek at a row
    return list(first) if first is not None else []


def _resolve_format(fmt: str, columns: list[str], template: str | None, response_field: str | None) -> str:
    fmt = _check_format(fmt, allow_auto=True)
    if fmt == "auto":
        fmt = "template" if template else detect_format(columns)
    if fmt == "template":
        _check_template(template, response_field, columns)
    elif not _has_columns(fmt, columns):
        raise DataError(f"data.format {fmt!r} needs the columns {_describe(fmt)}, but the columns are {columns}")
    return fmt


def _encode_batch(batch: dict[str, list], *, tokenizer, fmt: str, max_length: int, **options) -> dict[str, list]:
    """The map function: one output row per input row, skipped ones marked in `_SKIP`."""
    train_on_prompt, chat_template = options.pop("train_on_prompt"), options.pop("chat_template")
    rows = [dict(zip(batch, values)) for values in zip(*batch.values())]
    out: dict[str, list] = {"input_ids": [], "labels": [], _SKIP: [], _TRUNCATED: []}
    for row in rows:
        messages = to_messages(row, fmt, **options)
        if not messages or not any(m["role"] == "assistant" for m in messages):
            out["input_ids"].append([])
            out["labels"].append([])
            out[_SKIP].append("no_assistant" if messages else "empty")
            out[_TRUNCATED].append(False)
            continue
        input_ids, labels = encode_chat(
            messages, tokenizer, chat_template=chat_template, train_on_prompt=train_on_prompt
        )
        out["input_ids"].append(input_ids[:max_length])
        out["labels"].append(labels[:max_length])
        out[_TRUNCATED].append(len(input_ids) > max_length)
        all_masked = all(label == IGNORE_INDEX for label in labels[:max_length])
        out[_SKIP].append("all_masked" if all_masked else "")
    return out


def _keep_and_count(mapped: datasets.Dataset, stats: DataStats, max_length: int, fmt: str) -> datasets.Dataset:
    table = mapped.with_format("arrow")[:]
    skip = np.asarray(table[_SKIP].to_numpy(zero_copy_only=False)).astype(str)
    keep = skip == ""
    stats.rows_in = len(mapped)
    stats.rows_out = int(keep.sum())
    for reason, counter in _SKIP_COUNTERS.items():
        setattr(stats, counter, int((skip == reason).sum()))
    stats.truncated = int((table[_TRUNCATED].to_numpy(zero_copy_only=False) & keep).sum())
    stats.tokens = int(pc.list_value_length(table["input_ids"]).to_numpy(zero_copy_only=False)[keep].sum())
    stats.log()
    if stats.rows_out == 0:
        raise DataError(
            f"{stats.name}: all {stats.rows_in} rows were skipped ({stats.skipped_empty} empty/null, "
            f"{stats.no_assistant} without an assistant turn, {stats.all_masked} with every label masked "
            f"after truncating to max_length={max_length}); check data.format (used {fmt!r}) and the "
            "rows, or raise data.max_length"
        )
    if stats.rows_out < stats.rows_in:
        mapped = mapped.select(np.flatnonzero(keep))
    return mapped.remove_columns([_SKIP, _TRUNCATED])


def _stream(dataset: datasets.IterableDataset, encode, stats: DataStats) -> datasets.IterableDataset:
    stats.notes.append("streaming: counts grow as the stream is read, nothing is known up front")
    mapped = dataset.map(encode, batched=True, remove_columns=dataset.column_names)
    return mapped.filter(functools.partial(_count_batch, stats=stats), batched=True).select_columns(
        ["input_ids", "labels"]
    )


def _count_batch(batch: dict[str, list], stats: DataStats) -> list[bool]:
    """Streaming filter: count the batch into `stats`, warn on the first skip of each kind."""
    keep = [reason == "" for reason in batch[_SKIP]]
    stats.rows_in += len(keep)
    stats.rows_out += sum(keep)
    stats.truncated += sum(t and k for t, k in zip(batch[_TRUNCATED], keep))
    stats.tokens += sum(len(ids) for ids, k in zip(batch["input_ids"], keep) if k)
    first_skips = []
    for reason, counter in _SKIP_COUNTERS.items():
        n, before = batch[_SKIP].count(reason), getattr(stats, counter)
        setattr(stats, counter, before + n)
        if n and before == 0:
            first_skips.append(reason)
    if first_skips:
        skipped = ", ".join(first_skips)
        logger.warning("%s: first rows skipped (%s); so far %s", stats.name, skipped, stats.summary())
    return keep
