"""Tokenizer training: special and chat tokens, the chat template's labels, and `trainformers tokenizer train`."""

from __future__ import annotations

import json

import datasets
import pytest
from transformers import AutoTokenizer

from trainformers.cli import main
from trainformers.config import DataSection
from trainformers.data import default_corpus, encode_chat, render_chat
from trainformers.data.chat import IGNORE_INDEX
from trainformers.data.loader import load_raw, raw_texts
from trainformers.data.tokenizer import (
    CHAT_TEMPLATE,
    CHAT_TOKENS,
    END_TOKEN,
    SPECIAL_TOKENS,
    train_tokenizer,
    train_tokenizer_from_data,
)
from trainformers.errors import ConfigError

ROUND_TRIP = "Hello  world ,  ümlaut — 日本語 🙂\n\n   indented . code\t tail \r\n "
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "It is 4."},
    {"role": "user", "content": "And 3 + 3?"},
    {"role": "assistant", "content": " 6, with a leading space\nand a second line."},
]


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path_factory, monkeypatch):
    """Local files are converted into a per-test `datasets` cache, never the user's."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.mktemp("hf-datasets"))


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return default_corpus()[:40]


@pytest.fixture(scope="module")
def chat_dir(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("chat-tokenizer")
    train_tokenizer(corpus, vocab_size=320, out_dir=out, chat_tokens=True)
    return out


@pytest.fixture(scope="module")
def chat_tok(chat_dir):
    return AutoTokenizer.from_pretrained(chat_dir)


def test_chat_tokens_are_single_ids_after_the_base_specials(corpus):
    tok = train_tokenizer(corpus, vocab_size=320, chat_tokens=True)
    assert tok.convert_ids_to_tokens(list(range(7))) == SPECIAL_TOKENS + CHAT_TOKENS
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2)
    assert tok.extra_special_tokens == CHAT_TOKENS
    assert len(tok) == 320
    for token_id, token in enumerate(SPECIAL_TOKENS + CHAT_TOKENS):
        ids = tok(f"x{token}y", add_special_tokens=False)["input_ids"]
        assert token_id in ids and len(ids) == 3, token  # never split into bytes
        assert tok.decode(ids) == f"x{token}y"
    for text in [ROUND_TRIP, corpus[3], "<|user|>\nhi<|end|>\n<|assistant|>\nyo<|end|>"]:
        assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    assert tok.decode(tok("a<|end|>b")["input_ids"], skip_special_tokens=True) == "ab"


def test_default_tokenizer_has_no_chat_tokens_or_template(corpus):
    tok = train_tokenizer(corpus, vocab_size=300)
    assert tok.chat_template is None and tok.extra_special_tokens == []
    assert len(tok(END_TOKEN, add_special_tokens=False)["input_ids"]) > 1  # plain text without chat tokens


def test_chat_template_is_prefix_consistent_and_renders_as_documented(chat_tok):
    assert chat_tok.chat_template == CHAT_TEMPLATE
    full = render_chat(CONVERSATION, chat_tok)
    assert full.startswith(
        "<|system|>\nBe brief.<|end|>\n<|user|>\nWhat is 2 + 2?<|end|>\n<|assistant|>\nIt is 4.<|end|>\n"
    )
    assert full.endswith("and a second line.<|end|>")
    for k, message in enumerate(CONVERSATION):
        through = render_chat(CONVERSATION[: k + 1], chat_tok)
        assert full.startswith(through)
        if message["role"] == "assistant":  # what data.chat relies on to find the answer's span
            before = render_chat(CONVERSATION[:k], chat_tok, add_generation_prompt=True)
            assert before.endswith("\n<|assistant|>\n") and through.startswith(before)
            assert through[len(before) :] == message["content"] + END_TOKEN


def test_encode_chat_labels_exactly_the_answers_and_their_end_token(chat_tok):
    input_ids, labels = encode_chat(CONVERSATION, chat_tok)
    end_id = chat_tok.convert_tokens_to_ids(END_TOKEN)
    assert input_ids == chat_tok(render_chat(CONVERSATION, chat_tok), add_special_tokens=False)["input_ids"]
    trained = [i for i, label in zip(input_ids, labels) if label != IGNORE_INDEX]
    assert all(label in (i, IGNORE_INDEX) for i, label in zip(input_ids, labels))
    answers = [m["content"] for m in CONVERSATION if m["role"] == "assistant"]
    expected = []
    for answer in answers:
        expected += chat_tok(answer, add_special_tokens=False)["input_ids"] + [end_id]
    assert trained == expected
    # the labelled runs are contiguous, one per answer, each ending with <|end|>
    runs, current = [], []
    for i, label in zip(input_ids, labels):
        if label != IGNORE_INDEX:
            current.append(i)
        elif current:
            runs.append(current)
            current = []
    runs.append(current)
    assert [chat_tok.decode(r) for r in runs] == [a + END_TOKEN for a in answers]


def test_save_and_autotokenizer_reload_are_equal(chat_dir, corpus):
    tok = train_tokenizer(corpus, vocab_size=320, chat_tokens=True)
    reloaded = AutoTokenizer.from_pretrained(chat_dir)
    assert reloaded.get_vocab() == tok.get_vocab()
    assert reloaded.backend_tokenizer.to_str() == tok.backend_tokenizer.to_str()
    assert reloaded.chat_template == tok.chat_template == CHAT_TEMPLATE
    assert reloaded.extra_special_tokens == CHAT_TOKENS
    assert (reloaded.bos_token, reloaded.eos_token, reloaded.pad_token) == tuple(SPECIAL_TOKENS)
    for text in [ROUND_TRIP, corpus[5]]:
        assert reloaded(text)["input_ids"] == tok(text)["input_ids"]
    assert encode_chat(CONVERSATION, reloaded) == encode_chat(CONVERSATION, tok)


def test_chat_tokens_need_a_larger_vocabulary():
    with pytest.raises(ConfigError, match=r"model.vocab_size 260 .* at least 263"):
        train_tokenizer(["some text"], vocab_size=260, chat_tokens=True)


# --- from a data section ----------------------------------------------------------------------


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_from_data_trains_on_what_the_run_would(tmp_path):
    data = DataSection(num_samples=30)
    tok = train_tokenizer_from_data(data, 300, tmp_path / "tok")
    # the tokenizer `trainformers train` builds from the same data section (run.build_tokenizer)
    expected = train_tokenizer(raw_texts(load_raw(data, 42)[0], data), 300)
    assert tok.backend_tokenizer.to_str() == expected.backend_tokenizer.to_str()
    assert AutoTokenizer.from_pretrained(tmp_path / "tok").get_vocab() == tok.get_vocab()


def test_from_data_instruction_rows(tmp_path):
    rows = [{"prompt": f"question number {i}?", "response": f"answer number {i}."} for i in range(20)]
    source = write_jsonl(tmp_path / "chat.jsonl", rows)
    data = DataSection(source=str(source), training_mode="instruction", validation_split_percentage=0)
    tok = train_tokenizer_from_data(data, 300, tmp_path / "tok", chat_tokens=True)
    assert len(tok("question number", add_special_tokens=False)["input_ids"]) <= 3  # merges learnt from the rows
    ids, labels = encode_chat(
        [{"role": "user", "content": rows[0]["prompt"]}, {"role": "assistant", "content": rows[0]["response"]}], tok
    )
    assert tok.decode([i for i, label in zip(ids, labels) if label != IGNORE_INDEX]) == "answer number 0.<|end|>"


def test_from_data_checks_vocab_size_before_reading(tmp_path):
    data = DataSection(source=str(tmp_path / "missing.jsonl"))
    with pytest.raises(ConfigError, match="vocab_size 10 is too small"):
        train_tokenizer_from_data(data, 10, tmp_path / "tok")
    assert not (tmp_path / "tok").exists()


# --- the command ------------------------------------------------------------------------------


def test_command_on_a_jsonl_file(tmp_path, capsys):
    rows = [{"body": f"Row {i}: the quick brown fox jumps over the lazy dog {i % 3} times."} for i in range(40)]
    source = write_jsonl(tmp_path / "rows.jsonl", rows)
    out = tmp_path / "tok"
    code = main(
        [
            "tokenizer",
            "train",
            "--data",
            str(source),
            "--text-field",
            "body",
            "--vocab-size",
            "300",
            "--out",
            str(out),
            "--chat-tokens",
            "--min-frequency",
            "3",
        ]
    )
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "vocab size: 300" in printed and "round trip: ok" in printed and f"saved to {out}" in printed
    tok = AutoTokenizer.from_pretrained(out)
    assert len(tok) == 300 and tok.chat_template == CHAT_TEMPLATE
    assert tok.decode(tok(rows[7]["body"])["input_ids"]) == rows[7]["body"]


def test_command_on_the_embedded_corpus(tmp_path, capsys):
    out = tmp_path / "tok"
    assert main(["tokenizer", "train", "--vocab-size", "300", "--num-samples", "20", "--out", str(out)]) == 0
    assert "round trip: ok" in capsys.readouterr().out
    expected = train_tokenizer_from_data(DataSection(num_samples=20), 300, tmp_path / "api")
    assert AutoTokenizer.from_pretrained(out).backend_tokenizer.to_str() == expected.backend_tokenizer.to_str()
    assert sorted(p.name for p in out.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]


def test_command_refuses_a_non_empty_out_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "tok"
    args = ["tokenizer", "train", "--vocab-size", "300", "--num-samples", "10", "--out", str(out)]
    assert main([*args, "--chat-tokens"]) == 0
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --out") and "--overwrite" in err and err.count("\n") == 1
    assert (out / "chat_template.jinja").is_file()  # untouched
    assert main([*args, "--overwrite", "--data", str(tmp_path / "missing.jsonl")]) == 2
    assert (out / "chat_template.jinja").is_file()  # a failed run leaves the old tokenizer whole
    (out / "notes.txt").write_text("mine")
    assert main([*args, "--overwrite"]) == 0
    assert not (out / "chat_template.jinja").exists()  # a stale template would be loaded with the new tokenizer
    assert (out / "notes.txt").read_text() == "mine"  # only tokenizer files are replaced
    assert AutoTokenizer.from_pretrained(out).chat_template is None


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--vocab-size", "260", "--chat-tokens"], "error: --vocab-size 260 is too small"),
        (["--vocab-size", "300", "--format", "alpaca"], "error: --format alpaca describes instruction rows"),
        (["--vocab-size", "300", "--data", "no/such/file.jsonl"], "error: "),
    ],
)
def test_command_errors_are_one_line(tmp_path, capsys, extra, message):
    assert main(["tokenizer", "train", "--out", str(tmp_path / "tok"), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1, err
    assert not (tmp_path / "tok").exists()
