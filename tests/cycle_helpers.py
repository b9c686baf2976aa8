"""Tiny models, a shared tokenizer and the demo data for the CycleTrainer tests (CPU, no network)."""

from __future__ import annotations

import functools

import torch

from trainformers import CycleTrainer, CycleTrainingArguments
from trainformers.cycle.demo_data import build_demo_data


@functools.cache
def demo():
    return build_demo_data(n_paired_train=16, n_unpaired_A=64, n_unpaired_B=48, n_eval=8, max_number=999)


@functools.cache
def tokenizer():
    from trainformers.data import train_tokenizer

    d = demo()
    return train_tokenizer(list(d.unpaired_A["text"]) + list(d.unpaired_B["text"]) + list(d.paired_eval["text_A"]), 320)


def tiny_causal(seed: int = 0, tok=None):
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tok or tokenizer()
    torch.manual_seed(seed)
    return LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
    )


def tiny_t5(seed: int = 0, tok=None):
    from transformers import T5Config, T5ForConditionalGeneration

    tok = tok or tokenizer()
    torch.manual_seed(seed)
    return T5ForConditionalGeneration(
        T5Config(
            vocab_size=len(tok),
            d_model=32,
            d_ff=64,
            num_layers=2,
            num_heads=4,
            d_kv=8,
            dropout_rate=0.0,
            decoder_start_token_id=tok.pad_token_id,
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
    )


def cycle_args(tmp_path, **overrides) -> CycleTrainingArguments:
    defaults = dict(
        output_dir=str(tmp_path / "run"),
        per_device_train_batch_size=4,
        per_device_eval_batch_size=8,
        learning_rate=3e-3,
        max_steps=4,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        report_at_end=False,
        seed=0,
        optim="adamw_torch",
        max_new_tokens_A=8,
        max_new_tokens_B=8,
    )
    defaults.update(overrides)
    return CycleTrainingArguments(**defaults)


class DeterministicCycleTrainer(CycleTrainer):
    """Generation replaced by a fixed function of the text (words reversed), so tests of the
    training math (accumulation, processes) don't depend on batch-shape-sensitive argmaxes."""

    def _generate(self, side, texts, *, evaluation=False):
        return [side.builder.encode(" ".join(reversed(t.split()))) for t in texts]
