"""The parts both loops share: the meter, the step kernel's arithmetic, one checkpoint layout, and
the settings that used to be accepted and then ignored (now honoured or refused)."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import PadCollator, lm_rows, make_args, tiny_llama
from cycle_helpers import cycle_args, demo, tiny_causal, tokenizer

from trainformers import ConfigError, CycleTrainer, Trainer, TrainerCallback, TrainingArguments
from trainformers.meter import Meter
from trainformers.state import ExportableState
from trainformers.step import StepKernel

# ---- the meter ----------------------------------------------------------------------------------


def test_meter_state_round_trips_exactly_with_types_and_time():
    meter = Meter()
    meter.add("loss", torch.tensor(0.1) + torch.tensor(0.2))  # a float32 value that is not a short decimal
    meter.add("loss", torch.tensor(0.7))
    meter.add("steps", 2)
    meter.add("seen", torch.tensor(5))  # an integer count stays an integer
    meter.add("seconds", 0.25)
    meter.set("grad_norm", torch.tensor(1.5))
    meter.start -= 3.0
    saved = json.loads(json.dumps(meter.state_dict()))  # what a checkpoint holds
    restored = Meter()
    restored.load_state_dict(saved)
    assert torch.equal(restored.get("loss"), meter.get("loss"))
    assert restored.get("seen").dtype == torch.int64 and restored.read("seen") == 5
    assert restored.read("steps") == 2 and isinstance(restored.read("steps"), int)
    assert restored.read("seconds") == 0.25 and restored.read("grad_norm") == 1.5
    restored.start_clock()  # the restored row's training time carries on from where it was
    assert restored.elapsed() == pytest.approx(3.0, abs=0.2)


def test_meter_pops_and_resets():
    meter = Meter()
    meter.add("term:aux", torch.tensor(2.0))
    assert meter.names("term:") == ["term:aux"] and meter.pop("term:aux") == 2.0 and not meter.names("term:")
    meter.add("loss", 1.0)
    meter.pause(10.0)
    meter.reset()
    assert meter.get("loss") == 0 and meter.paused == 0.0


# ---- the step kernel ----------------------------------------------------------------------------


class _Accel:
    """What StepKernel asks of an Accelerator, for one process without a scaler."""

    from accelerate.utils import DistributedType

    device = torch.device("cpu")
    scaler = None
    distributed_type = DistributedType.NO
    gradient_accumulation_steps = 1
    optimizer_step_was_skipped = False

    def no_sync(self, model):
        from contextlib import nullcontext

        return nullcontext()

    def reduce(self, tensor, reduction):
        return tensor * 2  # two ranks with the same count


def _kernel(ranks=1, across=True, **kw):
    weight = torch.nn.Parameter(torch.ones(()))
    optimizer = torch.optim.SGD([weight], lr=1.0)
    kernel = StepKernel(
        _Accel(), optimizer, None, [weight], max_grad_norm=None, ranks=ranks, items_across_ranks=across, **kw
    )
    return kernel, weight


@pytest.mark.parametrize(
    ("ranks", "across", "counts", "scale", "share"),
    [
        (1, True, [2, 6], 1.0, 1.0),  # one rank: each micro-batch loss is its share of the count
        (2, True, [2, 6], 2.0, 1.0),  # a global count: DDP's average undone, parts sum to the mean over ranks
        (2, False, [2, 6], 1.0, 0.5),  # a rank's own count: its mean is half of the logged mean
        (1, True, None, 0.5, 0.5),  # no labels: two micro-batch means weigh 1/2 each
    ],
)
def test_kernel_scales_the_backward_and_the_logged_share(ranks, across, counts, scale, share):
    kernel, weight = _kernel(ranks, across)
    window = [{"n": 2}, {"n": 6}]
    seen_items, parts = [], []

    def count(batch):
        if counts is None:
            raise ValueError("no labels")
        return torch.tensor(batch["n"])

    def micro_step(batch, items):
        seen_items.append(None if items is None else int(items))
        loss = weight * 1.0
        kernel.backward(loss)
        return loss.detach()

    step = kernel.run(torch.nn.Linear(1, 1), window, micro_step, count, on_micro=lambda b, p, last: parts.append(p))
    expected_items = None if counts is None else sum(counts) * (2 if ranks == 2 and across else 1)
    assert seen_items == [expected_items] * 2
    assert kernel.scale == scale
    assert [float(p) for p in parts] == [share, share] and float(step.loss) == 2 * share
    assert float(weight.detach()) == pytest.approx(1.0 - 2 * scale)  # SGD with lr 1 on d(loss * scale)/dw summed


def test_kernel_skips_a_window_without_items_when_asked():
    kernel, weight = _kernel()
    step = kernel.run(torch.nn.Linear(1, 1), [{"n": 0}], lambda b, n: 1 / 0, lambda b: torch.tensor(0), skip_empty=True)
    assert step.loss is None and float(weight.detach()) == 1.0


# ---- one checkpoint layout -------------------------------------------------------------------


def test_one_model_and_a_pair_share_the_checkpoint_layout(tmp_path):
    trainer = Trainer(
        model=tiny_llama(),
        args=make_args(tmp_path / "one", max_steps=2, save_strategy="steps", save_steps=2),
        train_dataset=lm_rows(16),
        data_collator=PadCollator(),
    )
    trainer.train()
    one = {p.name for p in (tmp_path / "one" / "run" / "checkpoint-2").iterdir()}
    task = demo()
    pair = CycleTrainer(
        cycle_args(tmp_path, output_dir=str(tmp_path / "pair"), max_steps=2, save_strategy="steps", save_steps=2),
        models={"A": tiny_causal(0), "B": tiny_causal(1)},
        tokenizers=tokenizer(),
        train_dataset_A=task.unpaired_A,
        train_dataset_B=task.unpaired_B,
    )
    pair.train()
    two = {p.name for p in (tmp_path / "pair" / "checkpoint-2").iterdir()}
    shared = {"rng_state_0.safetensors", "loop_state_0.json", "training_args.json", "trainer_state.json"}
    assert shared | {"optimizer.safetensors", "scheduler.safetensors", "model.safetensors"} <= one
    assert (
        shared
        | {
            "optimizer_A.safetensors",
            "optimizer_B.safetensors",
            "scheduler_A.safetensors",
            "scheduler_B.safetensors",
            "A",
            "B",
        }
        <= two
    )
    loop_one = json.loads((tmp_path / "one" / "run" / "checkpoint-2" / "loop_state_0.json").read_text())
    loop_two = json.loads((tmp_path / "pair" / "checkpoint-2" / "loop_state_0.json").read_text())
    assert set(loop_one) == {"meter", "run"} and set(loop_two) == {"meter", "streams"}


# ---- settings that are honoured or refused, never ignored ----------------------------------------


class _Counter(TrainerCallback, ExportableState):
    def __init__(self):
        self.steps = 0

    def on_step_end(self, args, state, control, **kwargs):
        self.steps += 1

    def state(self):
        return {"args": {}, "attributes": {"steps": self.steps}}


@pytest.mark.parametrize("restore", [True, False])
def test_restore_callback_states_from_checkpoint_is_honoured(tmp_path, restore):
    def run(**overrides):
        counter = _Counter()
        trainer = Trainer(
            model=tiny_llama(),
            args=make_args(tmp_path, save_strategy="steps", save_steps=2, **overrides),
            train_dataset=lm_rows(16),
            data_collator=PadCollator(),
            callbacks=[counter],
        )
        return trainer, counter

    first, _ = run(max_steps=2)
    first.train()
    resumed, _ = run(max_steps=4, restore_callback_states_from_checkpoint=restore)
    resumed.train(resume_from_checkpoint=True)
    counter = next(cb for cb in resumed.callback_handler.callbacks if isinstance(cb, _Counter))
    assert counter.steps == (4 if restore else 2)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"accelerator_config": {"dispatch_batches": True}}, r"accelerator_config keys \['dispatch_batches'\]"),
    ],
)
def test_settings_nothing_carries_out_are_refused(tmp_path, overrides, match):
    with pytest.raises(ConfigError, match=match):
        TrainingArguments(output_dir=str(tmp_path), **overrides)


def test_a_plain_training_arguments_becomes_cycle_arguments(tmp_path):
    """Its defaults (logging_nan_inf_filter=True, dataloader_drop_last=False) are not what the cycle
    accepts; only the settings a user changed carry over."""
    task = demo()
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=3, learning_rate=0.02, report_to="none")
    trainer = CycleTrainer(
        args,
        models=tiny_causal(0),
        tokenizers=tokenizer(),
        train_dataset_A=task.unpaired_A,
        train_dataset_B=task.unpaired_B,
    )
    assert trainer.args.max_steps == 3 and trainer.args.learning_rate == 0.02
    assert trainer.args.logging_nan_inf_filter is False and trainer.args.dataloader_drop_last is True
    refused = TrainingArguments(output_dir=str(tmp_path), dataloader_num_workers=2, report_to="none")
    with pytest.raises(ConfigError, match=r"dataloader_num_workers=2 is not supported by CycleTrainer"):
        CycleTrainer(refused, models=tiny_causal(0), tokenizers=tokenizer())


def test_cycle_refuses_an_automatic_learning_rate_when_configured(tmp_path):
    with pytest.raises(ConfigError, match=r"learning_rate='auto' is not supported by CycleTrainer"):
        cycle_args(tmp_path, learning_rate="auto")


def test_cycle_sets_the_transformers_log_level(tmp_path):
    from transformers.utils import logging as hf_logging

    before = hf_logging.get_verbosity()
    try:
        CycleTrainer(cycle_args(tmp_path, log_level="error"), models=tiny_causal(0), tokenizers=tokenizer())
        assert hf_logging.get_verbosity() == hf_logging.ERROR
    finally:
        hf_logging.set_verbosity(before)
