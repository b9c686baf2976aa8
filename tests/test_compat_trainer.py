"""What HF's example scripts call on the trainer after training: the same files and printout as
`transformers.Trainer`, checked side by side; and evaluation sets addressed by name."""

from __future__ import annotations

import json
import warnings

import pytest
import transformers
from conftest import PadCollator, lm_rows, make_args, tiny_llama

from trainformers import DataError, Trainer

METRICS = {"train_runtime": 3725.456, "total_flos": 5e12, "train_loss": 1.234567, "epoch": 2.0, "train_samples": 64}


def _ours(tmp_path, **overrides):
    return Trainer(
        model=tiny_llama(),
        args=make_args(tmp_path / "ours", **overrides),
        train_dataset=lm_rows(16),
        eval_dataset={"small": lm_rows(8, seed=1), "large": lm_rows(12, seed=2)},
        data_collator=PadCollator(),
    )


def _theirs(tmp_path):
    args = transformers.TrainingArguments(output_dir=str(tmp_path / "theirs"), report_to="none", use_cpu=True)
    return transformers.Trainer(model=tiny_llama(), args=args, train_dataset=lm_rows(16), data_collator=PadCollator())


def test_metrics_files_and_printout_match_transformers(tmp_path, capsys):
    ours, theirs = _ours(tmp_path), _theirs(tmp_path)
    printed = []
    for trainer in (ours, theirs):
        trainer.log_metrics("train", METRICS)
        printed.append(capsys.readouterr().out)
        trainer.save_metrics("train", METRICS)
        trainer.save_metrics("eval", {"eval_loss": 2.5, "epoch": 2.0})
    # transformers 5.24 binds its module function as the method, so trainer.metrics_format(m) raises there
    assert ours.metrics_format(METRICS) == transformers.trainer_pt_utils.metrics_format(METRICS)
    assert printed[0] == printed[1] and "***** train metrics *****" in printed[0]
    for name in ("train_results.json", "eval_results.json", "all_results.json"):
        assert (tmp_path / "ours" / "run" / name).read_text() == (tmp_path / "theirs" / name).read_text(), name
    assert json.loads((tmp_path / "ours" / "run" / "all_results.json").read_text())["eval_loss"] == 2.5


def test_save_state_and_trainable_parameters_as_transformers(tmp_path):
    ours, theirs = _ours(tmp_path, max_steps=2), _theirs(tmp_path)
    ours.train()
    ours.save_state()
    state = json.loads((tmp_path / "ours" / "run" / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and state["log_history"]
    assert ours.get_num_trainable_parameters() == theirs.get_num_trainable_parameters()


def test_eval_sets_by_name_and_as_a_dict(tmp_path):
    trainer = _ours(tmp_path)
    every = trainer.evaluate()
    assert {"eval_small_loss", "eval_large_loss"} <= set(every)
    one = trainer.evaluate("small")
    assert one["eval_loss"] == pytest.approx(every["eval_small_loss"])
    assert len(trainer.get_eval_dataloader("large")) == 3  # 12 rows in batches of 4
    with pytest.raises(DataError, match=r"evaluate\('medium'\).*\['large', 'small'\]"):
        trainer.evaluate("medium")


def test_eval_honours_drop_last_and_keeps_persistent_workers(tmp_path):
    dropping = _ours(tmp_path, dataloader_drop_last=True, per_device_eval_batch_size=5)
    assert len(dropping.get_eval_dataloader("large")) == 2  # 12 rows: two whole batches of 5
    persistent = _ours(
        tmp_path, dataloader_num_workers=1, dataloader_persistent_workers=True, per_device_eval_batch_size=4
    )
    first = persistent.get_eval_dataloader("small")
    persistent.evaluate("small")
    assert persistent.get_eval_dataloader("small") is first  # the same workers serve the next evaluation
    assert _ours(tmp_path).get_eval_dataloader("small") is not _ours(tmp_path).get_eval_dataloader("small")


def test_logged_rates_and_train_loss_match_transformers(tmp_path):
    """Same script, both trainers: each row shows the rate its last step used, and train_loss is the mean
    over every step (not over the logged rows). Measured difference: below 1e-6 relative."""
    common = dict(
        max_steps=24, warmup_steps=3, learning_rate=0.05, lr_scheduler_type="linear", logging_steps=5, seed=0,
        per_device_train_batch_size=4, optim="adamw_torch", report_to="none", save_strategy="no", disable_tqdm=True,
    )  # fmt: skip
    theirs = transformers.Trainer(
        model=tiny_llama(),
        args=transformers.TrainingArguments(output_dir=str(tmp_path / "theirs"), use_cpu=True, **common),
        train_dataset=lm_rows(32),
        data_collator=PadCollator(),
    )
    ours = Trainer(
        model=tiny_llama(),
        args=make_args(tmp_path / "ours", **common),
        train_dataset=lm_rows(32),
        data_collator=PadCollator(),
    )
    results = [trainer.train() for trainer in (theirs, ours)]

    def rows(trainer, key):
        return [row[key] for row in trainer.state.log_history if "loss" in row]

    assert rows(ours, "learning_rate") == pytest.approx(rows(theirs, "learning_rate"), rel=1e-9)
    assert rows(ours, "loss") == pytest.approx(rows(theirs, "loss"), rel=1e-5)
    assert results[1].training_loss == pytest.approx(results[0].training_loss, rel=1e-5)
    mean_of_rows = sum(rows(ours, "loss")) / len(rows(ours, "loss"))
    assert abs(results[1].training_loss - mean_of_rows) > 1e-4  # 24 steps in rows of 5: not the same mean


@pytest.mark.parametrize("kind", ["hf", "ours"])
def test_output_dir_is_reused_as_transformers_allows(tmp_path, kind):
    """evaluate() before train(), train() twice, and a new trainer over the same directory (that will
    not write checkpoints beside the old ones) all work, on both trainers."""

    def trainer(**overrides):
        settings = dict(output_dir=str(tmp_path / "run"), report_to="none", max_steps=2, per_device_train_batch_size=4)
        settings.update(overrides)
        if kind == "hf":
            args = transformers.TrainingArguments(use_cpu=True, **settings)
            cls = transformers.Trainer
        else:
            args, cls = make_args(tmp_path, **settings), Trainer
        return cls(
            model=tiny_llama(),
            args=args,
            train_dataset=lm_rows(16),
            eval_dataset=lm_rows(8),
            data_collator=PadCollator(),
        )

    first = trainer(save_strategy="steps", save_steps=2)
    first.evaluate()
    first.train()
    first.train()  # again: its own checkpoint-2 is rewritten
    assert (tmp_path / "run" / "checkpoint-2").is_dir()
    trainer(save_strategy="no").train()  # a new trainer that writes no checkpoint
    trainer(save_strategy="no").evaluate()


def test_a_new_run_writing_checkpoints_beside_another_runs_is_refused(tmp_path):
    first = _ours(tmp_path, save_strategy="steps", save_steps=2, max_steps=2)
    first.train()
    from trainformers import CheckpointError

    with pytest.raises(CheckpointError, match=r"already holds a run \(checkpoint-2\).*save_strategy='no'"):
        _ours(tmp_path, save_strategy="steps", save_steps=2, max_steps=2).train()


class _Stateful(transformers.TrainerCallback, transformers.trainer_callback.ExportableState):
    """A transformers-style stateful callback: an init argument and a counter."""

    def __init__(self, patience=1):
        self.patience, self.count = patience, 0

    def on_step_end(self, args, state, control, **kwargs):
        self.count += self.patience

    def state(self):
        return {"args": {"patience": self.patience}, "attributes": {"count": self.count}}


def _resume_with(tmp_path, kind, first, then, logging_steps=1):
    def trainer(steps, callbacks, logging_steps):
        settings = dict(
            output_dir=str(tmp_path / kind), report_to="none", max_steps=steps, per_device_train_batch_size=4,
            save_strategy="steps", save_steps=2, logging_steps=logging_steps,
            restore_callback_states_from_checkpoint=True,
        )  # fmt: skip
        if kind == "hf":
            args, base = transformers.TrainingArguments(use_cpu=True, **settings), transformers.Trainer
        else:
            args, base = make_args(tmp_path / kind, **settings), Trainer
        return base(
            model=tiny_llama(), args=args, train_dataset=lm_rows(16), data_collator=PadCollator(), callbacks=callbacks
        )

    trainer(2, first, 1).train()
    resumed = trainer(3, then, logging_steps)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resumed.train(resume_from_checkpoint=True)
    said = " ".join(str(w.message) for w in caught)
    return [(cb.patience, cb.count) for cb in resumed.callback_handler.callbacks if isinstance(cb, _Stateful)], said


@pytest.mark.parametrize("kind", ["hf", "ours"])
def test_a_stateful_callback_resumes_with_its_saved_args_and_attributes(tmp_path, kind, caplog):
    """A callback written for transformers (its ExportableState base unchanged) is rebuilt from its saved
    `args` and gets its `attributes` back; a changed logging interval is reported (HF logs it, we warn)."""
    restored, said = _resume_with(tmp_path, kind, [_Stateful(4)], [_Stateful(5)], logging_steps=3)
    assert restored == [(4, 12)]  # patience 4 from the checkpoint, count 8 restored + one more step
    assert "logging_steps" in caplog.text + said


def test_several_callbacks_of_one_class_keep_their_own_state(tmp_path):
    """transformers 5.24 appends the states saved at a checkpoint to those captured at init and restores
    the init ones (counts back to 0); here each instance gets its own saved state."""
    restored, _ = _resume_with(tmp_path, "ours", [_Stateful(1), _Stateful(10)], [_Stateful(5), _Stateful(5)])
    assert restored == [(1, 3), (10, 30)]


def test_a_saved_callback_state_without_its_callback_is_warned_about(tmp_path):
    _, said = _resume_with(tmp_path, "ours", [_Stateful(1)], [])
    assert "callbacks this run does not have (_Stateful)" in said


@pytest.mark.parametrize("kind", ["hf", "ours"])
def test_an_overridden_train_dataloader_may_be_any_iterable(tmp_path, kind):
    rows = lm_rows(16)
    batches = [PadCollator()([rows[j] for j in range(i, i + 4)]) for i in range(0, 16, 4)]

    class ListLoader(transformers.Trainer if kind == "hf" else Trainer):
        def get_train_dataloader(self):
            return list(batches)

    settings = dict(
        output_dir=str(tmp_path / kind), report_to="none", num_train_epochs=2, max_steps=-1, save_strategy="no"
    )
    args = transformers.TrainingArguments(use_cpu=True, **settings) if kind == "hf" else make_args(tmp_path, **settings)
    trainer = ListLoader(model=tiny_llama(), args=args, train_dataset=lm_rows(16))
    assert trainer.train().global_step == 8


@pytest.mark.parametrize("kind", ["hf", "ours"])
def test_memory_metrics_have_transformers_keys(tmp_path, kind):
    settings = dict(output_dir=str(tmp_path / kind), report_to="none", max_steps=2, skip_memory_metrics=False)
    if kind == "hf":
        args, base = transformers.TrainingArguments(use_cpu=True, **settings), transformers.Trainer
    else:
        args, base = make_args(tmp_path, **settings), Trainer
    trainer = base(
        model=tiny_llama(), args=args, train_dataset=lm_rows(16), eval_dataset=lm_rows(8), data_collator=PadCollator()
    )
    train = trainer.train().metrics
    evaluation = trainer.evaluate()
    test = trainer.predict(lm_rows(8)).metrics
    for stage, metrics in (("init", train), ("train", train), ("eval", evaluation), ("test", test)):
        for kind_of in ("alloc", "peaked"):
            assert isinstance(metrics[f"{stage}_mem_cpu_{kind_of}_delta"], int), (stage, kind_of)
