"""The minimum data path of the default run: corpus, local sources, split, tokenizer, packing."""

from __future__ import annotations

import json

import datasets
import numpy as np
import pytest
from transformers import AutoTokenizer

from trainformers.data import (
    default_corpus,
    load_texts,
    pack_texts,
    split_paragraphs,
    split_texts,
    token_stream,
    train_tokenizer,
)
from trainformers.errors import ConfigError, DataError

ROUND_TRIP = "Hello  world ,  ümlaut — 日本語 🙂\n\n   indented . code<|eos|>\t tail \r\n "


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path_factory, monkeypatch):
    """Local files are converted into a per-test `datasets` cache, never the user's."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.mktemp("hf-datasets"))


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return default_corpus()


@pytest.fixture(scope="module")
def tokenizer(corpus, tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("tokenizer")
    tok = train_tokenizer(corpus[:40], vocab_size=300, out_dir=out_dir)
    tok.saved_to = out_dir  # for the reload test
    return tok


# --- corpus -------------------------------------------------------------------------------


def test_default_corpus_is_sizeable_and_deterministic(corpus):
    assert len(corpus) >= 200
    assert all(doc.strip() and doc == doc.rstrip() for doc in corpus)
    assert corpus == default_corpus()
    assert sum(len(doc) for doc in corpus) > 100_000


def test_split_paragraphs_groups_up_to_max_chars():
    text = "\n\n".join(["a" * 30, "b" * 30, "  c" * 10, "\n \t\n", "d" * 100])
    docs = split_paragraphs(text, max_chars=70)
    assert docs == ["a" * 30 + "\n\n" + "b" * 30, "  c" * 10, "d" * 100]
    assert split_paragraphs("\n\n \n") == []


# --- load_texts ---------------------------------------------------------------------------


def test_load_texts_none_is_default_corpus(corpus):
    assert load_texts(None) == corpus
    assert load_texts(None, num_samples=3) == corpus[:3]


def test_load_texts_txt(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("first para\nline two\n\n\nsecond\n", encoding="utf-8")
    # Both paragraphs fit in one document of the default size.
    assert load_texts(str(path)) == ["first para\nline two\n\nsecond"]
    big = "\n\n".join(f"paragraph {i} " + "x" * 900 for i in range(5))
    path.write_text(big, encoding="utf-8")
    docs = load_texts(str(path))
    assert len(docs) == 3 and docs[0].startswith("paragraph 0")
    assert load_texts(str(path), num_samples=1) == docs[:1]


def test_load_texts_jsonl_csv_and_glob(tmp_path):
    rows = [{"text": f"doc {i}", "id": i} for i in range(5)] + [{"text": "  ", "id": 5}]
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in rows[:3]))
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(r) for r in rows[3:]))
    (tmp_path / "c.csv").write_text("id,body\n1,hello\n2,world\n")

    assert load_texts(str(tmp_path / "a.jsonl")) == ["doc 0", "doc 1", "doc 2"]
    assert load_texts(str(tmp_path / "*.jsonl")) == [f"doc {i}" for i in range(5)]
    assert load_texts(str(tmp_path / "*.jsonl"), num_samples=2) == ["doc 0", "doc 1"]
    assert load_texts(str(tmp_path / "c.csv"), text_field="body") == ["hello", "world"]

    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "part.jsonl").write_text(json.dumps(rows[0]))
    assert load_texts(folder) == ["doc 0"]  # a plain directory of data files, as a Path
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="is a directory without data files"):
        load_texts(str(tmp_path / "empty"))


def test_load_texts_save_to_disk(tmp_path):
    datasets.Dataset.from_dict({"text": ["x", "", "y"]}).save_to_disk(str(tmp_path / "single"))
    assert load_texts(str(tmp_path / "single")) == ["x", "y"]

    splits = datasets.DatasetDict(
        train=datasets.Dataset.from_dict({"content": ["t1", "t2"]}),
        test=datasets.Dataset.from_dict({"content": ["e1"]}),
    )
    splits.save_to_disk(str(tmp_path / "dict"))
    assert load_texts(str(tmp_path / "dict"), text_field="content", split="test") == ["e1"]
    with pytest.raises(DataError, match=r"data.split 'tset'.*train, test.*did you mean 'test'"):
        load_texts(str(tmp_path / "dict"), text_field="content", split="tset")


def test_load_texts_errors(tmp_path):
    with pytest.raises(DataError, match=r"data.source '.*missing.jsonl' not found"):
        load_texts(str(tmp_path / "missing.jsonl"))
    with pytest.raises(DataError, match="not found"):
        load_texts(str(tmp_path / "nothing-*.txt"))

    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps({"txt": "a", "label": 1}) + "\n")
    with pytest.raises(DataError) as info:
        load_texts(str(path))
    message = str(info.value)
    assert "data.text_field 'text' not in columns ['txt', 'label']" in message
    assert "did you mean 'txt'" in message and "\n" not in message

    (tmp_path / "blank.txt").write_text("\n \n\n")
    with pytest.raises(DataError, match=r"data.source '.*blank.txt' has no non-empty texts"):
        load_texts(str(tmp_path / "blank.txt"))

    (tmp_path / "numbers.jsonl").write_text(json.dumps({"text": [1, 2]}) + "\n")
    with pytest.raises(DataError, match="holds list values, not text"):
        load_texts(str(tmp_path / "numbers.jsonl"))

    with pytest.raises(ConfigError, match="data.subset 'en' only applies to Hub datasets"):
        load_texts(str(path), subset="en")
    with pytest.raises(ConfigError, match="data.num_samples"):
        load_texts(None, num_samples=0)


def test_load_texts_hub_name_goes_to_load_dataset(monkeypatch):
    # Never touches the network: load_dataset is replaced; only the routing is checked.
    calls = []

    def fake_load_dataset(path, name=None, **kwargs):
        calls.append((path, name, kwargs))
        return datasets.Dataset.from_dict({"text": ["hub doc", "another"]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert load_texts("owner/corpus", subset="en", split="validation", num_samples=1) == ["hub doc"]
    assert calls == [("owner/corpus", "en", {"split": "validation", "revision": None, "streaming": False})]


# --- split_texts --------------------------------------------------------------------------


def test_split_texts_sizes_and_determinism():
    texts = [f"doc {i}" for i in range(100)]
    train, validation = split_texts(texts, 10, seed=0)
    assert len(validation) == 10 and len(train) == 90
    assert sorted(train + validation) == sorted(texts)
    assert split_texts(texts, 10, seed=0) == (train, validation)
    assert split_texts(texts, 10, seed=1) != (train, validation)

    assert split_texts(texts, 0, seed=0) == (texts, [])
    assert [len(part) for part in split_texts(texts[:3], 1, seed=0)] == [2, 1]  # at least one
    assert [len(part) for part in split_texts(texts[:2], 99, seed=0)] == [1, 1]  # one to train
    assert split_texts(texts[:1], 50, seed=0) == (texts[:1], [])
    with pytest.raises(ConfigError, match="data.validation_split_percentage"):
        split_texts(texts, 100, seed=0)


# --- tokenizer ----------------------------------------------------------------------------


def test_tokenizer_special_tokens_and_round_trip(tokenizer, corpus):
    assert tokenizer.convert_ids_to_tokens([0, 1, 2]) == ["<|bos|>", "<|eos|>", "<|pad|>"]
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id) == (0, 1, 2)
    assert len(tokenizer) == 300
    assert tokenizer.model_max_length > 10**9
    for text in [ROUND_TRIP, corpus[100], ""]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text
    # Nothing is added around text: packing decides where EOS goes.
    assert tokenizer("ab")["input_ids"] == tokenizer("ab", add_special_tokens=False)["input_ids"]


def test_tokenizer_save_and_reload(tokenizer, corpus):
    reloaded = AutoTokenizer.from_pretrained(tokenizer.saved_to)
    assert reloaded.get_vocab() == tokenizer.get_vocab()
    assert (reloaded.bos_token, reloaded.eos_token, reloaded.pad_token) == (
        "<|bos|>",
        "<|eos|>",
        "<|pad|>",
    )
    for text in [ROUND_TRIP, corpus[7]]:
        ids = reloaded(text)["input_ids"]
        assert ids == tokenizer(text)["input_ids"]
        assert reloaded.decode(ids) == text


def test_tokenizer_is_deterministic(tokenizer, corpus):
    again = train_tokenizer(corpus[:40], vocab_size=300)
    assert again.backend_tokenizer.to_str() == tokenizer.backend_tokenizer.to_str()


def test_tokenizer_vocab_too_small():
    with pytest.raises(ConfigError, match=r"model.vocab_size 100 .* at least 259"):
        train_tokenizer(["some text"], vocab_size=100)


# --- packing ------------------------------------------------------------------------------


def test_pack_texts_invariants(tokenizer, corpus):
    texts = corpus[:30]
    block_size = 64
    # The expected stream, built independently: each document's ids, then EOS.
    expected = []
    for text in texts:
        expected += tokenizer.encode(text, add_special_tokens=False) + [tokenizer.eos_token_id]
    assert token_stream(texts, tokenizer).tolist() == expected

    packed = pack_texts(texts, tokenizer, block_size)
    assert packed.column_names == ["input_ids", "labels"]
    blocks = packed["input_ids"]
    assert len(blocks) == -(-len(expected) // block_size)  # full blocks, then one with the rest
    assert all(len(block) == block_size for block in blocks[:-1]) and 0 < len(blocks[-1]) <= block_size
    flat = [token for block in blocks for token in block]
    assert flat == expected  # nothing dropped or repeated, the tail included
    assert packed["labels"] == blocks
    # An EOS after every document.
    ends = np.cumsum([len(tokenizer.encode(t, add_special_tokens=False)) + 1 for t in texts])
    assert all(flat[end - 1] == tokenizer.eos_token_id for end in ends)
    assert flat.count(tokenizer.eos_token_id) == len(texts)

    torch_rows = packed.with_format("torch")[:2]["input_ids"]
    assert tuple(torch_rows.shape) == (2, block_size) and str(torch_rows.dtype) == "torch.int64"


def test_pack_texts_without_eos_and_exact_fit(tokenizer):
    ids = tokenizer.encode("abcabc", add_special_tokens=False)
    packed = pack_texts(["abcabc"], tokenizer, len(ids), add_eos=False)
    assert packed["input_ids"] == [ids]


def test_pack_texts_shorter_than_a_block(tokenizer):
    ids = tokenizer.encode("a short text", add_special_tokens=False) + [tokenizer.eos_token_id]
    assert pack_texts(["a short text"], tokenizer, 4096)["input_ids"] == [ids]  # one shorter row
    with pytest.raises(ConfigError, match="data.max_length"):
        pack_texts(["a short text"], tokenizer, 0)
