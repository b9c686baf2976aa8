"""A translation script in the shape of examples/pytorch/translation/run_translation.py, run on
`transformers.Seq2SeqTrainer` and on ours: the same losses, generated ids, metrics and files."""

from __future__ import annotations

import numpy as np
import pytest
import transformers
from cycle_helpers import demo, tiny_t5, tokenizer
from transformers import DataCollatorForSeq2Seq

import trainformers
from trainformers import ConfigError


def _rows():
    tok = tokenizer()
    pairs = demo().paired_train
    return [{"input_ids": tok(row["text_A"])["input_ids"], "labels": tok(row["text_B"])["input_ids"]} for row in pairs]


def _script(kind, tmp_path):
    """The translation example's body, with the trainer classes of `kind`."""
    lib = transformers if kind == "hf" else trainformers
    tok = tokenizer()
    model = tiny_t5(0)
    settings = dict(
        output_dir=str(tmp_path / kind), report_to="none", max_steps=8, per_device_train_batch_size=4, seed=0,
        per_device_eval_batch_size=4, learning_rate=3e-3, optim="adamw_torch", logging_steps=2, save_strategy="no",
        predict_with_generate=True, generation_max_length=8, generation_num_beams=1,
    )  # fmt: skip
    if kind == "hf":
        settings["use_cpu"] = True
    args = lib.Seq2SeqTrainingArguments(**settings)

    def compute_metrics(prediction):
        preds = np.where(prediction.predictions != -100, prediction.predictions, tok.pad_token_id)
        labels = np.where(prediction.label_ids != -100, prediction.label_ids, tok.pad_token_id)
        decoded = tok.batch_decode(preds, skip_special_tokens=True)
        references = tok.batch_decode(labels, skip_special_tokens=True)
        return {"exact": float(np.mean([p == r for p, r in zip(decoded, references)])), "gen_len": preds.shape[1]}

    rows = _rows()
    trainer = lib.Seq2SeqTrainer(
        model=model,
        args=args,
        train_dataset=rows,
        eval_dataset=rows[:8],
        data_collator=DataCollatorForSeq2Seq(tok, model=model, label_pad_token_id=-100),
        processing_class=tok,
        compute_metrics=compute_metrics,
    )
    result = trainer.train()
    metrics = trainer.evaluate(max_length=6)  # a keyword of evaluate() wins over generation_max_length
    predictions = trainer.predict(rows[:8])
    return trainer, result, metrics, predictions


def test_translation_script_gives_the_same_numbers_on_both_trainers(tmp_path):
    theirs, ours = _script("hf", tmp_path), _script("ours", tmp_path)
    losses = [[row["loss"] for row in run[0].state.log_history if "loss" in row] for run in (theirs, ours)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    assert ours[1].training_loss == pytest.approx(theirs[1].training_loss, rel=1e-5)
    assert ours[2]["eval_gen_len"] == theirs[2]["eval_gen_len"] == 20  # padded to the model's max_length
    assert ours[2]["eval_exact"] == theirs[2]["eval_exact"]
    np.testing.assert_array_equal(ours[3].predictions, theirs[3].predictions)
    np.testing.assert_array_equal(ours[3].label_ids, theirs[3].label_ids)
    pad = tokenizer().pad_token_id
    assert ours[3].predictions.shape[1] == 20 and (ours[3].predictions[:, 8:] == pad).all()  # generated 8 at most
    assert (ours[3].predictions[:, 1:8] != pad).any()


def test_seq2seq_arguments_parse_and_refuse(tmp_path):
    parser = transformers.HfArgumentParser((trainformers.Seq2SeqTrainingArguments,))
    (args,) = parser.parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--predict_with_generate", "--generation_num_beams", "2"]
    )
    assert args.predict_with_generate and args.generation_num_beams == 2
    with pytest.raises(ConfigError, match="sortish_sampler=True is not supported"):
        trainformers.Seq2SeqTrainingArguments(output_dir=str(tmp_path), sortish_sampler=True)
    with pytest.raises(ConfigError, match="generation_max_length=0"):
        trainformers.Seq2SeqTrainingArguments(output_dir=str(tmp_path), generation_max_length=0)
