"""Pretraining rows: packing invariants, truncation, counts, caching, num_proc and streaming."""

from __future__ import annotations

import json

import datasets
import pytest
import torch
from datasets.fingerprint import Hasher
from transformers import AutoTokenizer, default_data_collator

from trainformers.data import default_corpus, pretraining, train_tokenizer
from trainformers.data.pretraining import tokenize_for_pretraining
from trainformers.data.sources import load_source
from trainformers.errors import ConfigError, DataError


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path_factory, monkeypatch):
    """Each test gets its own `datasets` cache, so a cache hit is one this test made."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.mktemp("hf-datasets"))


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return default_corpus()[:60]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("tokenizer")
    tok = train_tokenizer(default_corpus()[:40], vocab_size=300, out_dir=out_dir)
    tok.saved_to = out_dir
    return tok


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def stream_of(tokenizer, texts: list[str]) -> list[int]:
    """The expected token stream, built independently: each document's ids, then EOS."""
    return [t for text in texts for t in encode(tokenizer, text) + [tokenizer.eos_token_id]]


def text_rows(texts) -> datasets.Dataset:
    return datasets.Dataset.from_dict({"text": list(texts)})


# --- packing ----------------------------------------------------------------------------------


def test_packing_keeps_every_token_but_the_tail(tokenizer, corpus):
    block = 64
    rows, stats = tokenize_for_pretraining(text_rows(corpus), tokenizer, max_length=block)
    expected = stream_of(tokenizer, corpus)
    assert rows.column_names == ["input_ids", "labels"]
    blocks = rows["input_ids"]
    assert len(blocks) == len(expected) // block and all(len(b) == block for b in blocks)
    flat = [t for b in blocks for t in b]
    assert flat == expected[: len(flat)]  # nothing dropped or repeated but the tail
    assert list(rows["labels"]) == list(blocks)
    assert (stats.rows_in, stats.rows_out, stats.skipped_empty) == (60, len(blocks), 0)
    assert stats.tokens == len(flat) and stats.dropped_tail_tokens == len(expected) - len(flat) < block

    batch = default_data_collator([rows[i] for i in range(3)])
    assert tuple(batch["input_ids"].shape) == (3, block) and batch["labels"].dtype == torch.int64


def test_blocks_cross_map_batches(tokenizer, monkeypatch):
    # 2,500 short documents: three map batches of 1,000. Blocks must span batch boundaries (one
    # tail in all, unlike a per-batch group_texts that drops one per batch).
    texts = [f"document {i}: " + "word " * (i % 7) for i in range(2500)]
    counter = CountCalls(monkeypatch)
    rows, stats = tokenize_for_pretraining(text_rows(texts), tokenizer, max_length=100)
    assert counter.take()["pack"] == 3
    expected = stream_of(tokenizer, texts)
    flat = [t for b in rows["input_ids"] for t in b]
    assert flat == expected[: len(flat)] and len(expected) - len(flat) < 100
    assert stats.dropped_tail_tokens == len(expected) - len(flat)


def test_empty_rows_are_counted_and_fields_joined(tokenizer):
    data = datasets.Dataset.from_dict(
        {"title": ["Alpha", None, "", "Gamma", "  "], "body": ["first body", None, "  \n", "", "last"]}
    )
    rows, stats = tokenize_for_pretraining(data, tokenizer, text_field=["title", "body"], max_length=4, packing=False)
    joined = ["Alpha\n\nfirst body", "Gamma", "last"]  # blank fields left out, blank rows skipped
    assert (stats.rows_in, stats.skipped_empty, stats.rows_out) == (5, 2, 3)
    full = [encode(tokenizer, t) + [tokenizer.eos_token_id] for t in joined]
    assert list(rows["input_ids"]) == [ids[:4] for ids in full]
    assert "skipped empty/null: 2" in stats.summary()

    packed, stats = tokenize_for_pretraining(data, tokenizer, text_field=["title", "body"], max_length=2)
    assert [t for b in packed["input_ids"] for t in b] == stream_of(tokenizer, joined)[: stats.tokens]
    assert stats.skipped_empty == 2


def test_add_eos_false(tokenizer):
    ids = encode(tokenizer, "abcabc")
    rows, stats = tokenize_for_pretraining(text_rows(["abcabc"]), tokenizer, max_length=len(ids), add_eos=False)
    assert list(rows["input_ids"]) == [ids] and stats.dropped_tail_tokens == 0


# --- one row per document ---------------------------------------------------------------------


@pytest.mark.parametrize("padding_free", [False, True])
def test_rows_per_document_are_truncated_and_counted(tokenizer, corpus, padding_free):
    texts = ["short", corpus[0], "", corpus[1]]
    rows, stats = tokenize_for_pretraining(
        text_rows(texts), tokenizer, max_length=16, packing=False, padding_free=padding_free
    )
    assert rows.column_names == ["input_ids"]  # the collator makes labels (padding / document starts)
    short = encode(tokenizer, "short") + [tokenizer.eos_token_id]
    assert rows[0]["input_ids"] == short  # ends in EOS
    assert rows[1]["input_ids"] == encode(tokenizer, corpus[0])[:16]  # cut: no EOS, it did not end there
    assert (stats.rows_in, stats.rows_out, stats.skipped_empty, stats.truncated) == (4, 3, 1, 2)
    assert stats.tokens == len(short) + 32


# --- determinism: num_proc and streaming ------------------------------------------------------


def test_num_proc_2_equals_num_proc_1(tokenizer, corpus):
    one, stats_one = tokenize_for_pretraining(text_rows(corpus), tokenizer, max_length=32)
    two, stats_two = tokenize_for_pretraining(text_rows(corpus), tokenizer, max_length=32, num_proc=2)
    assert two.to_dict() == one.to_dict() and stats_two == stats_one


def test_streaming_packs_like_the_dataset(tokenizer, corpus):
    data = text_rows(corpus)
    packed, _ = tokenize_for_pretraining(data, tokenizer, max_length=48)
    stream, stats = tokenize_for_pretraining(data.to_iterable_dataset(), tokenizer, max_length=48)
    assert isinstance(stream, datasets.IterableDataset) and stream.column_names == ["input_ids", "labels"]
    first, second = list(stream), list(stream)  # the carry restarts with each pass (epoch)
    assert first == packed.to_list() and second == first
    assert stats.rows_out == 0 and "not counted up front" in stats.summary()

    rows, _ = tokenize_for_pretraining(data.to_iterable_dataset(), tokenizer, max_length=8, packing=False)
    assert list(rows) == tokenize_for_pretraining(data, tokenizer, max_length=8, packing=False)[0].to_list()


# --- caching ----------------------------------------------------------------------------------


class CountCalls:
    """Counts calls of the two map functions (patched on the class: the hashes stay the same)."""

    def __init__(self, monkeypatch):
        self.calls = {"tokenize": 0, "pack": 0}
        for key, cls in (("tokenize", pretraining._Tokenize), ("pack", pretraining._PackBlocks)):
            original = cls.__call__

            def counted(obj, *args, _key=key, _original=original):
                self.calls[_key] += 1
                return _original(obj, *args)

            monkeypatch.setattr(cls, "__call__", counted)

    def take(self) -> dict[str, int]:
        calls, self.calls = self.calls, {"tokenize": 0, "pack": 0}
        return calls


def test_second_call_on_a_file_is_a_cache_hit(tokenizer, corpus, tmp_path, monkeypatch):
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in corpus))
    counter = CountCalls(monkeypatch)

    first, stats = tokenize_for_pretraining(load_source(str(path)), tokenizer, max_length=64)
    assert counter.take() == {"tokenize": 1, "pack": 1}
    assert first.cache_files and all(json.dumps(f).endswith('.arrow"}') for f in first.cache_files)

    # Another process would load the tokenizer from disk and may have called it with
    # truncation on: neither changes the hash, so the same cache files are found.
    reloaded = AutoTokenizer.from_pretrained(tokenizer.saved_to)
    reloaded(["warm up"], truncation=True, max_length=3, padding="max_length")
    again, stats_again = tokenize_for_pretraining(load_source(str(path)), reloaded, max_length=64)
    assert counter.take() == {"tokenize": 0, "pack": 0}
    assert again.cache_files == first.cache_files and again._fingerprint == first._fingerprint
    assert again.to_dict() == first.to_dict() and stats_again == stats

    # A new block length reuses the tokenised documents and only packs again.
    tokenize_for_pretraining(load_source(str(path)), tokenizer, max_length=32)
    assert counter.take() == {"tokenize": 0, "pack": 1}


def test_in_memory_data_is_not_cached(tokenizer, corpus, monkeypatch):
    counter = CountCalls(monkeypatch)
    for _ in range(2):
        rows, _ = tokenize_for_pretraining(text_rows(corpus), tokenizer, max_length=64)
        assert rows.cache_files == []
        assert counter.take() == {"tokenize": 1, "pack": 1}  # recomputed (in memory) every time


def test_map_functions_hash_stably(tokenizer):
    # datasets falls back to a random hash (no caching at all) when a function can't be hashed.
    make = lambda tok: pretraining._Tokenize(tok, ["text"], tok.eos_token_id, None)
    before = Hasher.hash(make(tokenizer))
    tokenizer(["x" * 50], truncation=True, max_length=4)
    assert Hasher.hash(make(tokenizer)) == before
    assert Hasher.hash(make(AutoTokenizer.from_pretrained(tokenizer.saved_to))) == before
    assert Hasher.hash(pretraining._Tokenize(tokenizer, ["text"], None, None)) != before

    packer = pretraining._PackBlocks(8)
    packer._carry = packer._carry[:0].copy()
    assert Hasher.hash(packer) == Hasher.hash(pretraining._PackBlocks(8)) != Hasher.hash(pretraining._PackBlocks(9))


class CharTokenizer:
    """A tokenizer without a `backend_tokenizer` (like slow ones): one id per character."""

    eos_token_id = 0

    def __call__(self, texts, add_special_tokens=False, verbose=True):
        return {"input_ids": [[ord(c) for c in text] for text in texts]}


def test_tokenizer_without_backend():
    rows, stats = tokenize_for_pretraining(text_rows(["ab", "cde"]), CharTokenizer(), max_length=2)
    assert list(rows["input_ids"]) == [[97, 98], [0, 99], [100, 101]] and stats.dropped_tail_tokens == 1


# --- errors -----------------------------------------------------------------------------------


def test_errors(tokenizer):
    data = text_rows(["a short text"])
    with pytest.raises(ConfigError, match="data.max_length must be a positive number"):
        tokenize_for_pretraining(data, tokenizer, max_length=0)
    with pytest.raises(ConfigError, match="Can't set both data.packing and data.padding_free"):
        tokenize_for_pretraining(data, tokenizer, max_length=8, padding_free=True)
    with pytest.raises(DataError, match=r"data.max_length 4096 is longer than the \d+ tokens the 1 texts of train"):
        tokenize_for_pretraining(data, tokenizer, max_length=4096)
    with pytest.raises(DataError, match=r"data.text_field 'txt' not in columns \['text'\] \(did you mean 'text'\?\)"):
        tokenize_for_pretraining(data, tokenizer, text_field="txt", max_length=8)

    no_eos = CharTokenizer()
    no_eos.eos_token_id = None
    with pytest.raises(DataError, match="has no eos_token"):
        tokenize_for_pretraining(data, no_eos, max_length=8)
    assert tokenize_for_pretraining(data, no_eos, max_length=4, add_eos=False)[1].rows_out == 3

    mixed = datasets.Dataset.from_dict({"text": ["fine"]}).to_iterable_dataset()
    mixed = mixed.map(lambda row: {"text": 5})  # a stream with untyped values
    rows, _ = tokenize_for_pretraining(mixed, tokenizer, max_length=2)
    with pytest.raises(DataError, match="data.text_field 'text' holds int values, not text"):
        list(rows)


def test_small_data_shows_no_progress_bars(tokenizer, corpus, tmp_path, capfd):
    # The CLI's stderr carries one-line errors; small data must not fill it with bars.
    path = tmp_path / "docs.txt"
    path.write_text("\n\n".join(corpus[:5]))
    capfd.readouterr()
    tokenize_for_pretraining(load_source(str(path)), tokenizer, max_length=16)
    assert capfd.readouterr().err == ""
    assert not datasets.utils.are_progress_bars_disabled()  # restored afterwards


def test_all_empty_rows_is_a_clear_error():
    from datasets import Dataset

    from trainformers.data import default_corpus, tokenize_for_pretraining, train_tokenizer
    from trainformers.errors import DataError

    tok = train_tokenizer(default_corpus()[:20], 300)
    with pytest.raises(DataError, match=r"every row of train \(2\) has empty or null text in 'text'"):
        tokenize_for_pretraining(Dataset.from_list([{"text": ""}, {"text": None}]), tok, max_length=16)
