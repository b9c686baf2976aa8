"""Gradient accumulation on a sequence classifier: HF Trainer vs trainformers, side by side.

One SGD step (lr 0.1, no clipping) on the same 8 rows as batch 8 x accumulation 1 and as batch
2 x accumulation 4. An exact trainer takes the same step both ways (ratio 1.0).

    .venv/bin/python bench/accumulation_vs_hf.py
"""

from __future__ import annotations

import tempfile

import torch
import transformers
from datasets import Dataset

import trainformers


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return transformers.BertForSequenceClassification(config)


def rows() -> Dataset:
    g = torch.Generator().manual_seed(0)
    return Dataset.from_list(
        [{"input_ids": torch.randint(1, 50, (6,), generator=g).tolist(), "labels": i % 2} for i in range(8)]
    )


def step(lib, batch: int, accumulation: int) -> torch.Tensor:
    m = model()
    args = lib.TrainingArguments(
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation,
        max_steps=1,
        learning_rate=0.1,
        optim="sgd",
        max_grad_norm=0.0,
        report_to="none",
        disable_tqdm=True,
        train_sampling_strategy="sequential",
        logging_steps=1,
        save_strategy="no",
    )
    lib.Trainer(m, args, train_dataset=rows()).train()
    return m.classifier.weight.detach().clone()


if __name__ == "__main__":
    start = model().classifier.weight.detach()
    for lib in (transformers, trainformers):
        full, accumulated = step(lib, 8, 1), step(lib, 2, 4)
        ratio = ((accumulated - start).norm() / (full - start).norm()).item()
        print(f"{lib.__name__:>13} {lib.__version__}: update(2x4) / update(8x1) = {ratio:.4f}")
