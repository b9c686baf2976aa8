"""The chunked linear + cross-entropy: the plain loss and gradients, without the (batch, seq, vocab) logits."""

from __future__ import annotations

import pytest
import torch
from conftest import PadCollator, lm_rows, make_args, tiny_llama, weights
from torch import nn

import trainformers.chunked_loss as chunked
from trainformers import Trainer
from trainformers.chunked_loss import chunkable_head, linear_cross_entropy
from trainformers.errors import ConfigError
from trainformers.losses import lm_loss

# fp32 on CPU: measured at most 2e-6 relative (loss and every gradient), over the cases below
RTOL = 1e-5


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    """7 rows of a 64-token vocabulary a chunk: the tiny models here chunk (a micro-batch whose logits
    fit in one chunk takes the plain path), in many chunks with a ragged last one."""
    monkeypatch.setattr(chunked, "CHUNK_ELEMENTS", 7 * 64)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).detach())


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("num_items", [None, 40])
def test_equal_to_the_plain_loss_and_every_gradient(monkeypatch, smoothing, bias, num_items):
    monkeypatch.setattr(chunked, "CHUNK_ELEMENTS", 7 * 1000)  # 7 rows a chunk: many chunks, a ragged last one
    torch.manual_seed(0)
    head = nn.Linear(24, 1000, bias=bias)
    hidden = torch.randn(3, 17, 24, requires_grad=True)
    labels = torch.randint(0, 1000, (3, 17))
    labels[0, :5] = -100  # prompt tokens / padding
    params = [hidden, head.weight, *([head.bias] if bias else [])]
    n = None if num_items is None else torch.tensor(num_items)
    plain = lm_loss(head(hidden), labels, shift=True, num_items_in_batch=n, label_smoothing=smoothing)
    ours = linear_cross_entropy(hidden, head, labels, shift=True, num_items_in_batch=n, label_smoothing=smoothing)
    assert rel(ours, plain) < RTOL
    for g_ours, g_plain in zip(torch.autograd.grad(ours, params), torch.autograd.grad(plain, params), strict=True):
        assert rel(g_ours, g_plain) < RTOL


def test_a_frozen_head_gets_no_gradient_and_no_grad_mode_makes_none():
    head = nn.Linear(8, 50).requires_grad_(False)
    hidden = torch.randn(2, 5, 8, requires_grad=True)
    labels = torch.randint(0, 50, (2, 5))
    linear_cross_entropy(hidden, head, labels, shift=True).backward()
    assert head.weight.grad is None and hidden.grad is not None
    with torch.no_grad():
        loss = linear_cross_entropy(hidden, head, labels, shift=True)
    assert not loss.requires_grad and rel(loss, lm_loss(head(hidden), labels, shift=True)) < RTOL


def train(tmp_path, name, model, capsys=None, **overrides):
    args = make_args(tmp_path / name, gradient_accumulation_steps=2, **overrides)
    trainer = Trainer(model=model, args=args, train_dataset=lm_rows(24), data_collator=PadCollator())
    widths = []  # what the output layer hands on, step by step: (.., hidden) when chunked, (.., vocab) if not
    head = model.get_output_embeddings()
    hook = head.register_forward_hook(lambda m, i, out: widths.append(out.shape[-1]))
    trainer.train()
    hook.remove()
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    return losses, weights(model), set(widths)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_training_equals_the_plain_path_and_never_makes_the_logits(tmp_path, smoothing):
    on = train(tmp_path, "on", tiny_llama(), label_smoothing_factor=smoothing)
    off = train(tmp_path, "off", tiny_llama(), label_smoothing_factor=smoothing, chunked_cross_entropy=False)
    assert on[2] == {16} and off[2] == {64}  # hidden 16 vs vocab 64: the logits were never made
    assert max(abs(a - b) / b for a, b in zip(on[0], off[0], strict=True)) < RTOL
    assert all(rel(on[1][k], off[1][k]) < 1e-4 for k in on[1])  # 6 AdamW steps amplify 1e-6 differences


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_a_mixture_of_experts_keeps_its_router_loss(tmp_path, smoothing):
    """Chunked and plain, with label smoothing too (the labels never reach the model there, so the
    trainer adds the router loss itself; HF's label smoother drops it)."""
    from trainformers import DecoderLM, DecoderLMConfig

    def moe():
        torch.manual_seed(0)
        config = DecoderLMConfig(
            vocab_size=64, hidden_size=16, num_layers=2, num_heads=2, num_kv_heads=1, num_experts=4,
            num_experts_per_tok=2, max_position_embeddings=64, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        )  # fmt: skip
        return DecoderLM(config)

    smooth = {"label_smoothing_factor": smoothing}
    on, off = (
        train(tmp_path, "on", moe(), **smooth),
        train(tmp_path, "off", moe(), chunked_cross_entropy=False, **smooth),
    )
    assert on[2] == {16} and off[2] == {64}
    assert max(abs(a - b) / b for a, b in zip(on[0], off[0], strict=True)) < RTOL


def test_router_loss_follows_each_models_own_convention(tmp_path):
    """transformers' MoE models return the router loss unweighted and add coef x it to their loss:
    the model's own loss equals the token loss plus `router_loss`, and label smoothing keeps it."""
    from transformers import MixtralConfig, MixtralForCausalLM

    from trainformers.losses import router_loss

    torch.manual_seed(0)
    config = MixtralConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, num_local_experts=4, num_experts_per_tok=2, output_router_logits=True,
        router_aux_loss_coef=0.5, max_position_embeddings=64,
    )  # fmt: skip
    model = MixtralForCausalLM(config).train()
    ids = torch.randint(3, 64, (2, 9))
    own = model(input_ids=ids, labels=ids)
    aux = router_loss(model.config, own)
    assert aux is not None and float(aux) > 0
    assert torch.allclose(own.loss, lm_loss(own.logits, ids, shift=True) + aux, rtol=1e-6)
    trainer = Trainer(model=model, args=make_args(tmp_path, label_smoothing_factor=0.1), train_dataset=lm_rows(4))
    smoothed = trainer.compute_loss(model, {"input_ids": ids, "labels": ids})
    assert torch.allclose(smoothed, lm_loss(own.logits, ids, shift=True, label_smoothing=0.1) + aux, rtol=1e-6)


def test_a_model_it_cannot_handle_trains_the_plain_way_and_says_so(tmp_path, capsys):
    model = tiny_llama()
    model.config.final_logit_softcapping = 30.0  # as Gemma 2: the logits change after the head
    assert chunkable_head(model)[0] is None
    losses, _, widths = train(tmp_path, "capped", model)
    assert widths == {64} and losses
    assert "chunked_cross_entropy: off (its config scales the logits after the head" in capsys.readouterr().out


def test_logits_that_fit_in_one_chunk_take_the_plain_path(tmp_path, monkeypatch):
    monkeypatch.setattr(chunked, "CHUNK_ELEMENTS", 2**25)  # the shipped size: far above a tiny model's logits
    on = train(tmp_path, "on", tiny_llama())
    off = train(tmp_path, "off", tiny_llama(), chunked_cross_entropy=False)
    assert on[2] == off[2] == {64} and on[0] == off[0]  # the same path, bit for bit


def test_prompt_tuning_trains_the_plain_way_and_says_so(tmp_path, capsys):
    from peft import PromptTuningConfig, TaskType, get_peft_model

    model = get_peft_model(tiny_llama(), PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=4))
    args = make_args(tmp_path / "prompt", max_steps=2)
    Trainer(model=model, args=args, train_dataset=lm_rows(8), data_collator=PadCollator()).train()
    assert "chunked_cross_entropy: off (prompt-learning PEFT prepends virtual tokens" in capsys.readouterr().out


def test_use_liger_kernel_is_refused_where_it_cannot_run(tmp_path, monkeypatch):
    import importlib.util

    with pytest.raises(ConfigError, match=r"use_liger_kernel=True but liger-kernel is not installed; pip install"):
        Trainer(model=tiny_llama(), args=make_args(tmp_path, use_liger_kernel=True), train_dataset=lm_rows(4))
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: object() if name == "liger_kernel" else real(name, *a)
    )
    with pytest.raises(ConfigError, match=r"use_liger_kernel=True needs a CUDA GPU"):
        Trainer(model=tiny_llama(), args=make_args(tmp_path, use_liger_kernel=True), train_dataset=lm_rows(4))
