"""Trainer invariants on a tiny causal LM: accumulation, resume, atomic saves, rotation, callbacks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import PadCollator, lm_rows, make_args, read_losses, tiny_llama, weights

from trainformers import (
    CheckpointError,
    DataError,
    EarlyStoppingCallback,
    Trainer,
    TrainerCallback,
    TrainformersError,
)
from trainformers import checkpoint as ckpt


def _trainer(tmp_path, *, model=None, train=None, eval_dataset=None, callbacks=None, cls=Trainer, **arg_overrides):
    args = make_args(tmp_path, **arg_overrides)
    return cls(
        model if model is not None else tiny_llama(),
        args,
        data_collator=PadCollator(),
        train_dataset=train if train is not None else lm_rows(),
        eval_dataset=eval_dataset,
        callbacks=callbacks,
    )


# ---- gradient accumulation -------------------------------------------------------------------


def test_accumulation_8x1_equals_2x4(tmp_path):
    """Same global batch, different micro-batching: same logged losses and same final weights.

    Rows have different lengths, so micro-batches hold different label counts; only a loss
    normalised once over the whole window makes the two runs agree.
    """
    a = _trainer(tmp_path / "a", per_device_train_batch_size=8, gradient_accumulation_steps=1)
    a.train()
    b = _trainer(tmp_path / "b", per_device_train_batch_size=2, gradient_accumulation_steps=4)
    b.train()
    la, lb = read_losses(a.args.output_dir), read_losses(b.args.output_dir)
    assert [s for s, _ in la] == [s for s, _ in lb] == list(range(1, 7))
    for (_, x), (_, y) in zip(la, lb):
        assert x == pytest.approx(y, rel=1e-5)
    wa, wb = weights(a.model), weights(b.model)
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=1e-4, atol=1e-6, msg=name)


def test_accumulation_matches_manual_full_batch_step(tmp_path):
    """One optimizer step over a 2x4 window equals SGD on the mean token loss of all 8 rows."""
    data = lm_rows(8)
    model = tiny_llama()
    reference = tiny_llama()
    t = _trainer(
        tmp_path,
        model=model,
        train=data,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=4,
        max_steps=1,
        optim="sgd",
        learning_rate=0.5,
        max_grad_norm=0.0,
        train_sampling_strategy="sequential",
    )
    t.train()
    batch = PadCollator()([data[i] for i in range(8)])
    loss = reference(**batch).loss  # mean over every shifted label token of the 8 rows
    loss.backward()
    with torch.no_grad():
        for p in reference.parameters():
            p -= 0.5 * p.grad
    for (name, p), q in zip(reference.named_parameters(), model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6, msg=name)


# ---- resume ----------------------------------------------------------------------------------


class CrashAt(TrainerCallback):
    """Raise at a given micro-step: a crash mid-epoch, possibly mid-accumulation window."""

    def __init__(self, micro_step: int):
        self.micro_step = micro_step

    def on_substep_end(self, args, state, control, **kwargs):
        if state.micro_step == self.micro_step:
            raise KeyboardInterrupt("simulated crash")

    def on_step_end(self, args, state, control, **kwargs):
        if state.micro_step == self.micro_step:
            raise KeyboardInterrupt("simulated crash")


RESUME_ARGS = dict(
    per_device_train_batch_size=2,
    gradient_accumulation_steps=2,
    max_steps=20,
    save_strategy="steps",
    save_steps=3,
    learning_rate=5e-3,
    warmup_steps=2,
    logging_steps=2,
)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("full")
    model = _dropout_llama()
    t = _trainer(tmp, model=model, **RESUME_ARGS)
    t.train()
    return weights(t.model), read_losses(t.args.output_dir)


def _dropout_llama(seed: int = 0):
    model = tiny_llama(seed)
    model.config.attention_dropout = 0.1  # RNG is drawn every step: resume must restore it
    for layer in model.model.layers:
        layer.self_attn.attention_dropout = 0.1
    return model


@pytest.mark.parametrize("crash_micro_step", [7, 18, 25])  # mid-window; epoch 2; right after a save
def test_resume_after_crash_equals_uninterrupted(tmp_path, uninterrupted, crash_micro_step):
    full_weights, full_losses = uninterrupted
    t = _trainer(tmp_path, model=_dropout_llama(), callbacks=[CrashAt(crash_micro_step)], **RESUME_ARGS)
    with pytest.raises(KeyboardInterrupt):
        t.train()
    assert ckpt.latest_checkpoint(t.args.output_dir) is not None
    resumed = _trainer(
        tmp_path, model=_dropout_llama(seed=123), **RESUME_ARGS
    )  # other init: weights must come from disk
    resumed.train(resume_from_checkpoint=True)
    assert read_losses(resumed.args.output_dir) == full_losses
    for name, value in weights(resumed.model).items():
        assert torch.equal(value, full_weights[name]), name


def test_resume_does_not_replay_data(tmp_path):
    """The resumed run starts at the sampler position: no batch before it goes through the model."""
    seen = []

    class Count(TrainerCallback):
        def on_substep_end(self, args, state, control, **kwargs):
            seen.append(state.micro_step)

    t = _trainer(tmp_path, **{**RESUME_ARGS, "max_steps": 6})
    t.train()
    resumed = _trainer(tmp_path, callbacks=[Count()], **{**RESUME_ARGS, "max_steps": 9})
    resumed.train(resume_from_checkpoint=str(Path(t.args.output_dir) / "checkpoint-6"))
    assert seen == [13, 15, 17]  # the first micro-step of each of steps 7..9


def test_resume_errors(tmp_path):
    t = _trainer(tmp_path)
    with pytest.raises(CheckpointError, match="has no complete checkpoint"):
        t.train(resume_from_checkpoint=True)
    with pytest.raises(CheckpointError, match="does not exist"):
        t.train(resume_from_checkpoint=str(tmp_path / "nope"))
    broken = tmp_path / "checkpoint-3"
    broken.mkdir()
    (broken / "trainer_state.json").write_text("{}")
    with pytest.raises(CheckpointError, match="incomplete"):
        t.train(resume_from_checkpoint=str(broken))


def test_output_dir_with_a_run_is_refused_and_kept(tmp_path):
    t = _trainer(tmp_path, save_strategy="steps", save_steps=3)
    t.train()
    before = sorted(p.name for p in Path(t.args.output_dir).iterdir())
    log_before = (Path(t.args.output_dir) / "log.jsonl").read_text()
    again = _trainer(tmp_path, save_strategy="steps", save_steps=3)
    with pytest.raises(CheckpointError, match="already holds a run.*overwrite_output_dir"):
        again.train()
    assert sorted(p.name for p in Path(t.args.output_dir).iterdir()) == before
    assert (Path(t.args.output_dir) / "log.jsonl").read_text() == log_before
    over = _trainer(tmp_path, save_strategy="steps", save_steps=3, overwrite_output_dir=True)
    over.train()
    assert len(read_losses(over.args.output_dir)) == 6


# ---- checkpoints -----------------------------------------------------------------------------


def test_interrupted_save_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    t = _trainer(tmp_path, save_strategy="steps", save_steps=2, max_steps=4)
    real = ckpt.save_state
    calls = {"n": 0}

    def failing(obj, path):
        if Path(path).name == ckpt.SCHEDULER_NAME and "checkpoint-4" in str(path):
            raise OSError("disk full (injected)")
        calls["n"] += 1
        return real(obj, path)

    monkeypatch.setattr(ckpt, "save_state", failing)
    with pytest.raises(OSError, match="injected"):
        t.train()
    names = sorted(p.name for p in Path(t.args.output_dir).iterdir())
    assert "checkpoint-2" in names and not any(n.startswith("checkpoint-4") for n in names)
    assert ckpt.latest_checkpoint(t.args.output_dir).name == "checkpoint-2"


def test_checkpoint_is_pickle_free_and_complete(tmp_path):
    t = _trainer(tmp_path, save_strategy="steps", save_steps=3, max_steps=3)
    t.train()
    c = Path(t.args.output_dir) / "checkpoint-3"
    names = {p.name for p in c.iterdir()}
    assert {
        "model.safetensors",
        "config.json",
        "optimizer.safetensors",
        "scheduler.safetensors",
        "rng_state_0.safetensors",
        "trainer_state.json",
        "training_args.json",
    } <= names
    for name in ("optimizer.safetensors", "scheduler.safetensors", "rng_state_0.safetensors"):
        torch.load(c / name, weights_only=True)  # raises if anything needs unpickling
    state = json.loads((c / "trainer_state.json").read_text())
    assert state["global_step"] == 3 and state["epoch_step"] == 3 and state["micro_step"] == 3


class ScriptedMetric(TrainerCallback):
    pass


def _scripted_metrics(values):
    it = iter(values)

    def compute_metrics(pred):
        return {"score": next(it)}

    return compute_metrics


def test_rotation_keeps_the_best_and_load_best_at_end(tmp_path):
    # score per evaluation (one per step): best at step 2
    t = _trainer(
        tmp_path,
        eval_dataset=lm_rows(4, seed=9),
        max_steps=6,
        eval_strategy="steps",
        eval_steps=1,
        save_strategy="steps",
        save_steps=1,
        save_total_limit=2,
        metric_for_best_model="score",
        greater_is_better=True,
        load_best_model_at_end=True,
    )
    t.compute_metrics = _scripted_metrics([0.1, 0.9, 0.2, 0.3, 0.4, 0.5])
    t.train()
    kept = [p.name for p in ckpt.list_checkpoints(t.args.output_dir)]
    assert kept == ["checkpoint-2", "checkpoint-6"]
    assert t.state.best_model_checkpoint.endswith("checkpoint-2") and t.state.best_metric == 0.9
    best = tiny_llama(seed=5)
    ckpt.load_model_files(best, Path(t.args.output_dir) / "checkpoint-2")
    for name, value in weights(t.model).items():
        assert torch.equal(value, best.state_dict()[name]), name


def test_save_strategy_best_saves_only_improvements(tmp_path):
    t = _trainer(
        tmp_path,
        eval_dataset=lm_rows(4, seed=9),
        max_steps=5,
        eval_strategy="steps",
        eval_steps=1,
        save_strategy="best",
        metric_for_best_model="score",
        greater_is_better=True,
    )
    t.compute_metrics = _scripted_metrics([0.1, 0.5, 0.2, 0.7, 0.3])
    t.train()
    assert [p.name for p in ckpt.list_checkpoints(t.args.output_dir)] == [
        "checkpoint-1",
        "checkpoint-2",
        "checkpoint-4",
    ]


def test_early_stopping(tmp_path):
    t = _trainer(
        tmp_path,
        eval_dataset=lm_rows(4, seed=9),
        max_steps=20,
        eval_strategy="steps",
        eval_steps=1,
        metric_for_best_model="score",
        greater_is_better=True,
        callbacks=[EarlyStoppingCallback(early_stopping_patience=2)],
    )
    t.compute_metrics = _scripted_metrics([0.5, 0.6, 0.6, 0.55] + [0.0] * 20)
    out = t.train()
    assert out.global_step == 4  # two evaluations without improvement after step 2


# ---- evaluate / predict ----------------------------------------------------------------------


def test_evaluate_and_predict_shapes_and_metrics(tmp_path):
    data = lm_rows(10, seed=3)

    def compute_metrics(pred):
        preds = pred.predictions.argmax(-1)[:, :-1]
        labels = pred.label_ids[:, 1:]
        mask = labels != -100
        return {"accuracy": float((preds[mask] == labels[mask]).mean())}

    t = _trainer(tmp_path, eval_dataset=data)
    t.compute_metrics = compute_metrics
    metrics = t.evaluate()
    assert set(metrics) >= {"eval_loss", "eval_accuracy", "eval_runtime", "eval_samples_per_second"}
    # eval_loss is the exact mean over every label token of the set
    batch = PadCollator()([data[i] for i in range(10)])
    with torch.no_grad():
        assert metrics["eval_loss"] == pytest.approx(t.model(**batch).loss.item(), rel=1e-5)
    out = t.predict(data)
    width = max(len(r) for r in data["input_ids"])
    assert out.predictions.shape == (10, width, 64)
    assert out.label_ids.shape == (10, width)
    assert (out.label_ids[0, len(data[0]["input_ids"]) :] == -100).all()
    assert "test_loss" in out.metrics and "test_accuracy" in out.metrics
    named = t.evaluate({"a": data, "b": lm_rows(4, seed=4)})
    assert "eval_a_loss" in named and "eval_b_loss" in named


def test_eval_keeps_no_logits_without_metrics(tmp_path, monkeypatch):
    from trainformers import evaluation

    t = _trainer(tmp_path, eval_dataset=lm_rows(8))
    gathered = []
    monkeypatch.setattr(evaluation, "_detach", lambda v, to_cpu=False: gathered.append(v) or v)  # every keeping path
    t.evaluate()
    assert gathered == []


# ---- callbacks and subclassing ---------------------------------------------------------------


class Recorder(TrainerCallback):
    def __init__(self):
        self.events = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.events.append("train_begin")

    def on_step_end(self, args, state, control, **kwargs):
        self.events.append(f"step{state.global_step}")

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.events.append("log")

    def on_train_end(self, args, state, control, **kwargs):
        self.events.append("train_end")


def test_callback_class_and_instance(tmp_path):
    instance = Recorder()
    t = _trainer(tmp_path, callbacks=[instance, Recorder], max_steps=2, logging_steps=5)
    t.train()
    assert instance.events == ["train_begin", "step1", "step2", "log", "train_end"]  # only the summary row
    by_class = [cb for cb in t.callback_handler.callbacks if isinstance(cb, Recorder) and cb is not instance]
    assert len(by_class) == 1 and by_class[0].events == instance.events
    assert t.pop_callback(instance) is instance
    t.remove_callback(Recorder)
    assert not any(isinstance(cb, Recorder) for cb in t.callback_handler.callbacks)


def test_callback_can_stop_training(tmp_path):
    class Stop(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 3:
                control.should_training_stop = True
            return control

    assert _trainer(tmp_path, callbacks=[Stop()]).train().global_step == 3


class SeedEraLoss(Trainer):
    """The pre-4.46 override: no num_items_in_batch parameter."""

    def compute_loss(self, model, inputs, return_outputs=False):
        outputs = model(**inputs)
        return (outputs.loss, outputs) if return_outputs else outputs.loss


class ModernLoss(Trainer):
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        outputs = model(**inputs)
        logits = outputs.logits[:, :-1].reshape(-1, outputs.logits.shape[-1])
        loss = torch.nn.functional.cross_entropy(logits, labels[:, 1:].reshape(-1), ignore_index=-100)
        return (loss, outputs) if return_outputs else loss


@pytest.mark.parametrize("cls", [SeedEraLoss, ModernLoss])
def test_compute_loss_subclass_keeps_accumulation_exact(tmp_path, cls):
    base = _trainer(tmp_path / "base", per_device_train_batch_size=8)
    base.train()
    sub = _trainer(tmp_path / "sub", cls=cls, per_device_train_batch_size=2, gradient_accumulation_steps=4)
    sub.train()
    for (_, x), (_, y) in zip(read_losses(base.args.output_dir), read_losses(sub.args.output_dir)):
        assert x == pytest.approx(y, rel=1e-5)


def test_compute_loss_func_receives_window_count(tmp_path):
    seen = []

    def loss_fn(outputs, labels, num_items_in_batch=None):
        seen.append(int(num_items_in_batch))
        logits = outputs.logits[:, :-1].reshape(-1, outputs.logits.shape[-1])
        return (
            torch.nn.functional.cross_entropy(logits, labels[:, 1:].reshape(-1), reduction="sum") / num_items_in_batch
        )

    t = _trainer(
        tmp_path,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        max_steps=1,
        train_sampling_strategy="sequential",
    )
    t.compute_loss_func = loss_fn
    t.train()
    rows = lm_rows()
    expected = sum(len(rows[i]["input_ids"]) - 1 for i in range(4))
    assert seen == [expected, expected]


# ---- bad input -------------------------------------------------------------------------------


def test_no_and_empty_train_dataset(tmp_path):
    t = Trainer(tiny_llama(), make_args(tmp_path), data_collator=PadCollator())
    with pytest.raises(DataError, match="needs a train_dataset"):
        t.train()
    empty = _trainer(tmp_path, train=lm_rows().select([]))
    with pytest.raises(DataError, match="empty"):
        empty.train()


def test_model_without_loss_is_a_clear_error(tmp_path):
    rows = lm_rows().remove_columns(["labels"])
    t = Trainer(
        tiny_llama(),
        make_args(tmp_path),
        train_dataset=rows,
        data_collator=lambda f: {
            k: v for k, v in PadCollator()([{**x, "labels": x["input_ids"]} for x in f]).items() if k != "labels"
        },
    )
    with pytest.raises(TrainformersError, match="returned no loss.*compute_loss_func"):
        t.train()


def test_tokenizer_alias_warns(tmp_path):
    from transformers import PreTrainedTokenizerFast

    with pytest.warns(FutureWarning, match="processing_class"):
        t = Trainer(tiny_llama(), make_args(tmp_path), tokenizer=_tiny_tokenizer())
    assert t.processing_class is t.tokenizer and isinstance(t.tokenizer, PreTrainedTokenizerFast)


def _tiny_tokenizer():
    from trainformers.data import train_tokenizer

    return train_tokenizer(["hello world", "the quick brown fox"] * 20, vocab_size=280)


class RandomMaskCollator(PadCollator):
    """Draws from the torch RNG while collating, like masked-LM masking."""

    def __call__(self, features):
        batch = super().__call__(features)
        drop = torch.rand(batch["labels"].shape) < 0.3
        batch["labels"] = batch["labels"].masked_fill(drop, -100)
        return batch


def test_resume_is_exact_with_a_collator_that_draws_random_numbers(tmp_path):
    args = {**RESUME_ARGS, "max_steps": 12}

    def run(out, callbacks=None, resume=None, seed=0):
        t = Trainer(
            _dropout_llama(seed),
            make_args(out, **args),
            data_collator=RandomMaskCollator(),
            train_dataset=lm_rows(),
            callbacks=callbacks,
        )
        t.train(resume_from_checkpoint=resume)
        return t

    full = run(tmp_path / "full")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut", callbacks=[CrashAt(15)])
    resumed = run(tmp_path / "cut", resume=True, seed=7)
    assert read_losses(resumed.args.output_dir) == read_losses(full.args.output_dir)
    for name, value in weights(resumed.model).items():
        assert torch.equal(value, weights(full.model)[name]), name


def test_collator_randomness_is_tied_to_rows_not_history():
    from trainformers.sampling import SeededCollate

    collate = SeededCollate(RandomMaskCollator(), seed=3)
    rows = [(i, r) for i, r in enumerate(lm_rows(4))]
    a = collate(rows[:2])
    torch.rand(100)  # unrelated draws in between change nothing
    b = collate(rows[:2])
    assert torch.equal(a["labels"], b["labels"])
    state = torch.get_rng_state()
    collate(rows[2:])
    assert torch.equal(state, torch.get_rng_state())  # the global stream is untouched


@pytest.mark.skipif(
    not __import__("trainformers.accel").accel.cpu_has_native_bf16(),
    reason="no native bf16 matmul: bf16=True trains in fp32 (tests/test_bf16.py)",
)
def test_bf16_trains_under_autocast_on_cpu(tmp_path):
    dtypes = []
    t = _trainer(tmp_path, bf16=True, max_steps=2)
    t.model.model.layers[0].mlp.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    out = t.train()
    assert dtypes and all(d == torch.bfloat16 for d in dtypes)
    assert all(p.dtype == torch.float32 for p in t.model.parameters())  # master weights stay fp32
    assert out.training_loss == out.training_loss  # not NaN


@pytest.mark.parametrize("mode", ["all", "non_padding"])
def test_num_input_tokens_seen(tmp_path, mode):
    data = lm_rows(8)
    t = _trainer(
        tmp_path,
        train=data,
        per_device_train_batch_size=4,
        max_steps=2,
        logging_steps=1,
        include_num_input_tokens_seen=mode,
        train_sampling_strategy="sequential",
    )
    t.train()
    rows = [r for r in t.state.log_history if "num_input_tokens_seen" in r]
    batches = [PadCollator()([data[i] for i in range(k, k + 4)]) for k in (0, 4)]
    if mode == "all":
        expected = [b["input_ids"].numel() for b in batches]
    else:
        expected = [int(b["attention_mask"].sum()) for b in batches]
    assert [r["num_input_tokens_seen"] for r in rows] == [expected[0], expected[0] + expected[1]]


def test_eval_strategy_without_eval_dataset_fails_before_training(tmp_path):
    t = _trainer(tmp_path, eval_strategy="steps", eval_steps=2)
    with pytest.raises(DataError, match="no eval_dataset"):
        t.train()
    assert not Path(t.args.output_dir).exists()


def test_batch_eval_metrics_sees_every_batch_then_the_result(tmp_path):
    calls = []

    def compute_metrics(pred, compute_result):
        calls.append((pred.predictions.shape[0], compute_result))
        return {"batches": len(calls)} if compute_result else None

    t = _trainer(tmp_path, eval_dataset=lm_rows(10), batch_eval_metrics=True, per_device_eval_batch_size=4)
    t.compute_metrics = compute_metrics
    metrics = t.evaluate()
    assert calls == [(4, False), (4, False), (2, True)]
    assert metrics["eval_batches"] == 3


def test_save_only_model_checkpoint_cannot_be_resumed(tmp_path):
    t = _trainer(tmp_path, save_strategy="steps", save_steps=2, max_steps=2, save_only_model=True)
    t.train()
    c = Path(t.args.output_dir) / "checkpoint-2"
    assert (c / "model.safetensors").is_file() and not (c / "optimizer.safetensors").exists()
    again = _trainer(tmp_path, save_strategy="steps", save_steps=2, max_steps=4)
    with pytest.raises(CheckpointError, match="save_only_model"):
        again.train(resume_from_checkpoint=True)


def test_epoch_sampler_orders_are_permutations_and_groups_lengths():
    from trainformers.sampling import EpochSampler

    lengths = [int(x) for x in torch.randint(1, 200, (400,), generator=torch.Generator().manual_seed(0))]
    plain = EpochSampler(400, seed=1)
    grouped = EpochSampler(400, seed=1, lengths=lengths, batch_size=8)
    for sampler in (plain, grouped):
        sampler.set_epoch(0)
        first = list(sampler)
        assert sorted(first) == list(range(400)) and first == list(sampler)  # same epoch, same order
        sampler.set_epoch(1)
        assert list(sampler) != first
    grouped.set_epoch(0)
    order = list(grouped)
    spread = sum(
        max(lengths[i] for i in order[k : k + 8]) - min(lengths[i] for i in order[k : k + 8]) for k in range(0, 400, 8)
    )
    plain.set_epoch(0)
    order = list(plain)
    random_spread = sum(
        max(lengths[i] for i in order[k : k + 8]) - min(lengths[i] for i in order[k : k + 8]) for k in range(0, 400, 8)
    )
    assert spread < random_spread / 4  # batches of similar lengths: little padding


def test_nan_losses_are_filtered_from_the_log(tmp_path):
    class NanOnce(Trainer):
        calls = 0

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            NanOnce.calls += 1
            loss = model(**inputs).loss
            return loss * float("nan") if NanOnce.calls == 2 else loss

    t = _trainer(
        tmp_path,
        cls=NanOnce,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        max_steps=1,
        learning_rate=0.0,
        max_grad_norm=0.0,
        nan_policy="ignore",  # the default, stop, would end the run there (tests/test_nan_policy.py)
    )
    t.train()
    ((step, loss),) = read_losses(t.args.output_dir)
    assert loss == loss and loss > 0  # finite: the NaN micro-step was replaced by the running mean


def test_second_train_call_continues_with_the_same_optimizer(tmp_path):
    t = _trainer(tmp_path, max_steps=2, overwrite_output_dir=True)
    t.train()
    first = t.optimizer
    t.train()
    assert type(t.optimizer).__name__ == "AcceleratedOptimizer" and t.optimizer.optimizer is first.optimizer


def test_missing_tracker_is_a_clear_error(tmp_path, monkeypatch):
    import importlib.util

    from trainformers import ConfigError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match="report_to names 'wandb' but it is not installed"):
        _trainer(tmp_path, report_to="wandb")
