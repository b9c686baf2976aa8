"""Chat/instruction rows → input_ids + labels: exact tensors, formats, skips and their counts.

Most tests use a byte-only tokenizer (vocab_size=259: no merges), so one ASCII character is one
token and the expected labels can be written character by character.
"""

from __future__ import annotations

import datasets
import pytest
import torch

from trainformers.data.chat import (
    DEFAULT_CHAT_TEMPLATE,
    FORMATS,
    detect_format,
    encode_chat,
    render_chat,
    to_messages,
    tokenize_for_instruction,
)
from trainformers.data.tokenizer import train_tokenizer
from trainformers.errors import ConfigError, DataError

TEXTS = ["What is 2+2? And 3+3? You are terse. The answer is four, then six."] * 20

CONVO = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4."},
    {"role": "user", "content": "And 3+3?"},
    {"role": "assistant", "content": "6."},
]
SHAREGPT = [
    {"from": "system", "value": "You are terse."},
    {"from": "human", "value": "What is 2+2?"},
    {"from": "gpt", "value": "4."},
    {"from": "human", "value": "And 3+3?"},
    {"from": "gpt", "value": "6."},
]
CHATML = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXTS, vocab_size=259)  # bytes + 3 specials: one ASCII char = one token


@pytest.fixture(scope="module")
def chatml_tok():
    tokenizer = train_tokenizer(TEXTS, vocab_size=259)
    tokenizer.add_tokens(["<|im_start|>", "<|im_end|>"], special_tokens=True)
    tokenizer.chat_template = CHATML
    return tokenizer


def expected(tokenizer, segments: list[tuple[str, bool]]) -> tuple[list[int], list[int], str]:
    """Ids and labels from (text, trained) pieces; the ids must equal tokenising the joined text."""
    ids, labels = [], []
    for text, trained in segments:
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += piece
        labels += piece if trained else [-100] * len(piece)
    text = "".join(text for text, _ in segments)
    assert ids == tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids, labels, text


def tokenize(rows: list[dict], tokenizer, **kwargs):
    kwargs.setdefault("max_length", 256)
    return tokenize_for_instruction(datasets.Dataset.from_list(rows), tokenizer, **kwargs)


def trained_tokens(tokenizer, ids, labels) -> list[str]:
    return tokenizer.convert_ids_to_tokens([i for i, label in zip(ids, labels) if label != -100])


# --- exact tensors ------------------------------------------------------------------------


def test_default_template_multi_turn_exact_labels(tok):
    segments = [
        ("<|system|>\nYou are terse.\n<|user|>\nWhat is 2+2?\n<|assistant|>\n", False),
        ("4.<|eos|>", True),
        ("\n<|user|>\nAnd 3+3?\n<|assistant|>\n", False),
        ("6.<|eos|>", True),
    ]
    ids, labels, text = expected(tok, segments)
    assert render_chat(CONVO, tok) == text
    assert render_chat(CONVO[:2], tok, add_generation_prompt=True) == segments[0][0]

    out, stats = tokenize([{"messages": CONVO}], tok)
    assert torch.equal(torch.tensor(out[0]["input_ids"]), torch.tensor(ids))
    assert torch.equal(torch.tensor(out[0]["labels"]), torch.tensor(labels))
    # Each answer and the EOS that ends it train; system and user text never does.
    assert trained_tokens(tok, ids, labels) == ["4", ".", "<|eos|>", "6", ".", "<|eos|>"]
    assert labels[len(segments[0][0]) + 2] == tok.eos_token_id
    assert (stats.rows_in, stats.rows_out, stats.tokens) == (1, 1, len(ids))
    assert "chat template: default" in stats.notes


@pytest.mark.parametrize("via", ["tokenizer", "argument"])
def test_chatml_template_exact_labels(chatml_tok, tok, via):
    segments = [
        ("<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n", False),
        ("<|im_start|>assistant\n", False),
        ("4.<|im_end|>\n", True),
        ("<|im_start|>user\nAnd 3+3?<|im_end|>\n<|im_start|>assistant\n", False),
        ("6.<|im_end|>\n", True),
    ]
    ids, labels, _ = expected(chatml_tok, segments)
    assert trained_tokens(chatml_tok, ids, labels) == ["4", ".", "<|im_end|>", "Ċ", "6", ".", "<|im_end|>", "Ċ"]
    if via == "tokenizer":
        out, _ = tokenize([{"messages": CONVO}], chatml_tok)
    else:  # an explicit template wins over the tokenizer's (here: it has none)
        plain = train_tokenizer(TEXTS, vocab_size=259)
        plain.add_tokens(["<|im_start|>", "<|im_end|>"], special_tokens=True)
        out, _ = tokenize([{"messages": CONVO}], plain, chat_template=CHATML)
    assert out[0]["input_ids"] == ids
    assert out[0]["labels"] == labels


def test_labels_follow_characters_when_bpe_merges(tok):
    merging = train_tokenizer(TEXTS + [render_chat(CONVO, tok)] * 20, vocab_size=300)
    ids, labels = encode_chat(CONVO, merging)
    assert ids == merging(render_chat(CONVO, merging), add_special_tokens=False)["input_ids"]
    assert len(ids) < len(render_chat(CONVO, merging)) - 12  # merges happened
    trained = [i for i, label in zip(ids, labels) if label != -100]
    assert merging.decode(trained) == "4.<|eos|>6.<|eos|>"


def test_train_on_prompt_labels_everything(tok):
    out, _ = tokenize([{"messages": CONVO}, {"messages": CONVO[:3]}], tok, train_on_prompt=True)
    for row in out:
        assert row["labels"] == row["input_ids"]


def test_template_that_rewrites_past_turns_is_refused(tok):
    marks_last = "{% for m in messages %}{{ m.role }}: {{ m.content }}{% if loop.last %}!{% endif %}\n{% endfor %}"
    with pytest.raises(DataError, match="not prefix-consistent"):
        encode_chat(CONVO, tok, chat_template=marks_last)
    ids, labels = encode_chat(CONVO, tok, chat_template=marks_last, train_on_prompt=True)
    assert labels == ids


# --- formats ------------------------------------------------------------------------------

ONE_TURN = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4."}]


@pytest.mark.parametrize(
    ("row", "kwargs", "messages"),
    [
        ({"conversations": SHAREGPT}, {}, CONVO),
        ({"prompt": "What is 2+2?", "response": "4."}, {}, ONE_TURN),
        ({"prompt": "What is 2+2?", "completion": "4."}, {}, ONE_TURN),
        ({"instruction": "What is 2+2?", "input": "", "output": "4."}, {}, ONE_TURN),
        (
            {"instruction": "Add.", "input": "2+2", "output": "4."},
            {},
            [{"role": "user", "content": "Add.\n\n2+2"}, {"role": "assistant", "content": "4."}],
        ),
        (
            {"question": "2+2", "context": "sums", "answer": "4."},
            {"template": "Question: {question}\nContext: {context}", "response_field": "answer"},
            [{"role": "user", "content": "Question: 2+2\nContext: sums"}, {"role": "assistant", "content": "4."}],
        ),
    ],
)
def test_formats_match_the_messages_row(tok, row, kwargs, messages):
    fmt = "template" if "template" in kwargs else detect_format(row)
    assert to_messages(row, fmt, **kwargs) == messages
    out, stats = tokenize([row], tok, **kwargs)
    reference, _ = tokenize([{"messages": messages}], tok)
    assert out.to_list() == reference.to_list()
    assert f"format: {fmt}" in stats.notes


def test_alpaca_rows_with_and_without_input_in_one_dataset(tok):
    rows = [
        {"instruction": "What is 2+2?", "input": None, "output": "4."},
        {"instruction": "Add.", "input": "2+2", "output": "4."},
    ]
    out, stats = tokenize(rows, tok)
    assert stats.rows_out == 2
    assert out[0] == tokenize([{"messages": ONE_TURN}], tok)[0][0]


def test_system_prompt_only_when_the_row_has_none():
    added = to_messages({"messages": ONE_TURN}, "messages", system_prompt="Be brief.")
    assert added == [{"role": "system", "content": "Be brief."}, *ONE_TURN]
    assert to_messages({"messages": CONVO}, "messages", system_prompt="Be brief.") == CONVO


def test_tool_turns_pass_through_and_unknown_roles_fail():
    tool = {"role": "tool", "content": '{"sum": 4}'}
    assert to_messages({"messages": [ONE_TURN[0], tool, ONE_TURN[1]]}, "auto")[1] == tool
    with pytest.raises(DataError, match="'narrator'"):
        to_messages({"messages": [{"role": "narrator", "content": "x"}]}, "messages")


def test_detect_format_order_and_failure():
    assert detect_format(["messages", "prompt", "response"]) == "messages"
    assert detect_format(["conversations", "id"]) == "conversations"
    assert detect_format(["prompt", "completion"]) == "prompt_response"
    assert detect_format(["instruction", "output"]) == "alpaca"
    with pytest.raises(DataError, match=r"columns \['text', 'label'\].*messages"):
        detect_format(["text", "label"])


def test_unknown_format_lists_the_formats(tok):
    with pytest.raises(ConfigError, match="did you mean 'messages'") as err:
        tokenize([{"messages": CONVO}], tok, fmt="mesages")
    assert all(fmt in str(err.value) for fmt in FORMATS)
    with pytest.raises(DataError, match=r"\['text'\]"):
        tokenize([{"text": "hi"}], tok)
    with pytest.raises(ConfigError, match="response_field"):
        tokenize([{"question": "q"}], tok, fmt="template", template="Q: {question}")


# --- skips, truncation, counts ------------------------------------------------------------

MAX_LENGTH = 32
GOOD = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]}  # 29 tokens
NO_ASSISTANT = {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}]}
CUT_OFF = {"messages": [{"role": "user", "content": "x" * 40}, {"role": "assistant", "content": "ok"}]}
TRUNCATED = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "A long answer"}]}
EMPTY = {"messages": [{"role": "user", "content": " "}, {"role": "assistant", "content": "x"}]}


def test_skips_are_counted_and_the_rest_kept(tok):
    out, stats = tokenize([GOOD, NO_ASSISTANT, CUT_OFF, TRUNCATED, EMPTY], tok, max_length=MAX_LENGTH)
    assert (stats.rows_in, stats.rows_out) == (5, 2)
    assert (stats.no_assistant, stats.all_masked, stats.skipped_empty, stats.truncated) == (1, 1, 1, 1)
    assert stats.tokens == 29 + MAX_LENGTH
    assert out.column_names == ["input_ids", "labels"]
    assert out[0] == tokenize([GOOD], tok)[0][0]
    prompt = "<|user|>\nHi\n<|assistant|>\n"
    ids, labels, _ = expected(tok, [(prompt, False), ("A long answer"[: MAX_LENGTH - len(prompt)], True)])
    assert (out[1]["input_ids"], out[1]["labels"]) == (ids, labels)


def test_everything_skipped_says_why(tok):
    with pytest.raises(DataError, match="all 2 rows were skipped.*1 without an assistant turn, 1 with every label"):
        tokenize([NO_ASSISTANT, CUT_OFF], tok, max_length=MAX_LENGTH)


def test_num_proc_gives_the_same_dataset(tok):
    rows = [GOOD, NO_ASSISTANT, CUT_OFF, TRUNCATED, EMPTY, {"messages": CONVO}] * 2
    single, single_stats = tokenize(rows, tok, max_length=MAX_LENGTH)
    multi, multi_stats = tokenize(rows, tok, max_length=MAX_LENGTH, num_proc=2)
    assert multi.to_list() == single.to_list()
    assert multi_stats == single_stats


def test_streaming_maps_lazily_and_counts_as_read(tok):
    rows = [GOOD, NO_ASSISTANT, CUT_OFF, TRUNCATED, EMPTY]
    reference, ref_stats = tokenize(rows, tok, max_length=MAX_LENGTH)
    stream = datasets.Dataset.from_list(rows).to_iterable_dataset()
    out, stats = tokenize_for_instruction(stream, tok, max_length=MAX_LENGTH)
    assert stats.rows_in == 0 and any("streaming" in note for note in stats.notes)
    assert list(out) == reference.to_list()
    for counter in ("rows_in", "rows_out", "skipped_empty", "no_assistant", "all_masked", "truncated", "tokens"):
        assert getattr(stats, counter) == getattr(ref_stats, counter), counter

    unknown_features = datasets.IterableDataset.from_generator(lambda: iter(rows))
    out, _ = tokenize_for_instruction(unknown_features, tok, max_length=MAX_LENGTH)
    assert list(out) == reference.to_list()


def test_default_template_generation_prompt_and_opening_assistant_turn(tok):
    assert DEFAULT_CHAT_TEMPLATE.count("eos_token") == 1
    assert render_chat(ONE_TURN[:1], tok, add_generation_prompt=True) == "<|user|>\nWhat is 2+2?\n<|assistant|>\n"
    greeting = [{"role": "assistant", "content": "Hi."}, *ONE_TURN]
    ids, labels = encode_chat(greeting, tok)
    assert trained_tokens(tok, ids, labels) == ["H", "i", ".", "<|eos|>", "4", ".", "<|eos|>"]


def test_default_template_needs_an_eos_token():
    no_eos = train_tokenizer(TEXTS, vocab_size=259)
    no_eos.eos_token = None
    with pytest.raises(ConfigError, match="no eos_token"):
        tokenize([{"messages": CONVO}], no_eos)
