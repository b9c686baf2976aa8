"""Pretraining rows: packing invariants, collation, truncation, counts, caching, num_proc and streaming."""

from __future__ import annotations

import itertools
import json

import datasets
import pytest
import torch
from conftest import tiny_llama
from datasets.fingerprint import Hasher
from torch.utils.data import DataLoader
from transformers import AutoTokenizer

from trainformers.config import DataSection
from trainformers.data import default_corpus, make_collator, pretraining, train_tokenizer
from trainformers.data.pretraining import tokenize_for_pretraining
from trainformers.data.sources import load_source
from trainformers.errors import ConfigError, DataError
from trainformers.losses import IGNORE_INDEX, count_label_items, lm_loss


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


def flat(rows) -> list[int]:
    """Every row's tokens end to end."""
    return [t for row in rows["input_ids"] for t in row]


def with_exact_fit(tokenizer, texts: list[str], block: int) -> list[str]:
    """`texts` plus one filler document that makes the stream length a multiple of `block`."""
    length = len(stream_of(tokenizer, texts))
    for n in range(1, 10 * block):
        filler = "~" * n  # no merges for "~" in this vocabulary: n tokens
        if (length + len(encode(tokenizer, filler)) + 1) % block == 0:
            return [*texts, filler]
    raise AssertionError(f"no filler fits block {block}")


@pytest.mark.parametrize("block", [1, 7, 64, 1000, "exact"])
def test_packing_keeps_every_token_across_map_batches(tokenizer, corpus, monkeypatch, block):
    # Map batches of 8 rows: the remainder is carried across 8 batches, and kept once at the end.
    monkeypatch.setattr(pretraining, "_MAP_BATCH_ROWS", 8)
    texts = corpus
    if block == "exact":
        block = 64
        texts = with_exact_fit(tokenizer, corpus, block)  # the stream fills its last block exactly
    expected = stream_of(tokenizer, texts)
    counter = CountCalls(monkeypatch)
    rows, stats = tokenize_for_pretraining(text_rows(texts), tokenizer, max_length=block)
    assert counter.take()["pack"] == -(-len(texts) // 8)

    assert rows.column_names == ["input_ids", "labels"]
    assert flat(rows) == expected  # nothing dropped, nothing repeated, in order
    lengths = [len(row) for row in rows["input_ids"]]
    assert len(lengths) == -(-len(expected) // block)
    assert set(lengths[:-1]) <= {block} and lengths[-1] == (len(expected) % block or block)
    assert list(rows["labels"]) == list(rows["input_ids"])
    assert (stats.rows_in, stats.rows_out, stats.skipped_empty) == (len(texts), len(lengths), 0)
    assert stats.tokens == len(expected)
    assert "dropped" not in stats.summary()


def test_blocks_cross_map_batches_of_the_default_size(tokenizer, monkeypatch):
    # 2,500 short documents: three map batches of 1,000 (datasets' default). A per-batch
    # group_texts would drop one tail per batch; here the blocks span the batch boundaries.
    texts = [f"document {i}: " + "word " * (i % 7) for i in range(2500)]
    counter = CountCalls(monkeypatch)
    rows, stats = tokenize_for_pretraining(text_rows(texts), tokenizer, max_length=100)
    assert counter.take()["pack"] == 3
    expected = stream_of(tokenizer, texts)
    assert flat(rows) == expected and stats.tokens == len(expected)
    assert [len(row) for row in rows["input_ids"]][:-1] == [100] * (len(rows) - 1)


def test_packed_rows_collate_with_padding_that_never_trains(tokenizer, corpus):
    """The run's collator (`make_collator`, packing on) pads the shorter last block: pad labels
    are -100 and the mask 0, so the loss of a batch counts exactly its real tokens."""
    block = 64
    texts = next(corpus[:k] for k in range(3, 30) if len(stream_of(tokenizer, corpus[:k])) % block > 1)
    rows, _ = tokenize_for_pretraining(text_rows(texts), tokenizer, max_length=block)
    full, short = rows[len(rows) - 2], rows[len(rows) - 1]
    n = len(short["input_ids"])
    assert len(full["input_ids"]) == block and 1 < n < block
    collator, padding_free = make_collator(DataSection(max_length=block), tokenizer)
    assert not padding_free
    batch = collator([full, short])

    pad = block - n
    assert batch["input_ids"].tolist() == [full["input_ids"], short["input_ids"] + [tokenizer.pad_token_id] * pad]
    assert batch["attention_mask"].tolist() == [[1] * block, [1] * n + [0] * pad]
    assert batch["labels"].tolist() == [full["input_ids"], short["input_ids"] + [IGNORE_INDEX] * pad]
    real = batch["input_ids"][batch["attention_mask"].bool()].tolist()
    assert real == full["input_ids"] + short["input_ids"]

    # The loss of the padded batch is the token-weighted loss of the two rows run alone.
    assert count_label_items(batch, shift=True) == (block - 1) + (n - 1)
    model = tiny_llama(vocab=len(tokenizer))
    with torch.no_grad():
        padded = lm_loss(
            model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
            batch["labels"],
            shift=True,
        )
        sums = [
            lm_loss(model(input_ids=ids).logits, ids, shift=True, num_items_in_batch=1)
            for ids in (torch.tensor([full["input_ids"]]), torch.tensor([short["input_ids"]]))
        ]
    torch.testing.assert_close(padded, sum(sums) / ((block - 1) + (n - 1)), atol=1e-5, rtol=1e-5)


def test_padding_free_batches_keep_every_token(tokenizer, corpus):
    # The run's padding-free path: one row per document, bin-packed per batch into rows of at
    # most max_length (longer than every document here, so nothing is truncated).
    max_length = 1600
    rows, stats = tokenize_for_pretraining(
        text_rows(corpus), tokenizer, max_length=max_length, packing=False, padding_free=True
    )
    assert stats.truncated == 0
    collator, padding_free = make_collator(DataSection(max_length=max_length, padding_free=True), tokenizer)
    assert padding_free
    documents = [encode(tokenizer, text) + [tokenizer.eos_token_id] for text in corpus]
    segments = []
    for batch in DataLoader(rows, batch_size=8, collate_fn=collator):
        for ids, positions, labels in zip(
            batch["input_ids"].tolist(), batch["position_ids"].tolist(), batch["labels"].tolist()
        ):
            starts = [i for i, p in enumerate(positions) if p == 0] + [len(ids)]
            for begin, end in itertools.pairwise(starts):
                if set(ids[begin:end]) == {tokenizer.pad_token_id}:  # the pad run evening out a row
                    assert end == len(ids) and set(labels[begin:end]) == {IGNORE_INDEX}
                    continue
                assert labels[begin:end] == [IGNORE_INDEX] + ids[begin + 1 : end]
                segments.append(ids[begin:end])
    assert sorted(segments) == sorted(documents)  # each document once, whole (rows reorder them)


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
    assert flat(packed) == stream_of(tokenizer, joined) and stats.tokens == len(flat(packed))
    assert stats.skipped_empty == 2


def test_data_shorter_than_one_block_is_one_row(tokenizer):
    rows, stats = tokenize_for_pretraining(text_rows(["a short text"]), tokenizer, max_length=4096)
    assert list(rows["input_ids"]) == [stream_of(tokenizer, ["a short text"])] and stats.rows_out == 1


def test_add_eos_false(tokenizer):
    ids = encode(tokenizer, "abcabc")
    rows, stats = tokenize_for_pretraining(text_rows(["abcabc"]), tokenizer, max_length=len(ids), add_eos=False)
    assert list(rows["input_ids"]) == [ids] and stats.tokens == len(ids)


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


def test_streaming_packs_like_the_dataset_but_its_last_block(tokenizer, corpus):
    data = text_rows(corpus)
    packed, stats = tokenize_for_pretraining(data, tokenizer, max_length=48)
    stream, stream_stats = tokenize_for_pretraining(data.to_iterable_dataset(), tokenizer, max_length=48)
    assert isinstance(stream, datasets.IterableDataset) and stream.column_names == ["input_ids", "labels"]
    first, second = list(stream), list(stream)  # the carry restarts with each pass (epoch)
    # A map over a stream never learns which batch is its last: the shorter final block is missing.
    assert stats.tokens % 48 and first == packed.to_list()[:-1] and second == first
    assert stream_stats.rows_out == 0 and "not counted up front" in stream_stats.summary()
    assert "packing a stream drops the last < 48 tokens of each pass" in stream_stats.summary()

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
    def make(tok):
        return pretraining._Tokenize(tok, ["text"], tok.eos_token_id, None)

    before = Hasher.hash(make(tokenizer))
    tokenizer(["x" * 50], truncation=True, max_length=4)
    assert Hasher.hash(make(tokenizer)) == before
    assert Hasher.hash(make(AutoTokenizer.from_pretrained(tokenizer.saved_to))) == before
    assert Hasher.hash(pretraining._Tokenize(tokenizer, ["text"], None, None)) != before

    packer = pretraining._PackBlocks(8, rows=10)
    packer._carry = packer._carry[:0].copy()
    assert Hasher.hash(packer) == Hasher.hash(pretraining._PackBlocks(8, rows=10))
    assert Hasher.hash(packer) != Hasher.hash(pretraining._PackBlocks(9, rows=10))
    assert Hasher.hash(packer) != Hasher.hash(pretraining._PackBlocks(8, rows=11))


class CharTokenizer:
    """A tokenizer without a `backend_tokenizer` (like slow ones): one id per character."""

    eos_token_id = 0

    def __call__(self, texts, add_special_tokens=False, verbose=True):
        return {"input_ids": [[ord(c) for c in text] for text in texts]}


def test_tokenizer_without_backend():
    rows, stats = tokenize_for_pretraining(text_rows(["ab", "cde"]), CharTokenizer(), max_length=2)
    assert list(rows["input_ids"]) == [[97, 98], [0, 99], [100, 101], [0]] and stats.tokens == 7


# --- errors -----------------------------------------------------------------------------------


def test_errors(tokenizer):
    data = text_rows(["a short text"])
    with pytest.raises(ConfigError, match="data.max_length must be a positive number"):
        tokenize_for_pretraining(data, tokenizer, max_length=0)
    with pytest.raises(ConfigError, match="Can't set both data.packing and data.padding_free"):
        tokenize_for_pretraining(data, tokenizer, max_length=8, padding_free=True)
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
