"""Data mixtures (`data.sources`): checked entries, per-source formats, weights, counts, determinism, resume."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys

import datasets
import numpy as np
import pytest
import torch
import yaml
from conftest import make_args, tiny_llama
from test_trainer import CrashAt

from trainformers import Trainer
from trainformers import checkpoint as ckpt
from trainformers.config import DataSection, load_config
from trainformers.data import create_dataloader, default_corpus, prepare_data, train_tokenizer
from trainformers.data.mixture import Mixture, mix
from trainformers.data.stats import DataStats
from trainformers.errors import ConfigError


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path_factory, monkeypatch):
    """Each test converts files into its own `datasets` cache, never the user's."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.mktemp("hf-datasets"))


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(default_corpus()[:60], vocab_size=300, chat_tokens=True)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture
def files(tmp_path):
    """Two pretraining sources whose text sits in different columns: 300 'alpha' and 100 'beta' documents."""
    a = write_jsonl(tmp_path / "a.jsonl", [{"text": f"alpha {i}"} for i in range(300)])
    b = write_jsonl(tmp_path / "b.jsonl", [{"content": f"beta {i}", "id": i} for i in range(100)])
    return a, b


def two_sources(files, a: dict, b: dict, **options) -> DataSection:
    """a.jsonl and b.jsonl (its text in `content`) as data.sources: a row per document, none held out unless asked."""
    entries = [{"source": files[0], **a}, {"source": files[1], "text_field": "content", **b}]
    return DataSection(sources=entries, **{"packing": False, "validation_split_percentage": 0, **options})


def texts(tok, rows) -> list[str]:
    return [tok.decode(ids, skip_special_tokens=True) for ids in rows["input_ids"]]


# --- the entries ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sources", "message"),
    [
        (
            [{"source": "a.jsonl", "wieght": 1}],
            r"unknown key 'wieght' in data.sources\[0\] \(did you mean 'weight'\?\)",
        ),
        ([{"source": "a", "weight": 1}, {"split": "train"}], r"data.sources\[1\] has no source"),
        ([{"source": "a", "weight": 1}, {"source": "b"}], r"data.sources\[0\] has a weight but data.sources\[1\]"),
        ([{"source": "a", "weight": 0}], r"data.sources\[0\].weight=0 must be a number > 0"),
        ([{"source": "a", "weight": "high"}], r"weight='high' must be a number"),
        ([{"source": "a"}, {"source": "b", "format": "mesages"}], r"data.sources\[1\].format='mesages'.*'messages'"),
        ([{"source": "a", "num_samples": 0}], r"data.sources\[0\].num_samples=0 must be an integer >= 1"),
        ([{"source": "a", "split": 5}], r"data.sources\[0\].split must be a string"),
        (
            [{"source": "a", "format": "template"}],
            r"data.sources\[0\].format='template' needs data.sources\[0\].template",
        ),
        (["a.jsonl"], r"data.sources\[0\] must be a mapping"),
        ([], r"must be a non-empty list"),
    ],
)
def test_bad_entries_are_refused_in_one_line_naming_the_entry(sources, message):
    with pytest.raises(ConfigError, match=message):
        DataSection(sources=sources)


def test_source_and_sources_together_and_streams_without_weights_are_refused():
    with pytest.raises(ConfigError, match="Can't set both data.source and data.sources"):
        DataSection(source="a.jsonl", sources=[{"source": "b.jsonl"}])
    with pytest.raises(ConfigError, match="streaming with data.sources needs a weight on every source"):
        DataSection(sources=[{"source": "a"}, {"source": "b"}], streaming=True)
    with pytest.raises(ConfigError, match="did you mean 'first_exhausted'"):
        DataSection(stopping_strategy="first_exhaused")
    with pytest.raises(ConfigError, match="create_dataloader reads one source"):
        create_dataloader(None, tokenizer=None, sources=[{"source": "a.jsonl"}])


def test_a_run_file_with_sources_loads_and_its_saved_config_reads_back_equal(tmp_path):
    run = tmp_path / "run.yaml"
    run.write_text(
        "data:\n  text_field: content\n  sources:\n"
        "    - {source: a.jsonl, weight: 0.7, text_field: text}\n    - {source: b.jsonl, weight: 0.3}\n"
    )
    config = load_config(run)
    assert config.data.sources[1] == {"source": "b.jsonl", "weight": 0.3}
    saved = tmp_path / "saved.yaml"
    config.save(saved)
    assert load_config(saved) == config
    with pytest.raises(ConfigError, match=r"unknown key 'txt_field' in data.sources\[0\]"):
        load_config(None, ["--data.sources", "[{source: a.jsonl, txt_field: x}]"])


# --- what a mixture holds ---------------------------------------------------------------------


def test_each_source_reads_its_own_text_field_and_num_samples_takes_exact_counts(tok, files):
    data = two_sources(files, {"num_samples": 40}, {"num_samples": 15})
    prepared = prepare_data(data, tok)
    rows = texts(tok, prepared.train)
    assert sum(t.startswith("alpha") for t in rows) == 40 and sum(t.startswith("beta") for t in rows) == 15
    assert sorted(rows) == sorted([f"alpha {i}" for i in range(40)] + [f"beta {i}" for i in range(15)])  # the first N
    assert "a.jsonl 40 rows = 72.7%, " in prepared.summary() and "b.jsonl 15 rows = 27.3%" in prepared.summary()


def test_instruction_sources_in_different_formats_become_the_same_rows(tok, tmp_path):
    chats = [
        {"messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"chat {i}"}]}
        for i in range(12)
    ]
    alpaca = [{"instruction": f"do {i}", "input": "", "output": f"done {i}"} for i in range(8)]
    data = DataSection(
        sources=[
            {"source": write_jsonl(tmp_path / "m.jsonl", chats)},
            {"source": write_jsonl(tmp_path / "al.jsonl", alpaca), "format": "alpaca", "system_prompt": "Be brief."},
        ],
        training_mode="instruction",
        packing=False,
        validation_split_percentage=0,
    )
    prepared = prepare_data(data, tok)
    assert prepared.train.column_names == ["input_ids", "labels"] and len(prepared.train) == 20
    rendered = [tok.decode(ids) for ids in prepared.train["input_ids"]]
    assert sum("chat" in r for r in rendered) == 12
    alpaca_rows = [r for r in rendered if "done" in r]
    assert len(alpaca_rows) == 8 and all("Be brief." in r for r in alpaca_rows)  # that source's system prompt only
    assert not any("Be brief." in r for r in rendered if "chat" in r)
    for row in prepared.train:  # the loss is on the answers, whatever the source's format
        answer = tok.decode([t for t, label in zip(row["input_ids"], row["labels"]) if label != -100])
        assert answer.strip().startswith(("chat", "done"))


def test_weights_give_their_shares_within_the_measured_spread(tok, files):
    """3:1 weights over 300 and 100 documents (all_exhausted, the default). Measured over seeds 0-99 of
    the same draw (docs/design-log.md, data mixtures): mean share of the first source 0.749, standard
    deviation 0.022 (the binomial sqrt(p(1-p)/n) at n ~ 400), largest deviation 0.094."""
    data = two_sources(files, {"weight": 3}, {"weight": 1}, seed=0)
    prepared = prepare_data(data, tok)
    rows = texts(tok, prepared.train)
    alpha = sum(t.startswith("alpha") for t in rows)
    assert abs(alpha / len(rows) - 0.75) < 0.07  # about 3 standard deviations
    assert {t for t in rows if t.startswith("alpha")} == {f"alpha {i}" for i in range(300)}  # all_exhausted: every row
    assert f"a.jsonl {alpha} rows" in prepared.summary() and "(weight 3)" in prepared.summary()

    parts = [datasets.Dataset.from_dict({"input_ids": [[i]] * n}) for i, n in enumerate((300, 100))]
    counted = [(p, DataStats(rows_in=len(p), rows_out=len(p))) for p in parts]
    for strategy in ("all_exhausted", "first_exhausted"):
        shares = []
        for seed in range(20):
            mixed, _ = mix(Mixture([data, data], parts, [3.0, 1.0], seed, strategy), counted, "train")
            shares.append(mixed["input_ids"].count([0]) / len(mixed))
        assert abs(np.mean(shares) - 0.75) < 0.02 and max(abs(s - 0.75) for s in shares) < 0.1, (strategy, shares)


def test_first_exhausted_repeats_nothing_and_all_exhausted_repeats_the_smaller_share(tok, files):
    data = two_sources(files, {"weight": 1}, {"weight": 1}, seed=1)
    first = texts(tok, prepare_data(dataclasses.replace(data, stopping_strategy="first_exhausted"), tok).train)
    assert len(first) == len(set(first)) and {f"beta {i}" for i in range(100)} <= set(first)  # stops when b runs out
    every = texts(tok, prepare_data(data, tok).train)
    assert set(every) == {f"alpha {i}" for i in range(300)} | {f"beta {i}" for i in range(100)}
    assert sum(t.startswith("beta") for t in every) > 200  # 1:1 over 300 + 100 rows: b read about three times


def test_the_same_seed_builds_the_same_mixture_and_held_out_rows_stay_out_of_it(tok, files):
    data = two_sources(files, {"weight": 2}, {"weight": 1}, validation_split_percentage=10, seed=3)
    one, two = prepare_data(data, tok), prepare_data(data, tok)
    assert one.train["input_ids"] == two.train["input_ids"] and one.eval["input_ids"] == two.eval["input_ids"]
    other = prepare_data(dataclasses.replace(data, seed=4), tok)
    assert other.train["input_ids"] != one.train["input_ids"]
    held_out = texts(tok, one.eval)
    assert sum(t.startswith("alpha") for t in held_out) == 30 and sum(t.startswith("beta") for t in held_out) == 10
    assert not set(held_out) & set(texts(tok, one.train))  # carved per source, before mixing


# --- training and resuming ------------------------------------------------------------------------


@pytest.mark.parametrize("streaming", [False, True])
def test_resume_of_a_mixture_equals_the_uninterrupted_run(tmp_path, tok, files, streaming):
    """Stopped in a later epoch (pass) than the first and resumed: the same losses and weights. A stream's
    passes differ (set_epoch reseeds the interleave), so this also pins that a resumed stream starts in
    its saved pass, not the first."""
    a, b = {"weight": 3, "num_samples": 40}, {"weight": 1, "num_samples": 20}
    data = two_sources(files, a, b, max_length=16, streaming=streaming, packing=True, seed=0)

    def run(out, callbacks=None, resume=None):
        prepared = prepare_data(data, tok)  # rebuilt by every run, as the CLI does
        args = make_args(
            out,
            max_steps=14,
            per_device_train_batch_size=4,
            gradient_accumulation_steps=2,
            save_strategy="steps",
            save_steps=4,
            dataloader_drop_last=True,
        )
        t = Trainer(
            tiny_llama(vocab=len(tok)),
            args,
            data_collator=prepared.collator,
            train_dataset=prepared.train,
            callbacks=callbacks,
        )
        t.train(resume_from_checkpoint=resume)
        return t

    full = run(tmp_path / "full")
    assert full.state.epoch >= 2  # the resumed run starts in a later pass (a stream's passes differ: set_epoch)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut", callbacks=[CrashAt(19)])
    assert ckpt.latest_checkpoint(tmp_path / "cut" / "run").name == "checkpoint-8"
    resumed = run(tmp_path / "cut", resume=True)
    losses = [(r["step"], r["loss"]) for r in resumed.state.log_history if "loss" in r]
    assert losses[-6:] == [(r["step"], r["loss"]) for r in full.state.log_history if "loss" in r][-6:]
    for name, value in resumed.model.state_dict().items():
        assert torch.equal(value, full.model.state_dict()[name]), name


@pytest.mark.slow
def test_cli_prints_each_sources_rows_and_share_and_saves_them(tmp_path, files):
    a, b = files
    run = {
        "model": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "num_kv_heads": 1, "vocab_size": 300},
        "data": {
            "max_length": 16,
            "packing": False,
            "sources": [{"source": a, "weight": 3}, {"source": b, "weight": 1, "text_field": "content"}],
        },
        "training": {"output_dir": "out", "max_steps": 2, "eval_strategy": "no", "report_to": [], "seed": 0},
    }
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(run))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "trainformers.cli", "train", "run.yaml", "--model.sample_prompt", "''"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("model:"))
    assert "mixture by weight (all_exhausted, seed 0): " in line and "a.jsonl" in line and "(weight 3)" in line
    shares = [
        float(share) for share in re.findall(r"rows = ([\d.]+)%", line.split("mixture by weight")[1].split(" | ")[0])
    ]
    assert abs(shares[0] - 75) < 7 and abs(sum(shares) - 100) < 0.2
    saved = (tmp_path / "out" / "config.yaml").read_text()
    assert "# data as built: train:" in saved and "(weight 3)" in saved
    assert load_config(tmp_path / "out" / "config.yaml").data.sources == run["data"]["sources"]
