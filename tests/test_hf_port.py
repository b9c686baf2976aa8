"""An HF-Trainer script runs unchanged after swapping the import (seed-era spellings included)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers
from datasets import Dataset

import trainformers
from trainformers.data import train_tokenizer


def hf_style_script(lib, tmp_path):
    """What an HF text-classification tutorial does, older argument spellings and all."""
    tokenizer = train_tokenizer(["good movie", "bad movie", "great film", "awful film"] * 30, 280)
    rows = [
        {"text": t, "label": int(t.startswith(("good", "great")))}
        for t in ["good movie", "bad movie", "great film", "awful film", "good film", "bad film"] * 6
    ]
    ds = Dataset.from_list(rows).map(lambda b: tokenizer(b["text"]), batched=True)
    split = ds.train_test_split(test_size=0.25, seed=0)
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(
        transformers.BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=32,
            num_labels=2,
            pad_token_id=tokenizer.pad_token_id,
        )
    )

    def compute_metrics(eval_pred):
        logits, labels = eval_pred
        return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}

    kwargs = dict(
        output_dir=str(tmp_path / lib.__name__),
        learning_rate=5e-3,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=8,
        num_train_epochs=2,
        weight_decay=0.01,
        warmup_steps=1,
        eval_strategy="epoch",
        save_strategy="epoch",
        load_best_model_at_end=True,
        report_to="none",
        logging_steps=1,
        disable_tqdm=True,
        seed=0,
    )
    if lib is trainformers:  # the seed-era spellings transformers 5 rejects: ours accepts them
        kwargs.pop("eval_strategy")
        kwargs.pop("warmup_steps")
        kwargs.update(evaluation_strategy="epoch", warmup_ratio=0.1)
        with pytest.warns(FutureWarning):
            args = lib.TrainingArguments(**kwargs)
        extra = {"tokenizer": tokenizer}
    else:
        args = lib.TrainingArguments(**kwargs)
        extra = {"processing_class": tokenizer}
    trainer = lib.Trainer(
        model=model,
        args=args,
        train_dataset=split["train"],
        eval_dataset=split["test"],
        data_collator=transformers.DataCollatorWithPadding(tokenizer),
        compute_metrics=compute_metrics,
        **extra,
    )
    output = trainer.train()
    metrics = trainer.evaluate()
    predictions = trainer.predict(split["test"])
    trainer.save_model(str(tmp_path / lib.__name__ / "final"))
    return output, metrics, predictions


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_hf_tutorial_script_runs_with_either_import(tmp_path):
    hf_out, hf_metrics, hf_pred = hf_style_script(transformers, tmp_path)
    out, metrics, pred = hf_style_script(trainformers, tmp_path)
    assert type(out).__name__ == type(hf_out).__name__ == "TrainOutput" and out.global_step == hf_out.global_step
    for key in ("eval_loss", "eval_accuracy", "eval_runtime", "eval_samples_per_second", "epoch"):
        assert key in metrics and key in hf_metrics, key
    assert pred.predictions.shape == hf_pred.predictions.shape and (pred.label_ids == hf_pred.label_ids).all()
    assert set(pred.metrics) >= {"test_loss", "test_accuracy"}
    reloaded = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "trainformers" / "final")
    assert reloaded.config.num_labels == 2
