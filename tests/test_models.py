"""Model families through the Trainer: tiny random-init models, a few CPU steps each, invariants checked.

Every training test asserts more than "it runs": each trainable parameter moved, every logged
loss is finite, and where it is cheap the loss goes down on a small memorisable set.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import VOCAB, PadCollator, lm_rows, make_args, tiny_llama, weights
from datasets import Dataset

from trainformers import ConfigError, Trainer

NUM_LABELS = 3
MASK_ID = 4  # ids >= 5 are "words" in the masked-LM rows, so the mask id never collides


# ---- tiny models ---------------------------------------------------------------------------------


def _bert(cls_name: str, seed: int = 0, **config):
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.BertConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=0,
        **config,
    )
    return getattr(transformers, cls_name)(cfg)


def _t5(seed: int = 0):
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(seed)
    cfg = T5Config(
        vocab_size=VOCAB,
        d_model=16,
        d_kv=8,
        d_ff=32,
        num_layers=1,
        num_decoder_layers=1,
        num_heads=2,
        relative_attention_num_buckets=8,
        dropout_rate=0.0,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return T5ForConditionalGeneration(cfg)


# ---- data ----------------------------------------------------------------------------------------


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _randint(g, low, high) -> int:
    return int(torch.randint(low, high + 1, (1,), generator=g))


def _ids(g, length: int, low: int = 3) -> list[int]:
    return torch.randint(low, VOCAB, (length,), generator=g).tolist()


def cls_rows(n: int = 8, seed: int = 0, min_len: int = 4, max_len: int = 10) -> Dataset:
    g = _gen(seed)
    rows = []
    for i in range(n):
        length = _randint(g, min_len, max_len)
        rows.append({"input_ids": _ids(g, length), "attention_mask": [1] * length, "labels": i % NUM_LABELS})
    return Dataset.from_list(rows)


def token_rows(n: int = 8, seed: int = 0, min_len: int = 4, max_len: int = 12) -> Dataset:
    """Per-token labels; the first token and ~30% of the others are -100, so label counts differ per row."""
    g = _gen(seed)
    rows = []
    for _ in range(n):
        length = _randint(g, min_len, max_len)
        labels = torch.randint(0, NUM_LABELS, (length,), generator=g)
        labels[torch.rand(length, generator=g) < 0.3] = -100
        labels[0] = -100
        labels[-1] = int(torch.randint(0, NUM_LABELS, (1,), generator=g))  # at least one real label
        rows.append({"input_ids": _ids(g, length), "attention_mask": [1] * length, "labels": labels.tolist()})
    return Dataset.from_list(rows)


def qa_rows(n: int = 8, seed: int = 0, length: int = 10) -> Dataset:
    """Fixed length: BERT's QA head does not mask padding, so equal lengths keep losses batch-independent."""
    g = _gen(seed)
    rows = []
    for _ in range(n):
        start = _randint(g, 1, length - 4)
        end = start + _randint(g, 0, 3)
        rows.append(
            {
                "input_ids": _ids(g, length),
                "attention_mask": [1] * length,
                "start_positions": start,
                "end_positions": end,
            }
        )
    return Dataset.from_list(rows)


def seq2seq_rows(n: int = 8, seed: int = 0) -> Dataset:
    g = _gen(seed)
    rows = []
    for _ in range(n):
        src, tgt = _randint(g, 4, 10), _randint(g, 2, 6)
        rows.append({"input_ids": _ids(g, src), "attention_mask": [1] * src, "labels": _ids(g, tgt) + [1]})
    return Dataset.from_list(rows)


def mlm_rows(n: int = 8, seed: int = 0) -> Dataset:
    """~30% of the positions masked (at least one); labels are -100 everywhere else."""
    g = _gen(seed)
    rows = []
    for _ in range(n):
        length = _randint(g, 6, 12)
        original = torch.tensor(_ids(g, length, low=MASK_ID + 1))
        masked = torch.rand(length, generator=g) < 0.3
        masked[_randint(g, 0, length - 1)] = True
        ids = torch.where(masked, torch.full_like(original, MASK_ID), original)
        labels = torch.where(masked, original, torch.full_like(original, -100))
        rows.append({"input_ids": ids.tolist(), "attention_mask": [1] * length, "labels": labels.tolist()})
    return Dataset.from_list(rows)


class Pad:
    """Right-pad every list column (labels with -100, the rest with 0); scalars become a 1-d tensor.

    `ignore` names columns to drop (e.g. a raw "text" column); `seen` records the keys of every
    feature the collator was given.
    """

    def __init__(self, ignore: tuple[str, ...] = ()):
        self.ignore = ignore
        self.seen: list[set[str]] = []

    def __call__(self, features):
        self.seen.append(set(features[0]))
        out = {}
        for key in features[0]:
            if key in self.ignore:
                continue
            values = [f[key] for f in features]
            if isinstance(values[0], (list, tuple)):
                width = max(len(v) for v in values)
                pad = -100 if key == "labels" else 0
                out[key] = torch.tensor([list(v) + [pad] * (width - len(v)) for v in values])
            else:
                out[key] = torch.tensor(values)
        return out


# ---- helpers -------------------------------------------------------------------------------------


def trainable(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def logged_losses(trainer) -> list[float]:
    return [row["loss"] for row in trainer.state.log_history if "loss" in row]


def train(tmp_path, model, data, *, collator=None, cls=Trainer, **overrides) -> Trainer:
    overrides = {"per_device_train_batch_size": 8, "max_steps": 4, **overrides}
    t = cls(model, make_args(tmp_path, **overrides), data_collator=collator or Pad(), train_dataset=data)
    t.train()
    return t


def assert_trained(trainer, before: dict[str, torch.Tensor], *, steps: int | None = None) -> list[float]:
    """Every trainable parameter moved and every logged loss is finite; returns the losses."""
    losses = logged_losses(trainer)
    assert losses, "no training loss was logged"
    assert all(math.isfinite(x) for x in losses), losses
    if steps is not None:
        assert trainer.state.global_step == steps
    unchanged = [n for n, p in trainer.model.named_parameters() if n in before and torch.equal(p.detach(), before[n])]
    assert not unchanged, f"parameters not updated: {unchanged}"
    return losses


def assert_learns(losses: list[float], factor: float = 0.5) -> None:
    assert losses[-1] < factor * losses[0], f"loss did not go down enough: first {losses[0]:.4f}, last {losses[-1]:.4f}"


MEMORISE = dict(max_steps=30, learning_rate=2e-2, per_device_train_batch_size=8)


# ---- 1. sequence classification ------------------------------------------------------------------


@pytest.fixture(scope="module")
def seq_cls(tmp_path_factory):
    """A tiny BERT classifier trained 30 steps on 8 rows (shared by the tests that only read it)."""
    model = _bert("BertForSequenceClassification", num_labels=NUM_LABELS)
    before = trainable(model)
    data = cls_rows(8)
    t = train(tmp_path_factory.mktemp("seq_cls"), model, data, **MEMORISE)
    return t, before, data


def test_sequence_classification_trains_and_learns(seq_cls):
    t, before, _ = seq_cls
    assert_learns(assert_trained(t, before, steps=30))


def test_sequence_classification_evaluate_with_accuracy(seq_cls):
    t, _, data = seq_cls

    def accuracy(pred):
        assert pred.predictions.shape == (len(data), NUM_LABELS)
        return {"accuracy": float((pred.predictions.argmax(-1) == pred.label_ids).mean())}

    t.compute_metrics = accuracy
    metrics = t.evaluate(data)
    assert {"eval_loss", "eval_accuracy"} <= set(metrics)
    batch = Pad()([data[i] for i in range(len(data))])
    t.model.eval()
    with torch.no_grad():
        out = t.model(**batch)
    expected = (out.logits.argmax(-1) == batch["labels"]).float().mean().item()
    assert metrics["eval_accuracy"] == pytest.approx(expected)
    assert metrics["eval_loss"] == pytest.approx(out.loss.item(), rel=1e-4)
    assert metrics["eval_accuracy"] >= 0.75  # the 8 rows were memorised


def test_sequence_classification_save_and_reload(seq_cls, tmp_path):
    from transformers import AutoModelForSequenceClassification

    t, _, data = seq_cls
    t.save_model(str(tmp_path / "model"))
    reloaded = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "model"))
    _assert_same_logits(t.model, reloaded, Pad()([data[i] for i in range(4)]))


def _assert_same_logits(trained, reloaded, batch) -> None:
    trained.eval()
    reloaded.eval()
    assert type(reloaded) is type(trained)
    with torch.no_grad():
        a = trained(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        b = reloaded(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert torch.equal(a, b)


# ---- 2. token classification ---------------------------------------------------------------------


def test_token_classification_trains_and_learns(tmp_path):
    model = _bert("BertForTokenClassification", num_labels=NUM_LABELS)
    before = trainable(model)
    t = train(tmp_path, model, token_rows(8), **MEMORISE)
    assert_learns(assert_trained(t, before, steps=30))


# ---- 3. extractive question answering ------------------------------------------------------------


def test_question_answering_trains_and_predicts(tmp_path):
    model = _bert("BertForQuestionAnswering")
    before = trainable(model)
    data = qa_rows(8)
    t = train(tmp_path, model, data, learning_rate=2e-2)
    assert t.label_names == ["start_positions", "end_positions"]
    assert_trained(t, before, steps=4)

    test = qa_rows(6, seed=1)
    out = t.predict(test)
    assert isinstance(out.predictions, tuple) and len(out.predictions) == 2
    start_logits, end_logits = out.predictions
    assert start_logits.shape == end_logits.shape == (6, 10)
    assert isinstance(out.label_ids, tuple) and len(out.label_ids) == 2
    assert out.label_ids[0].tolist() == test["start_positions"]
    assert out.label_ids[1].tolist() == test["end_positions"]
    batch = Pad()([test[i] for i in range(6)])
    t.model.eval()
    with torch.no_grad():
        ref = t.model(**batch)
    torch.testing.assert_close(torch.as_tensor(start_logits), ref.start_logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.as_tensor(end_logits), ref.end_logits, rtol=1e-5, atol=1e-6)
    # every row weighs the same in the QA loss (it averages over rows)
    assert out.metrics["test_loss"] == pytest.approx(ref.loss.item(), rel=1e-5)


# ---- 4. seq2seq ----------------------------------------------------------------------------------


def test_seq2seq_trains_and_learns(tmp_path):
    model = _t5()
    before = trainable(model)
    t = train(tmp_path, model, seq2seq_rows(8), **MEMORISE)
    assert_learns(assert_trained(t, before, steps=30))


def test_seq2seq_eval_loss_is_the_token_mean(tmp_path):
    """Labels of different lengths, batches of 4 + 2 rows: eval_loss is the mean over every label token
    of the set (what T5 computes on the whole set at once), not a mean of batch means."""
    model = _t5()
    data = seq2seq_rows(6, seed=2)
    t = Trainer(model, make_args(tmp_path, per_device_eval_batch_size=4), data_collator=Pad())
    metrics = t.evaluate(data)
    batch = Pad()([data[i] for i in range(6)])
    with torch.no_grad():
        assert metrics["eval_loss"] == pytest.approx(model(**batch).loss.item(), rel=1e-5)


# ---- 5. masked LM --------------------------------------------------------------------------------


def test_masked_lm_trains_and_learns(tmp_path):
    model = _bert("BertForMaskedLM")
    before = trainable(model)
    data = mlm_rows(8)
    t = train(tmp_path, model, data, **MEMORISE)
    assert_learns(assert_trained(t, before, steps=30))
    # eval_loss is the mean over the masked positions only (what BertForMaskedLM computes)
    metrics = t.evaluate(data)
    batch = Pad()([data[i] for i in range(8)])
    t.model.eval()
    with torch.no_grad():
        assert metrics["eval_loss"] == pytest.approx(t.model(**batch).loss.item(), rel=1e-4)


# ---- 6. causal LM --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def causal(tmp_path_factory):
    model = tiny_llama()
    before = trainable(model)
    data = lm_rows(8)
    t = train(tmp_path_factory.mktemp("causal"), model, data, collator=PadCollator(), **MEMORISE)
    return t, before, data


def test_causal_lm_trains_and_learns(causal):
    t, before, _ = causal
    assert_learns(assert_trained(t, before, steps=30))


def test_causal_lm_save_and_reload(causal, tmp_path):
    from transformers import AutoModelForCausalLM

    t, _, data = causal
    t.save_model(str(tmp_path / "model"))
    reloaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "model"))
    _assert_same_logits(t.model, reloaded, PadCollator()([data[i] for i in range(4)]))


# ---- 7. gradient accumulation --------------------------------------------------------------------


@pytest.mark.parametrize(
    "cls_name,rows",
    [("BertForSequenceClassification", cls_rows), ("BertForTokenClassification", token_rows)],
    ids=["sequence", "token"],
)
def test_accumulation_8x1_equals_2x4(tmp_path, cls_name, rows):
    """Same global batch split differently; for tokens the micro-batches hold different label counts."""
    data = rows(32, seed=5)
    runs = []
    for name, bs, ga in (("a", 8, 1), ("b", 2, 4)):
        t = train(
            tmp_path / name,
            _bert(cls_name, num_labels=NUM_LABELS),
            data,
            per_device_train_batch_size=bs,
            gradient_accumulation_steps=ga,
            learning_rate=1e-2,
        )
        runs.append(t)
    la, lb = logged_losses(runs[0]), logged_losses(runs[1])
    assert len(la) == len(lb) == 4
    for x, y in zip(la, lb):
        assert x == pytest.approx(y, rel=1e-5)
    # atol 1e-5 (the updates total ~4e-2): padding to a different width reorders float sums, and
    # Adam turns that noise into ~1e-6 moves where a gradient is ~0 (e.g. the attention key bias)
    wa, wb = weights(runs[0].model), weights(runs[1].model)
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=1e-4, atol=1e-5, msg=name)


# ---- 8. remove_unused_columns --------------------------------------------------------------------


def _with_text(data: Dataset) -> Dataset:
    return data.add_column("text", [f"row {i}" for i in range(len(data))])


def test_unused_string_column_is_dropped(tmp_path):
    model = _bert("BertForSequenceClassification", num_labels=NUM_LABELS)
    before = trainable(model)
    collator = Pad()  # would fail on a string column: torch.tensor(["row 0", ...])
    t = train(tmp_path, model, _with_text(cls_rows(8)), collator=collator)
    assert_trained(t, before, steps=4)
    assert collator.seen and all("text" not in keys for keys in collator.seen)
    assert "text" in t.train_dataset.column_names  # the user's dataset is left as it was


def test_keep_unused_columns_with_a_collator_that_ignores_them(tmp_path):
    model = _bert("BertForSequenceClassification", num_labels=NUM_LABELS)
    before = trainable(model)
    collator = Pad(ignore=("text",))
    t = train(tmp_path, model, _with_text(cls_rows(8)), collator=collator, remove_unused_columns=False)
    assert_trained(t, before, steps=4)
    assert collator.seen and all("text" in keys for keys in collator.seen)


# ---- 9. label smoothing --------------------------------------------------------------------------


def _confident_llama():
    """tiny_llama with a scaled-up output layer: peaked logits, so smoothing changes the loss a lot."""
    model = tiny_llama()
    with torch.no_grad():
        model.lm_head.weight.mul_(50)
    return model


def test_label_smoothing_first_loss_matches_hand_computation(tmp_path):
    data = lm_rows(8)
    reference = _confident_llama()  # the initial weights of the trained model
    t = train(
        tmp_path,
        _confident_llama(),
        data,
        collator=PadCollator(),
        label_smoothing_factor=0.1,
        max_steps=1,
        train_sampling_strategy="sequential",
    )
    batch = PadCollator()([data[i] for i in range(8)])
    with torch.no_grad():
        logits = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    flat_logits = logits[:, :-1].reshape(-1, logits.shape[-1])
    flat_labels = batch["labels"][:, 1:].reshape(-1)
    smoothed = F.cross_entropy(flat_logits, flat_labels, ignore_index=-100, label_smoothing=0.1).item()
    plain = F.cross_entropy(flat_logits, flat_labels, ignore_index=-100).item()
    assert abs(smoothed - plain) > 1e-3 * plain  # 100x the tolerance below: the check tells them apart
    (first,) = logged_losses(t)
    assert first == pytest.approx(smoothed, rel=1e-5)


# ---- 10. gradient checkpointing ------------------------------------------------------------------


def _checkpointing(model) -> bool:
    # transformers 5 renamed is_gradient_checkpointing (deprecated) to is_activation_checkpointing
    flag = getattr(type(model), "is_activation_checkpointing", None)
    return model.is_activation_checkpointing if flag is not None else model.is_gradient_checkpointing


def test_gradient_checkpointing_changes_nothing(tmp_path):
    plain = train(tmp_path / "plain", tiny_llama(), lm_rows(), collator=PadCollator(), per_device_train_batch_size=4)
    ckpt = train(
        tmp_path / "ckpt",
        tiny_llama(),
        lm_rows(),
        collator=PadCollator(),
        per_device_train_batch_size=4,
        gradient_checkpointing=True,
    )
    assert _checkpointing(ckpt.model) and not _checkpointing(plain.model)
    la, lb = logged_losses(plain), logged_losses(ckpt)
    assert len(la) == len(lb) == 4
    for x, y in zip(la, lb):
        assert x == pytest.approx(y, rel=1e-5)
    wa, wb = weights(plain.model), weights(ckpt.model)
    for name in wa:
        torch.testing.assert_close(wa[name], wb[name], rtol=1e-5, atol=1e-5, msg=name)


# ---- 11. torch.compile ---------------------------------------------------------------------------


@pytest.fixture
def fresh_accelerate_state():
    """Don't let a compile setting leak into later tests through Accelerate's process-wide state."""
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=False)


def test_torch_compile_eager_backend_gives_the_same_losses(tmp_path, fresh_accelerate_state):
    from torch._dynamo.eval_frame import OptimizedModule

    data = lm_rows(8, min_len=8, max_len=8)  # one shape: no recompilation
    common = dict(collator=PadCollator(), per_device_train_batch_size=4, max_steps=2)
    plain = train(tmp_path / "plain", tiny_llama(), data, **common)  # a Trainer built earlier in the process
    before = trainable(model := tiny_llama())
    compiled = train(tmp_path / "compiled", model, data, torch_compile=True, torch_compile_backend="eager", **common)
    assert isinstance(compiled.model_wrapped, OptimizedModule), "torch_compile=True did not compile the model"
    assert_trained(compiled, before, steps=2)
    la, lb = logged_losses(plain), logged_losses(compiled)
    assert len(la) == len(lb) == 2
    for x, y in zip(la, lb):
        assert x == pytest.approx(y, rel=1e-5)
    after = train(tmp_path / "after", tiny_llama(), data, **common)  # and the setting does not stick
    assert not isinstance(after.model_wrapped, OptimizedModule), "torch_compile leaked into a later Trainer"
    assert logged_losses(after) == la


# ---- 12. auto_find_batch_size --------------------------------------------------------------------


def test_auto_find_batch_size_shrinks_until_it_fits(tmp_path, monkeypatch):
    model = tiny_llama()
    before = trainable(model)
    original = model.forward
    rows_seen = []

    @functools.wraps(original)  # keeps the signature: remove_unused_columns inspects it
    def forward(*args, **kwargs):
        rows = kwargs["input_ids"].shape[0]
        rows_seen.append(rows)
        if rows > 2:
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory")
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "forward", forward)
    t = train(
        tmp_path,
        model,
        lm_rows(16),
        collator=PadCollator(),
        per_device_train_batch_size=8,
        max_steps=2,
        auto_find_batch_size=True,
    )
    assert t.args.per_device_train_batch_size == 2
    assert t.state.train_batch_size == 2
    # each failed size is tried once, smaller every time (Accelerate shrinks by 0.9 like HF; halving is fine too)
    failed, fitted = [r for r in rows_seen if r > 2], [r for r in rows_seen if r <= 2]
    assert failed[0] == 8 and failed == sorted(set(failed), reverse=True)
    assert rows_seen == failed + fitted and fitted == [2, 2]  # one micro-batch per step, 2 steps
    assert_trained(t, before, steps=2)


# ---- 13. learning-rate schedulers ----------------------------------------------------------------


def _scheduler_names() -> list[str]:
    from transformers import SchedulerType

    return [s.value for s in SchedulerType]


SCHEDULER_KWARGS = {
    "cosine_with_min_lr": {"min_lr_rate": 0.1},
    "cosine_warmup_with_min_lr": {"min_lr_rate": 0.1},
    "warmup_stable_decay": {"num_decay_steps": 1},
}
METRIC_DRIVEN = ("reduce_lr_on_plateau", "greedy")  # step on an evaluation metric


@pytest.mark.parametrize("name", _scheduler_names())
def test_every_scheduler_type_trains(tmp_path, name):
    model = tiny_llama()
    before = trainable(model)
    overrides = dict(
        lr_scheduler_type=name,
        lr_scheduler_kwargs=SCHEDULER_KWARGS.get(name, {}),
        warmup_steps=1,
        max_steps=3,
        per_device_train_batch_size=4,
    )
    if name in METRIC_DRIVEN:
        overrides.update(eval_strategy="steps", eval_steps=1, metric_for_best_model="loss")
    t = Trainer(
        model,
        make_args(tmp_path, **overrides),
        data_collator=PadCollator(),
        train_dataset=lm_rows(16),
        eval_dataset=lm_rows(4, seed=9) if name in METRIC_DRIVEN else None,
    )
    t.train()
    assert_trained(t, before, steps=3)
    lrs = [row["learning_rate"] for row in t.state.log_history if "learning_rate" in row]
    assert len(lrs) == 3 and all(math.isfinite(lr) and 0 <= lr <= 1e-2 * 1.0001 for lr in lrs), lrs
    if name in METRIC_DRIVEN:
        assert len([row for row in t.state.log_history if "eval_loss" in row]) == 3
    if name == "linear":  # the rate each step used, as transformers logs it (one warm-up step first)
        assert lrs == pytest.approx([0.0, 1e-2, 5e-3])
    if name == "constant":
        assert lrs == pytest.approx([1e-2] * 3)


@pytest.mark.parametrize("name", ["cosine_with_min_lr", "warmup_stable_decay"])
def test_scheduler_missing_kwargs_is_a_config_error(tmp_path, name):
    t = Trainer(
        tiny_llama(), make_args(tmp_path, lr_scheduler_type=name), data_collator=PadCollator(), train_dataset=lm_rows(8)
    )
    with pytest.raises(ConfigError, match=f"'{name}'.*lr_scheduler_kwargs") as err:
        t.train()
    assert "\n" not in str(err.value)


# ---- 14. optimizers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "optim,cls_name",
    [
        ("adamw_torch", "AdamW"),
        ("adamw_torch_fused", "AdamW"),
        ("sgd", "SGD"),
        ("adafactor", "Adafactor"),
        ("adagrad", "Adagrad"),
        ("rmsprop", "RMSprop"),
    ],
)
def test_optimizer_trains(tmp_path, optim, cls_name):
    model = tiny_llama()
    before = trainable(model)
    t = train(tmp_path, model, lm_rows(8), collator=PadCollator(), optim=optim, max_steps=2, learning_rate=5e-2)
    inner = getattr(t.optimizer, "optimizer", t.optimizer)  # Accelerate wraps it
    assert type(inner).__name__ == cls_name
    if optim == "adamw_torch_fused":
        assert all(g["fused"] for g in inner.param_groups)
    elif optim == "adamw_torch":
        assert not any(g.get("fused") for g in inner.param_groups)
    assert_trained(t, before, steps=2)


def test_optim_args_reach_the_optimizer(tmp_path):
    t = train(
        tmp_path, tiny_llama(), lm_rows(8), collator=PadCollator(), optim="sgd", optim_args="momentum=0.9", max_steps=2
    )
    assert all(g["momentum"] == 0.9 for g in t.optimizer.param_groups)


def test_8bit_optimizer_on_cpu_is_a_one_line_config_error(tmp_path):
    t = Trainer(
        tiny_llama(), make_args(tmp_path, optim="adamw_8bit"), data_collator=PadCollator(), train_dataset=lm_rows(8)
    )
    with pytest.raises(ConfigError, match="adamw_8bit") as err:
        t.train()
    assert "\n" not in str(err.value)


# ---- 15. optimizers given by the caller ----------------------------------------------------------


def test_optimizer_cls_and_kwargs_is_used(tmp_path):
    model = tiny_llama()
    before = trainable(model)
    t = Trainer(
        model,
        make_args(tmp_path, max_steps=2, lr_scheduler_type="constant"),
        data_collator=PadCollator(),
        train_dataset=lm_rows(8),
        optimizer_cls_and_kwargs=(torch.optim.SGD, {"lr": 0.1}),
    )
    t.train()
    inner = getattr(t.optimizer, "optimizer", t.optimizer)
    assert type(inner) is torch.optim.SGD
    assert all(g["lr"] == 0.1 for g in inner.param_groups)
    assert [row["learning_rate"] for row in t.state.log_history if "loss" in row] == [0.1, 0.1]
    assert_trained(t, before, steps=2)


def test_optimizers_tuple_is_used_as_given(tmp_path):
    model = tiny_llama()
    before = trainable(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (step + 1))
    t = Trainer(
        model,
        make_args(tmp_path, max_steps=3),
        data_collator=PadCollator(),
        train_dataset=lm_rows(8),
        optimizers=(opt, sched),
    )
    t.train()
    assert getattr(t.optimizer, "optimizer", t.optimizer) is opt
    assert getattr(t.lr_scheduler, "scheduler", t.lr_scheduler) is sched
    assert sched.last_epoch == 3
    lrs = [row["learning_rate"] for row in t.state.log_history if "loss" in row]
    assert lrs == pytest.approx([0.05, 0.05 / 2, 0.05 / 3])  # our schedule (the rate each step used), not linear
    assert_trained(t, before, steps=3)


# ---- weight decay groups -------------------------------------------------------------------------


def test_no_weight_decay_on_biases_and_norms(tmp_path):
    model = _bert("BertForSequenceClassification", num_labels=NUM_LABELS)
    model.bert.embeddings.position_embeddings.weight.requires_grad_(False)  # frozen: in no group
    t = train(tmp_path, model, cls_rows(8), weight_decay=0.1, max_steps=1)
    names = {id(p): n for n, p in model.named_parameters()}
    groups = t.optimizer.param_groups
    decayed = {names[id(p)] for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    plain = {names[id(p)] for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    assert all(g["weight_decay"] in (0.0, 0.1) for g in groups)
    trainable_names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert decayed | plain == trainable_names and not decayed & plain
    assert "bert.embeddings.position_embeddings.weight" not in decayed | plain
    assert plain == {n for n, p in model.named_parameters() if p.requires_grad and p.ndim < 2}
    assert all(n.endswith("bias") or "LayerNorm" in n for n in plain)
    assert {"bert.encoder.layer.0.attention.output.LayerNorm.weight", "classifier.bias"} <= plain
    assert {"bert.embeddings.word_embeddings.weight", "classifier.weight"} <= decayed
