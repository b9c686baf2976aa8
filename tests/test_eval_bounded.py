"""Evaluation keeps only what it needs: invariants of `EvalAccumulator` and `Trainer.evaluate/predict`.

Memory is checked by what the accumulator holds, not by measuring it (bench/eval_memory.py does).
"""

from __future__ import annotations

from functools import reduce

import numpy as np
import pytest
import torch
from conftest import VOCAB, PadCollator, lm_rows, make_args, tiny_llama
from transformers.trainer_pt_utils import nested_concat, nested_numpify

from trainformers import Trainer, evaluation
from trainformers.evaluation import EvalAccumulator, concat_outputs, to_host


def _trainer(tmp_path, **overrides):
    return Trainer(tiny_llama(), make_args(tmp_path, **overrides), data_collator=PadCollator())


@pytest.fixture
def spy(monkeypatch):
    """Every EvalAccumulator at `finish`, and the most batches it held on the device after any `add`."""
    seen: dict = {"finished": [], "max_on_device": 0, "stored_shapes": []}
    add, finish = EvalAccumulator.add, EvalAccumulator.finish

    def spy_add(self, *args, **kwargs):
        add(self, *args, **kwargs)
        seen["max_on_device"] = max(seen["max_on_device"], len(self._on_device))
        stored = self._on_device + self.batches
        seen["stored_shapes"] += [tuple(e[0].shape) for e in stored[-1:] if e[0] is not None]

    def spy_finish(self, *args, **kwargs):
        seen["finished"].append((len(self.batches), len(self._on_device), self._pending, self.loss_sum, self.item_sum))
        return finish(self, *args, **kwargs)

    monkeypatch.setattr(EvalAccumulator, "add", spy_add)
    monkeypatch.setattr(EvalAccumulator, "finish", spy_finish)
    return seen


def _token_mean(model, data) -> float:
    """The mean next-token loss over every label token of the set, one row at a time, in float64."""
    total, count = 0.0, 0
    with torch.no_grad():
        for row in data:
            ids = torch.tensor([row["input_ids"]])
            logits = model(input_ids=ids).logits[0, :-1].double()
            total += torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
            count += ids.shape[1] - 1
    return total / count


@pytest.mark.parametrize("setting", ["no_metrics", "prediction_loss_only"])
def test_loss_only_keeps_two_device_scalars_and_the_exact_token_mean(tmp_path, spy, setting):
    data = lm_rows(10, seed=1)  # lengths 4..12, batches of 4, 4, 2: batch means would be biased
    t = _trainer(tmp_path, prediction_loss_only=setting == "prediction_loss_only")
    if setting == "prediction_loss_only":
        t.compute_metrics = lambda pred: pytest.fail("compute_metrics runs without outputs")
    metrics = t.evaluate(data)
    [(batches, on_device, pending, loss_sum, item_sum)] = spy["finished"]
    assert (batches, on_device, pending) == (0, 0, None)
    assert loss_sum.dim() == item_sum.dim() == 0
    assert metrics["eval_loss"] == pytest.approx(_token_mean(t.model, data), rel=1e-5)


def _predict(tmp_path, data, **overrides):
    captured = {}

    def compute_metrics(pred):
        captured.update(inputs=pred.inputs, losses=pred.losses)
        return {}

    t = _trainer(tmp_path, per_device_eval_batch_size=3, include_for_metrics=["inputs", "loss"], **overrides)
    t.compute_metrics = compute_metrics
    out = t.predict(data)
    return out, captured


def test_eval_accumulation_steps_gives_the_same_arrays_and_bounds_the_device(tmp_path, spy):
    data = lm_rows(10, seed=2)  # ragged: 4 batches of widths that differ, the last one of 1 row
    plain, plain_extra = _predict(tmp_path / "a", data)
    accumulated, acc_extra = _predict(tmp_path / "b", data, eval_accumulation_steps=2)
    assert spy["max_on_device"] == 1  # the second batch on the device sends both to the CPU
    pairs = [
        (plain.predictions, accumulated.predictions),
        (plain.label_ids, accumulated.label_ids),
        (plain_extra["inputs"], acc_extra["inputs"]),
        (plain_extra["losses"], acc_extra["losses"]),
    ]
    for a, b in pairs:
        assert isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape
        assert np.array_equal(a, b)
    assert plain.predictions.shape == (10, max(len(r) for r in data["input_ids"]), VOCAB)
    assert plain.metrics["test_loss"] == accumulated.metrics["test_loss"]


def test_preprocess_logits_runs_per_batch_before_anything_is_stored(tmp_path, spy):
    t = _trainer(tmp_path)
    t.compute_metrics = lambda pred: {"n": float(pred.predictions.size)}
    t.preprocess_logits_for_metrics = lambda logits, labels: logits.argmax(-1)
    metrics = t.evaluate(lm_rows(10, seed=3))
    assert spy["stored_shapes"] and all(len(shape) == 2 for shape in spy["stored_shapes"])  # (batch, seq) ids
    assert metrics["eval_n"] == 10 * max(len(r) for r in lm_rows(10, seed=3)["input_ids"])


def _ragged_batches(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    batches = []
    for rows, width in [(3, 5), (3, 5), (2, 9), (1, 4), (3, 7)]:
        logits = torch.randn(rows, width, 6, generator=g).to(dtype)
        labels = torch.randint(0, 6, (rows, width), generator=g)
        aux = {"score": torch.randn(rows, generator=g), "scalar": torch.randn((), generator=g)}
        batches.append(((logits, aux), labels))
    return batches


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_single_concat_equals_the_nested_concat_fold(dtype):
    batches = _ragged_batches(dtype)
    old = nested_numpify(reduce(lambda a, b: nested_concat(a, b, padding_index=-100), batches))
    new = concat_outputs(list(batches))
    old_leaves, new_leaves = evaluation._leaves(old), evaluation._leaves(new)
    assert type(new) is type(old) and len(new_leaves) == len(old_leaves) == 4
    for a, b in zip(old_leaves, new_leaves):
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
    one = [batches[0]]  # a single batch is returned as it is, as nested_concat never saw it
    assert np.array_equal(concat_outputs(one)[1], nested_numpify(batches[0][1]))


def test_moving_in_one_copy_gives_the_same_batches():
    """The device path of `to_host` (join, one transfer, split into views) run on the CPU."""
    batches = _ragged_batches()
    per_batch = to_host(list(batches), one_copy=False)
    one_copy = to_host(list(batches), one_copy=True)
    assert len(one_copy) == len(batches)
    whole_a, whole_b = concat_outputs(per_batch), concat_outputs(one_copy)
    for a, b in zip(evaluation._leaves(whole_a), evaluation._leaves(whole_b)):
        assert a.dtype == b.dtype and np.array_equal(a, b)
