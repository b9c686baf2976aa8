"""bf16 on CPU: autocast where the CPU multiplies bf16 natively, fp32 and one line where it does not.

Where it is supported, the invariants are those of mixed precision: linear layers compute in bf16
inside training, the loss, master weights and optimizer state stay fp32, and the loss curve
stays within `CURVE_TOLERANCE` of the fp32 one (bench/bf16_cpu.py holds the 20M model to the same).
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import VOCAB, PadCollator, make_args, tiny_llama
from datasets import Dataset

from trainformers import DecoderLM, DecoderLMConfig, Trainer, accel

needs_bf16 = pytest.mark.skipif(
    not accel.cpu_has_native_bf16(), reason="this CPU has no native bf16 matmul (AVX512-BF16, AMX or Arm BF16)"
)

# Max |loss_bf16 - loss_fp32| / loss_fp32 at any step of a 30-step curve. Measured on an AMD EPYC
# with AVX512-BF16 (torch 2.13), same data, seeds 0-3: tiny Llama at most 0.0015, tiny DecoderLM at
# most 0.0096 (seed 0, used here: 0.0006 and 0.0057); bf16 rounds to 2^-8 = 0.4% relative.
CURVE_TOLERANCE = 0.02


def markov_rows(n: int = 64, length: int = 16, seed: int = 0) -> Dataset:
    """Rows from a fixed two-successor chain: learnable (entropy floor ln 2), so the curve falls from ln 64."""
    successors = torch.randint(3, VOCAB, (VOCAB, 2), generator=torch.Generator().manual_seed(1234))
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        token = int(torch.randint(3, VOCAB, (1,), generator=g))
        ids = [token]
        for _ in range(length - 1):
            token = int(successors[token, int(torch.randint(0, 2, (1,), generator=g))])
            ids.append(token)
        rows.append({"input_ids": ids, "attention_mask": [1] * length, "labels": ids})
    return Dataset.from_list(rows)


def tiny_decoder(seed: int = 0) -> DecoderLM:
    torch.manual_seed(seed)
    return DecoderLM(
        DecoderLMConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
        )
    )


def _trainer(tmp_path, model, **overrides) -> Trainer:
    # use_cpu: the CPU path also on a machine with a GPU; sequential: both precisions see the same batches
    args = make_args(tmp_path, use_cpu=True, train_sampling_strategy="sequential", **overrides)
    return Trainer(model, args, data_collator=PadCollator(), train_dataset=markov_rows())


def _record_linear_dtypes(model: torch.nn.Module) -> list[torch.dtype]:
    dtypes: list[torch.dtype] = []
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            module.register_forward_hook(lambda m, i, out: dtypes.append(out.dtype))
    return dtypes


def test_unsupported_cpu_says_so_once_and_trains_in_fp32(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(accel, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(accel, "_said_no_cpu_bf16", False)
    t = _trainer(tmp_path / "a", tiny_llama(), bf16=True, max_steps=2)
    dtypes = _record_linear_dtypes(t.model)
    out = t.train()
    _trainer(tmp_path / "b", tiny_llama(), bf16=True, max_steps=1)  # a second run in the process: no repeat
    err = capsys.readouterr().err
    assert err.count(accel.NO_CPU_BF16) == 1, err
    assert t.accelerator.mixed_precision == "no"
    assert dtypes and set(dtypes) == {torch.float32}
    assert math.isfinite(out.training_loss)


def test_fp32_run_says_nothing_about_bf16(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(accel, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(accel, "_said_no_cpu_bf16", False)
    t = _trainer(tmp_path, tiny_llama(), max_steps=1)
    t.train()
    assert "bf16" not in capsys.readouterr().err


def test_bf16_weights_on_an_emulating_cpu_say_so_once(tmp_path, monkeypatch, capsys):
    """A model loaded in bf16 (not autocast: its weights) trains, and one line names the cost."""
    monkeypatch.setattr(accel, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(accel, "_said_emulated_bf16", False)
    model = tiny_llama().to(torch.bfloat16)
    held = sum(p.numel() for p in model.parameters())
    out = _trainer(tmp_path / "a", model, max_steps=1).train()
    _trainer(tmp_path / "b", tiny_llama().to(torch.bfloat16), max_steps=1).train()  # said once per process
    said = [line for line in capsys.readouterr().out.splitlines() if "bfloat16 parameters" in line]
    assert said == [
        f"the model holds {held / 1e6:.1f}M bfloat16 parameters and this CPU has no native bf16 matmul "
        "(AVX512-BF16 or AMX, or Arm BF16): each bf16 matmul is emulated, 5-170x slower than fp32 "
        "(docs/benchmarks.md); load the model in float32 for speed, keep bf16 only to save memory"
    ]
    assert math.isfinite(out.training_loss)
    monkeypatch.setattr(accel, "_said_emulated_bf16", False)
    # a MACCT base serves both sides: its parameters are counted once; fp32 models and native CPUs say nothing
    assert f"{held / 1e6:.1f}M" in (accel.emulated_bf16_notice([model, model], torch.device("cpu")) or "")
    monkeypatch.setattr(accel, "_said_emulated_bf16", False)
    assert accel.emulated_bf16_notice([tiny_llama()], torch.device("cpu")) is None
    monkeypatch.setattr(accel, "cpu_has_native_bf16", lambda: True)
    assert accel.emulated_bf16_notice([model], torch.device("cpu")) is None


@needs_bf16
@pytest.mark.parametrize("make_model", [tiny_llama, tiny_decoder], ids=["llama", "decoder_lm"])
def test_bf16_autocast_keeps_weights_state_and_loss_fp32(tmp_path, monkeypatch, make_model):
    t = _trainer(tmp_path, make_model(), bf16=True, max_steps=3)
    dtypes = _record_linear_dtypes(t.model)
    losses: list[tuple[torch.dtype, bool]] = []
    cross_entropy = torch.nn.functional.cross_entropy

    def spy(logits, *args, **kwargs):  # both lm_loss and transformers' loss call F.cross_entropy
        out = cross_entropy(logits, *args, **kwargs)
        losses.append((out.dtype, torch.is_autocast_enabled("cpu")))
        return out

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", spy)
    out = t.train()
    assert t.accelerator.mixed_precision == "bf16"
    assert dtypes and set(dtypes) == {torch.bfloat16}  # every linear, lm head included
    assert losses and set(losses) == {(torch.float32, True)}  # under autocast, yet fp32
    assert {p.dtype for p in t.model.parameters()} == {torch.float32}
    state = [v for s in t.optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.is_floating_point()]
    assert state and {v.dtype for v in state} == {torch.float32}
    assert math.isfinite(out.training_loss)


@needs_bf16
@pytest.mark.parametrize("make_model", [tiny_llama, tiny_decoder], ids=["llama", "decoder_lm"])
def test_bf16_loss_curve_within_tolerance_of_fp32(tmp_path, make_model):
    curves = {}
    for bf16 in (False, True):
        t = _trainer(tmp_path / str(bf16), make_model(), bf16=bf16, max_steps=30)
        t.train()
        curves[bf16] = [row["loss"] for row in t.state.log_history if "loss" in row]
    fp32, bf16 = curves[False], curves[True]
    assert len(fp32) == len(bf16) == 30
    assert fp32[-1] < fp32[0] - 1.0  # the data is learnable: a real curve, not noise around ln 64
    deviation = [abs(b - f) / f for f, b in zip(fp32, bf16)]
    assert max(deviation) <= CURVE_TOLERANCE, [f"{d:.4f}" for d in deviation]
