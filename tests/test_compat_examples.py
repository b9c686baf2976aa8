"""Scripts in the shape of transformers' examples/pytorch (our code, not copies), each run with
`transformers`' classes and with ours after changing only the import: the same losses, metrics,
result files and a model that reloads with plain transformers.

Tolerances: the loss rows agree to 1e-6 relative on this machine (the same kernels run in the same
order); 1e-5 is asserted.
"""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
import transformers
from datasets import Dataset
from transformers import HfArgumentParser

import trainformers
from trainformers.data import train_tokenizer

TEXTS = [f"the {a} {b} sat on the {c}" for a in ("big", "small", "red") for b in ("cat", "dog") for c in ("mat", "rug")]
KINDS = ["hf", "ours"]


def _lib(kind):
    return transformers if kind == "hf" else trainformers


def _tiny_bert(head, tokenizer, dropout=False, **config):
    """A one-layer BERT of `head` (BertForTokenClassification, ...) for `tokenizer`. Without dropout by
    default: ours reseeds the random stream per batch (exact resume), so dropout masks would differ."""
    torch.manual_seed(0)
    no_dropout = {} if dropout else {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    return head(
        transformers.BertConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=32,
            pad_token_id=tokenizer.pad_token_id,
            **no_dropout,
            **config,
        )  # fmt: skip
    )


def _training_args(kind, **settings):
    """The script's TrainingArguments, from transformers or from us; transformers' on the CPU too."""
    if kind == "hf":
        return transformers.TrainingArguments(use_cpu=True, **settings)
    return trainformers.TrainingArguments(**settings)


@dataclasses.dataclass
class ModelArguments:
    config_overrides: str = dataclasses.field(default="", metadata={"help": "tiny model settings"})


@dataclasses.dataclass
class DataTrainingArguments:
    block_size: int = dataclasses.field(default=8, metadata={"help": "tokens per training row"})


def _run_clm(kind, tmp_path):
    """examples/pytorch/language-modeling/run_clm.py, in miniature."""
    lib = _lib(kind)
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, lib.TrainingArguments))
    command = [
        "--output_dir", str(tmp_path / kind), "--do_train", "--do_eval", "--max_steps", "6",
        "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4", "--learning_rate", "5e-3",
        "--logging_steps", "2", "--save_strategy", "no", "--report_to", "none", "--optim", "adamw_torch",
        "--seed", "0", "--block_size", "8",
    ]  # fmt: skip
    if kind == "hf":
        command.append("--use_cpu")
    model_args, data_args, training_args = parser.parse_args_into_dataclasses(command)
    tokenizer = train_tokenizer(TEXTS * 4, 280)
    raw = Dataset.from_dict({"text": TEXTS * 3})
    with training_args.main_process_first(desc="tokenize"):
        tokenized = raw.map(lambda b: tokenizer(b["text"]), batched=True, remove_columns=["text"])

    def group_texts(examples):
        joined = {k: sum(examples[k], []) for k in examples}
        total = len(joined["input_ids"]) // data_args.block_size * data_args.block_size
        out = {
            k: [v[i : i + data_args.block_size] for i in range(0, total, data_args.block_size)]
            for k, v in joined.items()
        }
        out["labels"] = [ids[:] for ids in out["input_ids"]]
        return out

    blocks = tokenized.map(group_texts, batched=True)
    torch.manual_seed(training_args.seed)
    model = transformers.LlamaForCausalLM(
        transformers.LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
            max_position_embeddings=32,
            pad_token_id=tokenizer.pad_token_id,
        )  # fmt: skip
    )
    trainer = lib.Trainer(
        model=model,
        args=training_args,
        train_dataset=blocks,
        eval_dataset=blocks.select(range(8)),
        processing_class=tokenizer,
        data_collator=transformers.default_data_collator,
    )
    result = trainer.train()
    trainer.save_model()
    metrics = result.metrics
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    trainer.save_state()
    evaluation = trainer.evaluate()
    evaluation["perplexity"] = math.exp(evaluation["eval_loss"])
    trainer.save_metrics("eval", evaluation)
    return trainer, evaluation


def test_causal_lm_example(tmp_path):
    (theirs, their_eval), (ours, our_eval) = (_run_clm(kind, tmp_path) for kind in KINDS)
    losses = [[row["loss"] for row in t.state.log_history if "loss" in row] for t in (theirs, ours)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    # fixed-size blocks, no padding: HF's mean of batch means equals our mean over every token
    assert our_eval["eval_loss"] == pytest.approx(their_eval["eval_loss"], rel=1e-5)
    assert our_eval["perplexity"] == pytest.approx(their_eval["perplexity"], rel=1e-5)
    for name in ("train_results.json", "eval_results.json", "all_results.json", "trainer_state.json"):
        assert (tmp_path / "ours" / name).is_file(), name
    theirs_all = json.loads((tmp_path / "hf" / "all_results.json").read_text())
    ours_all = json.loads((tmp_path / "ours" / "all_results.json").read_text())
    assert set(theirs_all) <= set(ours_all) | {"train_samples_per_second"}  # ours adds throughput keys
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ours")
    ids = torch.tensor([[3, 4, 5, 6]])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, ours.model(ids).logits)


def _run_token_classification(kind, tmp_path):
    """examples/pytorch/token-classification/run_ner.py, in miniature: labels only on word starts."""
    lib = _lib(kind)
    tokenizer = train_tokenizer(TEXTS * 4, 280)
    rows = []
    for text in TEXTS * 2:
        ids = tokenizer(text)["input_ids"]
        labels = [-100 if i % 3 == 2 else int(t % 3) for i, t in enumerate(ids)]  # some positions ignored
        rows.append({"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels})
    model = _tiny_bert(transformers.BertForTokenClassification, tokenizer, num_labels=3)
    settings = dict(
        output_dir=str(tmp_path / kind), max_steps=6, per_device_train_batch_size=4, per_device_eval_batch_size=4,
        learning_rate=5e-3, logging_steps=2, save_strategy="no", report_to="none", optim="adamw_torch", seed=0,
    )  # fmt: skip

    def compute_metrics(prediction):
        predicted = np.argmax(prediction.predictions, axis=-1)
        kept = prediction.label_ids != -100
        return {"accuracy": float((predicted[kept] == prediction.label_ids[kept]).mean())}

    trainer = lib.Trainer(
        model=model,
        args=_training_args(kind, **settings),
        train_dataset=Dataset.from_list(rows),
        eval_dataset=Dataset.from_list(rows[:8]),
        data_collator=transformers.DataCollatorForTokenClassification(tokenizer),
        compute_metrics=compute_metrics,
    )
    trainer.train()
    return trainer, trainer.evaluate()


def test_token_classification_example(tmp_path):
    (theirs, their_eval), (ours, our_eval) = (_run_token_classification(kind, tmp_path) for kind in KINDS)
    losses = [[row["loss"] for row in t.state.log_history if "loss" in row] for t in (theirs, ours)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    assert our_eval["eval_accuracy"] == pytest.approx(their_eval["eval_accuracy"], abs=1e-12)


def _run_image_classification(kind, tmp_path):
    """examples/pytorch/image-classification, in miniature: pixel values, a collate_fn, no text columns."""
    lib = _lib(kind)
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(16, 3, 8, 8, generator=generator)
    rows = [{"pixel_values": images[i].tolist(), "labels": i % 2} for i in range(16)]
    torch.manual_seed(0)
    model = transformers.ViTForImageClassification(
        transformers.ViTConfig(
            image_size=8,
            patch_size=4,
            num_channels=3,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            num_labels=2,
        )  # fmt: skip
    )

    def collate_fn(examples):
        return {
            "pixel_values": torch.tensor([e["pixel_values"] for e in examples]),
            "labels": torch.tensor([e["labels"] for e in examples]),
        }

    settings = dict(
        output_dir=str(tmp_path / kind), max_steps=4, per_device_train_batch_size=4, learning_rate=5e-3,
        logging_steps=1, save_strategy="no", report_to="none", optim="adamw_torch", seed=0,
        remove_unused_columns=False,
    )  # fmt: skip
    trainer = lib.Trainer(
        model=model,
        args=_training_args(kind, **settings),
        train_dataset=Dataset.from_list(rows),
        data_collator=collate_fn,
    )
    trainer.train()
    return trainer


def test_image_classification_example(tmp_path):
    theirs, ours = (_run_image_classification(kind, tmp_path) for kind in KINDS)
    losses = [[row["loss"] for row in t.state.log_history if "loss" in row] for t in (theirs, ours)]
    assert len(losses[1]) == 4 and losses[1] == pytest.approx(losses[0], rel=1e-5)


def _run_question_answering(kind, tmp_path):
    """examples/pytorch/question-answering, in miniature: start/end positions as the labels."""
    lib = _lib(kind)
    tokenizer = train_tokenizer(TEXTS * 4, 280)
    rows = []
    for i, text in enumerate(TEXTS * 2):
        ids = tokenizer(text)["input_ids"]
        start = i % (len(ids) - 1)
        rows.append(
            {"input_ids": ids, "attention_mask": [1] * len(ids), "start_positions": start, "end_positions": start + 1}
        )
    model = _tiny_bert(transformers.BertForQuestionAnswering, tokenizer)
    settings = dict(
        output_dir=str(tmp_path / kind), max_steps=6, per_device_train_batch_size=4, per_device_eval_batch_size=4,
        learning_rate=5e-3, logging_steps=2, save_strategy="no", report_to="none", optim="adamw_torch", seed=0,
    )  # fmt: skip
    trainer = lib.Trainer(
        model=model,
        args=_training_args(kind, **settings),
        train_dataset=Dataset.from_list(rows),
        data_collator=transformers.DataCollatorWithPadding(tokenizer),
    )
    trainer.train()
    return trainer, trainer.predict(Dataset.from_list(rows[:8]))


def test_question_answering_example(tmp_path):
    (theirs, their_out), (ours, our_out) = (_run_question_answering(kind, tmp_path) for kind in KINDS)
    losses = [[row["loss"] for row in t.state.log_history if "loss" in row] for t in (theirs, ours)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    assert len(our_out.predictions) == 2 and len(our_out.label_ids) == 2  # (start, end) logits and positions
    for ours_part, theirs_part in zip(our_out.predictions, their_out.predictions):
        np.testing.assert_allclose(ours_part, theirs_part, rtol=1e-5, atol=1e-6)
    for ours_part, theirs_part in zip(our_out.label_ids, their_out.label_ids):
        np.testing.assert_array_equal(ours_part, theirs_part)
    assert our_out.metrics["test_loss"] == pytest.approx(their_out.metrics["test_loss"], rel=1e-5)


def _run_masked_lm(kind, tmp_path):
    """examples/pytorch/language-modeling/run_mlm.py, in miniature: the collator masks at random."""
    lib = _lib(kind)
    tokenizer = train_tokenizer(TEXTS * 4, 280)
    tokenizer.add_special_tokens({"mask_token": "<mask>"})
    rows = [tokenizer(text) for text in TEXTS * 3]
    model = _tiny_bert(transformers.BertForMaskedLM, tokenizer, dropout=True)
    settings = dict(
        output_dir=str(tmp_path / kind), max_steps=4, per_device_train_batch_size=4, per_device_eval_batch_size=4,
        learning_rate=5e-3, logging_steps=2, save_strategy="no", report_to="none", seed=0,
    )  # fmt: skip
    trainer = lib.Trainer(
        model=model,
        args=_training_args(kind, **settings),
        train_dataset=Dataset.from_list([dict(r) for r in rows]),
        eval_dataset=Dataset.from_list([dict(r) for r in rows[:8]]),
        data_collator=transformers.DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.3),
    )
    trainer.train()
    trainer.save_model()
    return trainer, trainer.evaluate()


def test_masked_lm_example_runs_on_both_and_reloads(tmp_path):
    """The masks are random: seeded per batch here (exact resume), so the numbers differ from
    transformers'; the script runs, evaluates and saves a model plain transformers loads."""
    for kind in KINDS:
        trainer, metrics = _run_masked_lm(kind, tmp_path)
        assert np.isfinite(metrics["eval_loss"]) and trainer.state.global_step == 4
    reloaded = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "ours")
    ids = torch.tensor([[3, 4, 5]])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, trainer.model(ids).logits)


def _run_search(kind, tmp_path):
    """A tutorial's compute_loss override with metrics, then an optuna search over the learning rate."""
    import optuna

    lib = _lib(kind)
    tokenizer = train_tokenizer(TEXTS * 4, 280)
    rows = [dict(tokenizer(text), labels=i % 2) for i, text in enumerate(TEXTS * 2)]

    def model_init(trial=None):
        return _tiny_bert(transformers.BertForSequenceClassification, tokenizer, num_labels=2)

    class WeightedLoss(lib.Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs.pop("labels")
            outputs = model(**inputs)
            loss = torch.nn.functional.cross_entropy(outputs.logits, labels, weight=torch.tensor([1.0, 2.0]))
            return (loss, outputs) if return_outputs else loss

    def accuracy(prediction):
        return {"accuracy": float((np.argmax(prediction.predictions, -1) == prediction.label_ids).mean())}

    settings = dict(
        output_dir=str(tmp_path / kind), max_steps=4, per_device_train_batch_size=4, per_device_eval_batch_size=4,
        eval_strategy="steps", eval_steps=4, save_strategy="no", report_to="none", optim="adamw_torch", seed=0,
        logging_steps=2,
    )  # fmt: skip
    trainer = WeightedLoss(
        model_init=model_init,
        args=_training_args(kind, **settings),
        train_dataset=Dataset.from_list(rows),
        eval_dataset=Dataset.from_list(rows[:8]),
        data_collator=transformers.DataCollatorWithPadding(tokenizer),
        compute_metrics=accuracy,
    )
    return trainer.hyperparameter_search(
        hp_space=lambda trial: {"learning_rate": trial.suggest_float("learning_rate", 1e-3, 1e-1, log=True)},
        compute_objective=lambda metrics: metrics["eval_loss"],
        n_trials=3,
        direction="minimize",
        backend="optuna",
        sampler=optuna.samplers.RandomSampler(seed=0),
    )


def test_compute_loss_override_metrics_and_optuna_search(tmp_path):
    theirs, ours = (_run_search(kind, tmp_path) for kind in KINDS)
    assert ours.hyperparameters["learning_rate"] == pytest.approx(theirs.hyperparameters["learning_rate"], rel=1e-12)
    assert ours.objective == pytest.approx(theirs.objective, rel=1e-5)
