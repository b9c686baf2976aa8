"""Data sources: every kind of `data.source` as a `datasets` dataset, and the held-out split."""

from __future__ import annotations

import io
import json
import os
import random
import tracemalloc

import datasets
import pytest
from datasets.exceptions import DatasetNotFoundError

from trainformers.data import default_corpus, split_paragraphs
from trainformers.data.corpus import documents_from_lines
from trainformers.data.sources import check_text_field, load_source, load_splits
from trainformers.errors import ConfigError, DataError


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path_factory, monkeypatch):
    """Each test converts files into its own `datasets` cache, never the user's (nor its tmp_path)."""
    cache = tmp_path_factory.mktemp("hf-datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    return cache


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


ROWS = [{"text": f"doc {i}", "id": i} for i in range(6)]


# --- the embedded corpus and in-memory datasets -----------------------------------------------


def test_none_is_the_embedded_corpus():
    corpus = default_corpus()
    dataset = load_source(None)
    assert isinstance(dataset, datasets.Dataset) and dataset.column_names == ["text"]
    assert dataset["text"] == corpus
    assert load_source(None, num_samples=3)["text"] == corpus[:3]
    stream = load_source(None, streaming=True, num_samples=4)
    assert isinstance(stream, datasets.IterableDataset)
    assert [row["text"] for row in stream] == corpus[:4]


def test_in_memory_datasets():
    data = datasets.Dataset.from_list(ROWS)
    assert load_source(data) is data
    assert load_source(data, num_samples=2)["id"] == [0, 1]
    assert load_source(data, num_samples=100)["id"] == list(range(6))

    stream = data.to_iterable_dataset()
    assert load_source(stream) is stream
    assert [row["id"] for row in load_source(stream, num_samples=2)] == [0, 1]
    assert [row["id"] for row in load_source(data, streaming=True)] == list(range(6))

    splits = datasets.DatasetDict(train=data, validation=data.select([0]))
    assert load_source(splits, split="validation")["id"] == [0]
    with pytest.raises(DataError, match=r"data.split 'valid' is not in .*train, validation.*did you mean 'validation'"):
        load_source(splits, split="valid")
    with pytest.raises(DataError, match=r"data.split 'test' .* single split"):
        load_source(data, split="test")


# --- local files ------------------------------------------------------------------------------


def test_json_jsonl_csv_parquet_files(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", ROWS)
    (tmp_path / "b.json").write_text(json.dumps(ROWS))
    datasets.Dataset.from_list(ROWS).to_csv(str(tmp_path / "c.csv"), index=False)
    datasets.Dataset.from_list(ROWS).to_parquet(str(tmp_path / "d.parquet"))
    for name in ["a.jsonl", "b.json", "c.csv", "d.parquet"]:
        dataset = load_source(str(tmp_path / name))
        assert isinstance(dataset, datasets.Dataset), name
        assert dataset["text"] == [r["text"] for r in ROWS], name
        assert dataset.cache_files, f"{name} is file-backed, so map results on it are cached"
    assert load_source(tmp_path / "a.jsonl", num_samples=2)["id"] == [0, 1]  # a Path works too


def test_several_files_glob_and_streaming(tmp_path):
    write_jsonl(tmp_path / "part-1.jsonl", ROWS[:3])
    write_jsonl(tmp_path / "part-2.jsonl", ROWS[3:])
    everything = [r["id"] for r in ROWS]
    assert load_source(str(tmp_path / "part-*.jsonl"))["id"] == everything
    assert load_source([str(tmp_path / "part-2.jsonl"), str(tmp_path / "part-1.jsonl")])["id"] == [3, 4, 5, 0, 1, 2]

    stream = load_source(str(tmp_path / "part-*.jsonl"), streaming=True)
    assert isinstance(stream, datasets.IterableDataset)
    assert [row["id"] for row in stream] == everything
    assert [row["id"] for row in load_source(str(tmp_path / "part-*.jsonl"), streaming=True, num_samples=4)] == [
        0,
        1,
        2,
        3,
    ]


def test_txt_files_are_paragraph_documents(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("first para\nline two\n\n\nsecond\n", encoding="utf-8")
    assert load_source(str(path))["text"] == ["first para\nline two\n\nsecond"]  # one document of both
    big = "\n\n".join(f"paragraph {i} " + "x" * 900 for i in range(5))
    (tmp_path / "big.txt").write_text(big, encoding="utf-8")
    docs = load_source(str(tmp_path / "big.txt"))
    assert docs.column_names == ["text"] and len(docs) == 3 and docs.cache_files
    assert [row["text"] for row in load_source(str(tmp_path / "big.txt"), streaming=True)] == docs["text"]

    # The Arrow copy in the cache is keyed by the file's size and mtime: an edit is seen.
    path.write_text("changed\n\nagain, longer", encoding="utf-8")
    os.utime(path, ns=(1, 1))
    assert load_source(str(path))["text"] == ["changed\n\nagain, longer"]

    folder = tmp_path / "texts"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("alpha")
    (folder / "sub" / "b.txt").write_text("beta")
    assert load_source(str(folder))["text"] == ["alpha", "beta"]  # a directory of .txt files


def test_txt_read_line_by_line_splits_as_the_whole_text():
    rng = random.Random(0)
    pieces = ["a", "b ", " ", "\t", "\n", "\n\n", "\n \n", " \t\n"]
    for _ in range(3000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 40)))
        assert list(documents_from_lines(io.StringIO(text), max_chars=6)) == split_paragraphs(text, max_chars=6), text


def test_txt_file_with_windows_newlines_reads_as_the_whole_text(tmp_path):
    path = tmp_path / "crlf.txt"
    path.write_bytes(b"one\r\ntwo\r\n \r\n\r\nthree  \r\n\r\n")
    assert load_source(str(path))["text"] == split_paragraphs(path.read_text("utf-8")) == ["one\ntwo\n\nthree"]


def test_a_streamed_txt_file_is_held_a_paragraph_at_a_time_not_whole(tmp_path):
    """Memory does not grow with the file (bench/scaling.py found the whole file and a list of its
    documents held at once, a streamed 1 GB .txt source costing GBs)."""
    path = tmp_path / "big.txt"
    paragraph = " ".join(["word"] * 200)
    path.write_text("".join(f"{i} {paragraph}\n\n" for i in range(8000)), encoding="utf-8")  # 8 MB
    next(iter(load_source(str(path), streaming=True)))  # imports and first-use allocations out of the peak
    stream = load_source(str(path), streaming=True)
    tracemalloc.start()
    try:
        count = sum(1 for _ in stream)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 8000  # ~1 KB paragraphs: one per document of at most 2,000 characters
    assert peak < path.stat().st_size / 8, f"peak {peak / 2**20:.1f} MB while reading an 8 MB file"


def test_file_errors(tmp_path):
    with pytest.raises(DataError, match=r"^data.source '.*missing.jsonl' not found; check the path$"):
        load_source(str(tmp_path / "missing.jsonl"))
    with pytest.raises(DataError, match=r"data.source '.*nothing-\*.txt' not found \(no file matches the glob\)"):
        load_source(str(tmp_path / "nothing-*.txt"))
    write_jsonl(tmp_path / "a.jsonl", ROWS)
    with pytest.raises(DataError, match=r"data.source '.*gone.jsonl' not found"):
        load_source([str(tmp_path / "a.jsonl"), str(tmp_path / "gone.jsonl")])

    (tmp_path / "b.txt").write_text("text")
    with pytest.raises(DataError, match=r"has files of type \.jsonl, \.txt; use files of one type"):
        load_source(str(tmp_path / "*"))
    with pytest.raises(DataError, match=r"data.split 'validation' is not in data.source .* single split"):
        load_source(str(tmp_path / "a.jsonl"), split="validation")
    with pytest.raises(ConfigError, match="data.subset 'en' only applies to Hub datasets"):
        load_source(str(tmp_path / "a.jsonl"), subset="en")
    with pytest.raises(ConfigError, match="data_files only applies to a directory"):
        load_source(str(tmp_path / "a.jsonl"), data_files="x.jsonl")
    with pytest.raises(ConfigError, match="data.num_samples"):
        load_source(None, num_samples=0)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="is a directory without data files"):
        load_source(str(tmp_path / "empty"))


# --- directories ------------------------------------------------------------------------------


def test_save_to_disk_directories(tmp_path):
    datasets.Dataset.from_list(ROWS).save_to_disk(str(tmp_path / "single"))
    assert load_source(str(tmp_path / "single"))["id"] == list(range(6))
    assert [r["id"] for r in load_source(str(tmp_path / "single"), streaming=True, num_samples=2)] == [0, 1]

    splits = datasets.DatasetDict(
        train=datasets.Dataset.from_dict({"content": ["t1", "t2"]}),
        test=datasets.Dataset.from_dict({"content": ["e1"]}),
    )
    splits.save_to_disk(str(tmp_path / "dict"))
    assert load_source(str(tmp_path / "dict"), split="test")["content"] == ["e1"]
    with pytest.raises(DataError, match=r"data.split 'tset'.*train, test.*did you mean 'test'"):
        load_source(str(tmp_path / "dict"), split="tset")


def test_directory_of_data_files_has_named_splits(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", ROWS[:4])
    write_jsonl(tmp_path / "validation.jsonl", ROWS[4:])
    assert load_source(str(tmp_path))["id"] == [0, 1, 2, 3]
    assert load_source(str(tmp_path), split="validation")["id"] == [4, 5]
    assert [r["id"] for r in load_source(str(tmp_path), split="validation", streaming=True)] == [4, 5]
    with pytest.raises(DataError, match=r"data.split 'test' is not a split of data.source"):
        load_source(str(tmp_path), split="test")
    # data_files picks files inside the directory.
    assert load_source(str(tmp_path), data_files={"train": "validation.jsonl"})["id"] == [4, 5]


# --- the Hub (never reached: load_dataset is replaced) ----------------------------------------


def test_hub_names_go_to_load_dataset(monkeypatch):
    calls = []

    def fake_load_dataset(path, name=None, **kwargs):
        calls.append((path, name, kwargs))
        return datasets.Dataset.from_dict({"text": ["hub doc", "another"]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert load_source("owner/corpus", subset="en", split="validation", revision="v1", num_samples=1)["text"] == [
        "hub doc"
    ]
    assert calls[-1] == ("owner/corpus", "en", {"split": "validation", "revision": "v1", "streaming": False})
    load_source("json", data_files={"train": "a.jsonl"})  # a packaged builder with data_files
    assert calls[-1] == (
        "json",
        None,
        {"split": "train", "revision": None, "streaming": False, "data_files": {"train": "a.jsonl"}},
    )
    stream = datasets.Dataset.from_dict({"text": ["a", "b", "c"]}).to_iterable_dataset()
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: calls.append(k) or stream)
    assert [r["text"] for r in load_source("owner/big", streaming=True, num_samples=2)] == ["a", "b"]
    assert calls[-1]["streaming"] is True


@pytest.mark.parametrize(
    "error, match",
    [
        (
            DatasetNotFoundError("Dataset 'owner/nope' doesn't exist on the Hub"),
            r"data.source 'owner/nope' is neither a local path nor a Hub dataset",
        ),
        (ConnectionError("Couldn't reach 'owner/nope' on the Hub (OfflineModeIsEnabled)"), "OfflineModeIsEnabled"),
        (
            ValueError("Unknown split \"tain\". Should be one of ['train', 'test']."),
            r"data.split 'tain' is not a split of data.source 'owner/nope'",
        ),
    ],
)
def test_hub_errors_become_data_errors(monkeypatch, error, match):
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(datasets, "load_dataset", fail)
    with pytest.raises(DataError, match=match):
        load_source("owner/nope", split="tain")


# --- load_splits ------------------------------------------------------------------------------


def test_split_by_percentage_is_seeded_and_disjoint():
    data = datasets.Dataset.from_dict({"text": [f"doc {i}" for i in range(100)], "id": list(range(100))})
    train, held_out = load_splits(data, validation_split_percentage=10, seed=0)
    assert (len(train), len(held_out)) == (90, 10)
    assert sorted(list(train["id"]) + list(held_out["id"])) == list(range(100))
    again = load_splits(data, validation_split_percentage=10, seed=0)
    assert again[1]["id"] == held_out["id"] and again[0]["id"] == train["id"]
    assert load_splits(data, validation_split_percentage=10, seed=1)[1]["id"] != held_out["id"]

    assert load_splits(data, validation_split_percentage=0) == (data, None)
    assert [len(p) for p in load_splits(data.select(range(3)), validation_split_percentage=1)] == [2, 1]  # at least one
    assert [len(p) for p in load_splits(data.select(range(2)), validation_split_percentage=99)] == [
        1,
        1,
    ]  # one to train
    train, held_out = load_splits(data.select(range(1)), validation_split_percentage=50)
    assert len(train) == 1 and held_out is None
    assert [len(p) for p in load_splits(data, num_eval_samples=7)] == [93, 7]
    assert [len(p) for p in load_splits(data, num_samples=20, validation_split_percentage=10)] == [18, 2]
    with pytest.raises(ConfigError, match=r"data.validation_split_percentage must be in \[0, 100\)"):
        load_splits(data, validation_split_percentage=100)


def test_split_by_percentage_of_a_file_is_cached(tmp_path):
    # The held-out split of a file-backed dataset has a stable fingerprint, so tokenising it is cached.
    write_jsonl(tmp_path / "a.jsonl", [{"text": f"doc {i}"} for i in range(50)])
    first = load_splits(str(tmp_path / "a.jsonl"), seed=3)
    second = load_splits(str(tmp_path / "a.jsonl"), seed=3)
    assert [d._fingerprint for d in first] == [d._fingerprint for d in second]
    assert first[1]["text"] == second[1]["text"] and len(first[1]) == 2  # round(50 * 5%) = round(2.5) = 2


def test_named_eval_split(tmp_path):
    splits = datasets.DatasetDict(
        train=datasets.Dataset.from_dict({"text": ["a", "b", "c"]}),
        validation=datasets.Dataset.from_dict({"text": ["v1", "v2"]}),
    )
    train, held_out = load_splits(splits, eval_split="validation")
    assert train["text"] == ["a", "b", "c"] and held_out["text"] == ["v1", "v2"]
    assert load_splits(splits, eval_split="validation", num_eval_samples=1)[1]["text"] == ["v1"]
    with pytest.raises(DataError, match=r"^data.eval_split 'valid' is not in .*did you mean 'validation'"):
        load_splits(splits, eval_split="valid")
    with pytest.raises(ConfigError, match="data.eval_split 'train' is also data.split"):
        load_splits(splits, eval_split="train")
    write_jsonl(tmp_path / "a.jsonl", ROWS)
    with pytest.raises(DataError, match=r"data.eval_split 'validation' is not in data.source .* single split"):
        load_splits(str(tmp_path / "a.jsonl"), eval_split="validation")


def test_streaming_held_out_rows_are_the_first_k():
    stream = datasets.Dataset.from_list(ROWS).to_iterable_dataset()
    train, held_out = load_splits(stream, num_eval_samples=2)
    assert [r["id"] for r in held_out] == [0, 1] and [r["id"] for r in train] == [2, 3, 4, 5]
    assert load_splits(stream, validation_split_percentage=0) == (stream, None)
    with pytest.raises(ConfigError, match=r"can't be carved from a stream .* data.eval_split .* data.num_eval_samples"):
        load_splits(stream, validation_split_percentage=5)
    splits = datasets.IterableDatasetDict(train=stream, validation=stream.take(1))
    assert [r["id"] for r in load_splits(splits, eval_split="validation", streaming=True)[1]] == [0]


# --- check_text_field -------------------------------------------------------------------------


def test_check_text_field():
    data = datasets.Dataset.from_dict({"text": ["a"], "id": [1], "tokens": [[1, 2]]})
    assert check_text_field(data, "text") == ["text"]
    assert check_text_field(data, ["text", "text"]) == ["text", "text"]
    with pytest.raises(DataError) as info:
        check_text_field(data, "txt")
    assert str(info.value) == (
        "data.text_field 'txt' not in columns ['text', 'id', 'tokens'] (did you mean 'text'?); set data.text_field"
    )
    with pytest.raises(DataError, match="data.text_field 'id' holds int64 values, not text"):
        check_text_field(data, "id")
    with pytest.raises(DataError, match="data.text_field 'tokens' holds list values, not text"):
        check_text_field(data, ["text", "tokens"])
    with pytest.raises(DataError, match="pass one split"):
        check_text_field(datasets.DatasetDict(train=data), "text")

    def rows():
        yield {"body": "x", "id": 1}

    unknown = datasets.IterableDataset.from_generator(rows)  # features unknown until read
    assert unknown.column_names is None
    assert check_text_field(unknown, "body") == ["body"]
    with pytest.raises(DataError, match=r"not in columns \['body', 'id'\]"):
        check_text_field(unknown, "text")
