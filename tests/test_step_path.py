"""The per-step fast path (issue 8): torch calls where Accelerate's wrappers would add nothing, same weights.

bench/step_overhead.py measures what the path saves; these tests pin down that it is taken
where it is correct, that it is left where it is not, and that it changes no number.
"""

from __future__ import annotations

import accelerate
import pytest
import torch
from accelerate.optimizer import AcceleratedOptimizer
from conftest import PadCollator, lm_rows, make_args, tiny_llama, weights
from datasets import Dataset

from trainformers import Trainer
from trainformers.losses import lm_loss
from trainformers.step import StepKernel


def _train(tmp_path, name, **overrides):
    trainer = Trainer(
        model=tiny_llama(),
        args=make_args(tmp_path / name, **overrides),
        train_dataset=lm_rows(32),
        data_collator=PadCollator(),
    )
    trainer.train()
    return trainer


def _forbid(monkeypatch, target, name):
    def refuse(*args, **kwargs):
        raise AssertionError(f"{name} was called on the fast path")

    monkeypatch.setattr(target, name, refuse)


def test_plain_cpu_run_bypasses_accelerate_wrappers_and_label_counting(tmp_path, monkeypatch):
    _forbid(monkeypatch, accelerate.Accelerator, "backward")
    _forbid(monkeypatch, accelerate.Accelerator, "clip_grad_norm_")
    _forbid(monkeypatch, AcceleratedOptimizer, "step")
    _forbid(monkeypatch, StepKernel, "count_items")
    trainer = _train(tmp_path, "fast", max_steps=3, max_grad_norm=1.0)
    assert trainer.state.global_step == 3


def test_accumulation_windows_still_count_labels(tmp_path, monkeypatch):
    calls = []
    original = StepKernel.count_items
    monkeypatch.setattr(
        StepKernel,
        "count_items",
        lambda self, window, count: calls.append(len(window)) or original(self, window, count),
    )
    _train(tmp_path, "ga", max_steps=2, per_device_train_batch_size=2, gradient_accumulation_steps=2)
    assert calls == [2, 2]


def test_compute_loss_func_still_gets_the_label_count(tmp_path):
    seen = []

    def loss_func(outputs, labels, num_items_in_batch=None):
        seen.append(num_items_in_batch)
        return lm_loss(outputs.logits, labels, shift=True, num_items_in_batch=num_items_in_batch)

    trainer = Trainer(
        model=tiny_llama(),
        args=make_args(tmp_path / "f", max_steps=2),
        train_dataset=lm_rows(32),
        data_collator=PadCollator(),
        compute_loss_func=loss_func,
    )
    trainer.train()
    assert len(seen) == 2 and all(isinstance(n, torch.Tensor) and int(n) > 0 for n in seen)


@pytest.mark.parametrize("accumulation", [1, 2])
def test_fast_path_trains_the_same_weights_as_accelerates(tmp_path, monkeypatch, accumulation):
    overrides = dict(
        max_steps=4,
        per_device_train_batch_size=4 // accumulation,
        gradient_accumulation_steps=accumulation,
        max_grad_norm=0.5,
    )
    fast = weights(_train(tmp_path, "fast", **overrides).model)

    original = StepKernel.__init__

    def through_accelerate(self, *args, **kwargs):
        original(self, *args, **kwargs)
        self.direct, self.direct_backward = None, False

    monkeypatch.setattr(StepKernel, "__init__", through_accelerate)
    slow = weights(_train(tmp_path, "slow", **overrides).model)
    assert fast.keys() == slow.keys()
    for key in fast:
        torch.testing.assert_close(fast[key], slow[key], rtol=1e-6, atol=1e-7, msg=key)


def test_counting_or_not_gives_the_same_weights(tmp_path):
    """One micro-batch: the model's mean equals sum / count, which compute_loss_func makes the loop use."""
    plain = weights(_train(tmp_path, "plain", max_steps=4).model)

    def loss_func(outputs, labels, num_items_in_batch=None):
        return lm_loss(outputs.logits, labels, shift=True, num_items_in_batch=num_items_in_batch)

    trainer = Trainer(
        model=tiny_llama(),
        args=make_args(tmp_path / "counted", max_steps=4),
        train_dataset=lm_rows(32),
        data_collator=PadCollator(),
        compute_loss_func=loss_func,
    )
    trainer.train()
    counted = weights(trainer.model)
    for key in plain:
        torch.testing.assert_close(plain[key], counted[key], rtol=1e-5, atol=1e-6, msg=key)


class _OwnLoss(torch.nn.Module):
    """A model that makes its loss from input_ids alone: the batch holds no labels to count."""

    def __init__(self):
        super().__init__()
        self.lm = tiny_llama()

    def forward(self, input_ids, attention_mask=None):
        return {"loss": self.lm(input_ids=input_ids, labels=input_ids).loss}


def test_accumulation_without_labels_averages_the_micro_batch_means(tmp_path):
    """No labels to count: each micro-batch weighs 1/k, so 4 x 1 and 2 x 2 take the same steps (plain SGD
    shows any scale). Before the step kernel, the k means were summed: twice the gradient at k=2."""
    rows = Dataset.from_list([{"input_ids": r["input_ids"][:4]} for r in lm_rows(16, min_len=4)])

    def run(name, batch, accumulation):
        trainer = Trainer(
            model=_OwnLoss(),
            args=make_args(
                tmp_path / name,
                max_steps=3,
                per_device_train_batch_size=batch,
                gradient_accumulation_steps=accumulation,
                optim="sgd",
                max_grad_norm=0.0,  # clipping would hide a scale error
                learning_rate=0.5,
                train_sampling_strategy="sequential",
            ),
            train_dataset=rows,
        )
        trainer.train()
        return weights(trainer.model), [row["loss"] for row in trainer.state.log_history if "loss" in row]

    (one, one_losses), (two, two_losses) = run("one", 4, 1), run("two", 2, 2)
    assert one_losses == pytest.approx(two_losses, rel=1e-5)
    for key in one:
        torch.testing.assert_close(one[key], two[key], rtol=1e-5, atol=1e-6, msg=key)
