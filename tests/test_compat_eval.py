"""Evaluation follows the user's code, as in transformers: each case runs the same client code on
`transformers.Trainer` and on ours and asserts the same outcome."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers
from conftest import PadCollator, lm_rows, tiny_llama

import trainformers

KINDS = ["hf", "ours"]


def _args(kind, tmp_path, **overrides):
    settings = dict(output_dir=str(tmp_path / kind), report_to="none", per_device_eval_batch_size=4, **overrides)
    if kind == "hf":
        return transformers.TrainingArguments(use_cpu=True, **settings)
    return trainformers.TrainingArguments(disable_tqdm=True, **settings)


def _base(kind):
    return transformers.Trainer if kind == "hf" else trainformers.Trainer


def _label_count(prediction):
    return {"labelled": int((np.asarray(prediction.label_ids) != -100).sum())}


@pytest.mark.parametrize("kind", KINDS)
def test_a_compute_loss_that_pops_labels_keeps_metrics_and_label_ids(tmp_path, kind):
    class PopsLabels(_base(kind)):  # the HF docs' own pattern
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs.pop("labels")
            outputs = model(**inputs)
            logits = outputs.logits[:, :-1].reshape(-1, outputs.logits.shape[-1])
            loss = torch.nn.functional.cross_entropy(logits, labels[:, 1:].reshape(-1), ignore_index=-100)
            return (loss, outputs) if return_outputs else loss

    rows = lm_rows(10)
    trainer = PopsLabels(
        model=tiny_llama(), args=_args(kind, tmp_path), data_collator=PadCollator(), compute_metrics=_label_count
    )
    metrics = trainer.evaluate(rows)
    expected = sum(len(r["labels"]) for r in rows)
    assert metrics["eval_labelled"] == expected and "eval_loss" in metrics
    assert trainer.predict(rows).label_ids is not None


class _ReturnsLoss(torch.nn.Module):
    """CLIP's contract: forward(return_loss=True) makes a loss from the inputs alone."""

    def __init__(self):
        super().__init__()
        self.lm = tiny_llama()

    def forward(self, input_ids, attention_mask=None, return_loss=True):
        out = self.lm(input_ids=input_ids, attention_mask=attention_mask, labels=input_ids if return_loss else None)
        return {"loss": out.loss, "logits": out.logits} if return_loss else {"logits": out.logits}


def _unlabelled(n):
    return [{"input_ids": r["input_ids"][:6], "attention_mask": [1] * 6} for r in lm_rows(n, min_len=6)]


def _stack(rows):
    return {k: torch.tensor([r[k] for r in rows]) for k in rows[0]}


@pytest.mark.parametrize("kind", KINDS)
def test_a_model_that_makes_its_own_loss_gets_eval_loss(tmp_path, kind):
    trainer = _base(kind)(model=_ReturnsLoss(), args=_args(kind, tmp_path, label_names=[]), data_collator=_stack)
    metrics = trainer.evaluate(_unlabelled(8))
    assert np.isfinite(metrics["eval_loss"])


def test_own_loss_matches_between_trainers(tmp_path):
    values = []
    for kind in KINDS:
        torch.manual_seed(0)
        trainer = _base(kind)(model=_ReturnsLoss(), args=_args(kind, tmp_path, label_names=[]), data_collator=_stack)
        values.append(trainer.evaluate(_unlabelled(8))["eval_loss"])
    assert values[1] == pytest.approx(values[0], rel=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_a_subclass_that_hides_compute_metrics_still_gets_predictions(tmp_path, kind):
    """The question-answering example: evaluate() runs evaluation_loop with compute_metrics unset and
    post-processes output.predictions itself."""

    class PostProcesses(_base(kind)):
        def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
            compute_metrics, self.compute_metrics = self.compute_metrics, None
            try:
                output = self.evaluation_loop(
                    self.get_eval_dataloader(eval_dataset),
                    description="Evaluation",
                    prediction_loss_only=True if compute_metrics is None else None,
                    ignore_keys=ignore_keys,
                    metric_key_prefix=metric_key_prefix,
                )
            finally:
                self.compute_metrics = compute_metrics
            return {"predicted_rows": len(output.predictions)}

    trainer = PostProcesses(
        model=tiny_llama(), args=_args(kind, tmp_path), data_collator=PadCollator(), compute_metrics=_label_count
    )
    assert trainer.evaluate(lm_rows(10)) == {"predicted_rows": 10}


@pytest.mark.parametrize("kind", KINDS)
def test_predict_with_batch_metrics_returns_predictions_and_labels(tmp_path, kind):
    calls = []

    def batch_metrics(prediction, compute_result):
        calls.append(compute_result)
        return {"batches": len(calls)} if compute_result else None

    trainer = _base(kind)(
        model=tiny_llama(),
        args=_args(kind, tmp_path, batch_eval_metrics=True),
        data_collator=PadCollator(),
        compute_metrics=batch_metrics,
    )
    out = trainer.predict(lm_rows(10))
    assert out.predictions is not None and out.label_ids is not None and len(out.label_ids) == 10
    assert out.metrics["test_batches"] == 3 and calls == [False, False, True]
