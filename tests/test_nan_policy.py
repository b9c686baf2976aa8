"""A non-finite loss or gradient is caught before the optimizer step (`nan_policy`), and logged as it is."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import PadCollator, lm_rows, make_args, tiny_llama, weights

from trainformers import Trainer, TrainerCallback
from trainformers.checkpoint import read_weights
from trainformers.errors import ConfigError, NonFiniteLossError


class InfAt(Trainer):
    """A Trainer whose loss is infinite on the optimizer steps in `bad` (1-based)."""

    bad: set[int] = set()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        return loss * float("inf") if self.state.global_step + 1 in self.bad else loss


class Snapshots(TrainerCallback):
    """The weights after every optimizer step."""

    def __init__(self) -> None:
        self.after: dict[int, dict[str, torch.Tensor]] = {}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.after[state.global_step] = weights(model)


def _trainer(tmp_path, bad, **overrides):
    InfAt.bad = set(bad)
    args = make_args(tmp_path, **overrides)
    snaps = Snapshots()
    trainer = InfAt(
        model=tiny_llama(), args=args, train_dataset=lm_rows(32), data_collator=PadCollator(), callbacks=[snaps]
    )
    return trainer, snaps


def _all_finite(state: dict[str, torch.Tensor]) -> bool:
    return all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())


def test_stop_names_the_step_and_keeps_checkpoints_clean(tmp_path):
    trainer, snaps = _trainer(tmp_path, bad={3}, save_strategy="steps", save_steps=2)
    with pytest.raises(NonFiniteLossError) as info:
        trainer.train()
    message = str(info.value)
    assert "\n" not in message and message.startswith("optimizer step 3: the loss inf") and "nan_policy" in message
    assert _all_finite(weights(trainer.model))
    assert max(snaps.after) == 2  # nothing after step 2 was applied
    assert all(torch.equal(v, snaps.after[2][k]) for k, v in weights(trainer.model).items())
    saved = read_weights(tmp_path / "run" / "checkpoint-2")
    assert _all_finite(saved) and not (tmp_path / "run" / "checkpoint-4").exists()


def test_a_diverging_learning_rate_stops_instead_of_poisoning(tmp_path):
    args = make_args(tmp_path, learning_rate=1e6, max_steps=30, max_grad_norm=0.0)
    trainer = Trainer(model=tiny_llama(), args=args, train_dataset=lm_rows(64), data_collator=PadCollator())
    with pytest.raises(NonFiniteLossError, match=r"^optimizer step \d+: "):
        trainer.train()
    assert _all_finite(weights(trainer.model))


def test_skip_step_drops_the_update_and_counts_it(tmp_path):
    trainer, snaps = _trainer(tmp_path, bad={3}, nan_policy="skip_step", max_steps=5)
    trainer.train()
    assert all(torch.equal(snaps.after[3][k], snaps.after[2][k]) for k in snaps.after[2])  # step 3: no update
    assert not all(torch.equal(snaps.after[4][k], snaps.after[3][k]) for k in snaps.after[3])
    rows = {r["step"]: r for r in trainer.state.log_history if "loss" in r}
    assert rows[3].get("skipped_steps") == 1 and math.isnan(rows[3]["loss"])  # the real value, no substitute
    assert all("skipped_steps" not in rows[s] and math.isfinite(rows[s]["loss"]) for s in (1, 2, 4, 5))
    assert trainer.optimizer.state_dict()["state"][0]["step"] == 4  # four updates in five steps
    assert math.isfinite(trainer.state.log_history[-1]["train_loss"])  # the mean of the steps taken


def test_skip_step_stops_after_the_limit_in_a_row(tmp_path):
    trainer, _ = _trainer(tmp_path, bad={2, 3, 4, 5, 6}, nan_policy="skip_step", nan_skip_limit=3)
    with pytest.raises(NonFiniteLossError, match=r"^optimizer step 4: 3 steps in a row .*nan_skip_limit=3"):
        trainer.train()
    assert _all_finite(weights(trainer.model))


def test_ignore_updates_anyway_as_transformers_does(tmp_path):
    trainer, _ = _trainer(tmp_path, bad={3}, nan_policy="ignore", max_steps=4)
    trainer.train()
    assert not _all_finite(weights(trainer.model))
    rows = [r for r in trainer.state.log_history if "loss" in r]
    # logging_nan_inf_filter: the row of step 3 has no earlier finite step to average, so it shows NaN, never 0.0
    assert math.isnan(rows[2]["loss"])


def test_the_policy_is_checked():
    with pytest.raises(ConfigError, match="nan_policy='halt' is not supported"):
        make_args_plain(nan_policy="halt")
    with pytest.raises(ConfigError, match="nan_skip_limit"):
        make_args_plain(nan_skip_limit=0)


def make_args_plain(**overrides):
    from trainformers import TrainingArguments

    return TrainingArguments(output_dir="unused", report_to="none", **overrides)
