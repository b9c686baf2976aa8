"""The data section end to end: source -> tokenised rows -> collator -> Trainer, for each mode."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import make_args, tiny_llama

from trainformers import Trainer
from trainformers.config import DataSection
from trainformers.data import (
    CausalLMCollator,
    PaddingFreeCollator,
    create_dataloader,
    default_corpus,
    prepare_data,
    train_tokenizer,
)
from trainformers.errors import ConfigError, DataError

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "examples" / "data" / "python_help.jsonl"


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(default_corpus()[:60], vocab_size=300)


@pytest.fixture
def corpus_jsonl(tmp_path):
    path = tmp_path / "docs.jsonl"
    with path.open("w") as handle:
        for text in default_corpus()[:30]:
            handle.write(json.dumps({"text": text, "id": 1}) + "\n")
        handle.write(json.dumps({"text": "", "id": 2}) + "\n")
    return path


def test_create_dataloader_packs_pretraining_blocks(tok, corpus_jsonl):
    loader = create_dataloader(str(corpus_jsonl), tokenizer=tok, batch_size=4, max_length=32, shuffle=False)
    batch = next(iter(loader))
    assert batch["input_ids"].shape == (4, 32) and torch.equal(batch["labels"], batch["input_ids"])
    assert "attention_mask" not in batch or bool(batch["attention_mask"].all())  # no padding at all


def test_create_dataloader_dynamic_padding(tok, corpus_jsonl):
    loader = create_dataloader(
        str(corpus_jsonl), tokenizer=tok, batch_size=3, max_length=40, shuffle=False, packing=False
    )
    batch = next(iter(loader))
    width = batch["input_ids"].shape[1]
    assert width % 8 == 0 and width <= 40
    pad = batch["attention_mask"] == 0
    assert bool((batch["labels"][pad] == -100).all())


def test_create_dataloader_padding_free_restarts_positions(tok, corpus_jsonl):
    loader = create_dataloader(
        str(corpus_jsonl), tokenizer=tok, batch_size=6, max_length=50, shuffle=False, padding_free=True
    )
    batch = next(iter(loader))
    assert "attention_mask" not in batch and batch["input_ids"].shape[1] <= 50  # bin-packed rows of <= max_length
    starts = batch["position_ids"] == 0
    assert bool(starts[:, 0].all())
    assert bool((batch["labels"][starts] == -100).all())  # no prediction across documents
    real = (batch["labels"] != -100).sum() + (starts & (batch["input_ids"] != tok.pad_token_id)).sum()
    assert int(real) > 6  # six documents' tokens, not just padding


def test_shipped_instruction_set_has_assistant_labels_everywhere(tok):
    rows = [json.loads(line) for line in SHIPPED.read_text().splitlines()]
    assert 200 <= len(rows) <= 500 and all("messages" in r for r in rows)
    data = prepare_data(
        DataSection(source=str(SHIPPED), training_mode="instruction", max_length=512, validation_split_percentage=10),
        tok,
    )
    train_stats = data.stats[0]
    assert train_stats.no_assistant == 0 and train_stats.all_masked == 0 and train_stats.skipped_empty == 0
    assert data.padding_free and isinstance(data.collator, PaddingFreeCollator)
    row = data.train[0]
    assert any(label != -100 for label in row["labels"]) and row["labels"][0] == -100  # prompt masked


@pytest.mark.parametrize("packing", [True, False])
def test_instruction_training_through_the_trainer(tmp_path, tok, packing):
    data = prepare_data(
        DataSection(
            source=str(SHIPPED),
            training_mode="instruction_finetuning",
            max_length=128,
            packing=packing,
            num_samples=40,
            validation_split_percentage=10,
        ),
        tok,
    )
    assert isinstance(data.collator, PaddingFreeCollator if packing else CausalLMCollator)
    model = tiny_llama(vocab=len(tok))
    t = Trainer(
        model,
        make_args(tmp_path, max_steps=3),
        data_collator=data.collator,
        train_dataset=data.train,
        eval_dataset=data.eval,
    )
    assert t.model.config.use_cache is False  # padding-free masking needs it off (collators module)
    out = t.train()
    assert out.training_loss == out.training_loss
    assert t.evaluate()["eval_loss"] > 0


def test_pretraining_fields_and_bad_field(tok, corpus_jsonl):
    with pytest.raises(DataError, match=r"text_field 'txt' not in columns \['text', 'id'\]"):
        prepare_data(DataSection(source=str(corpus_jsonl), text_field="txt"), tok)
    data = prepare_data(DataSection(source=str(corpus_jsonl), max_length=64, validation_split_percentage=0), tok)
    assert data.stats[0].skipped_empty == 1 and data.eval is None


def test_unknown_format_and_option_errors(tok):
    with pytest.raises(ConfigError, match="did you mean 'messages'"):
        DataSection(format="mesages")
    with pytest.raises(ConfigError, match="unknown options"):
        create_dataloader(None, tokenizer=tok, packign=True)


def test_streaming_source_trains_with_max_steps(tmp_path, tok, corpus_jsonl):
    from torch.utils.data import IterableDataset

    data = prepare_data(DataSection(source=str(corpus_jsonl), streaming=True, num_eval_samples=3, max_length=32), tok)
    assert isinstance(data.train, IterableDataset) and data.eval is not None
    t = Trainer(
        tiny_llama(vocab=len(tok)),
        make_args(tmp_path, max_steps=2),
        data_collator=data.collator,
        train_dataset=data.train,
    )
    assert t.train().global_step == 2
    with pytest.raises(ConfigError, match="max_steps"):
        Trainer(
            tiny_llama(vocab=len(tok)),
            make_args(tmp_path / "b", max_steps=-1, num_train_epochs=1),
            data_collator=data.collator,
            train_dataset=data.train,
        ).train()


def test_streaming_resume_equals_uninterrupted(tmp_path, tok, corpus_jsonl):
    """A stream cannot be skipped by index: Accelerate re-reads the consumed rows, so the resumed
    run still sees exactly the batches the uninterrupted one saw."""
    from test_trainer import CrashAt

    from trainformers import checkpoint as ckpt

    def run(out, callbacks=None, resume=None):
        data = prepare_data(
            DataSection(source=str(corpus_jsonl), streaming=True, num_eval_samples=2, max_length=32), tok
        )
        t = Trainer(
            tiny_llama(vocab=len(tok)),
            make_args(out, max_steps=8, save_strategy="steps", save_steps=3, per_device_train_batch_size=2),
            data_collator=data.collator,
            train_dataset=data.train,
            callbacks=callbacks,
        )
        t.train(resume_from_checkpoint=resume)
        return t

    full = run(tmp_path / "full")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut", callbacks=[CrashAt(5)])
    assert ckpt.latest_checkpoint(tmp_path / "cut" / "run").name == "checkpoint-3"
    resumed = run(tmp_path / "cut", resume=True)
    for name, value in resumed.model.state_dict().items():
        assert torch.equal(value, full.model.state_dict()[name]), name
