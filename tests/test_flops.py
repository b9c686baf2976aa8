"""Model FLOPs, the device peak (set, datasheet, measured once and cached) and the Trainer's TFLOP/s and MFU."""

from __future__ import annotations

import json
import os

import pytest
import torch
from conftest import make_args, tiny_llama
from datasets import Dataset

from trainformers import Trainer, TrainingArguments
from trainformers import flops as F
from trainformers.errors import ConfigError
from trainformers.meter import Meter


def _params(model) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def test_model_flops_is_6n_plus_attention_without_the_input_embedding():
    model = tiny_llama()  # untied head: the embedding lookup is no matmul, the head is
    f = F.model_flops(model)
    n = _params(model) - model.get_input_embeddings().weight.numel()
    assert f.matmul_params == n
    assert f.fixed == 6 * n
    assert f.per_position == 12 * model.config.num_hidden_layers * model.config.hidden_size
    assert f.per_batch(tokens=3 * 10, seq_len=10) == 30 * (6 * n + 12 * 2 * 16 * 10)


def test_tied_embeddings_count_once_as_the_head():
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            tie_word_embeddings=True,
        )
    )
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert F.model_flops(model).matmul_params == _params(model)


def test_frozen_parameters_cost_no_weight_gradient():
    model = tiny_llama()
    for p in model.parameters():
        p.requires_grad_(False)
    head = model.get_output_embeddings().weight
    head.requires_grad_(True)
    f = F.model_flops(model)
    assert f.fixed == 4 * f.matmul_params + 2 * head.numel()


def test_trainer_logs_tflops_and_mfu_from_the_flops_it_counted(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAINFORMERS_PEAK_TFLOPS", "0.5")
    rows = Dataset.from_list([{"input_ids": list(range(3, 13)), "labels": list(range(3, 13))}] * 16)
    model = tiny_llama()
    trainer = Trainer(model=model, args=make_args(tmp_path, max_steps=4, logging_steps=2), train_dataset=rows)
    out = trainer.train()
    f = F.model_flops(model)
    assert trainer.state.total_flos == pytest.approx(4 * f.per_batch(4 * 10, 10))
    assert trainer.floating_point_ops({"input_ids": torch.zeros(4, 10, dtype=torch.long)}) == f.per_batch(40, 10)
    logged = [r for r in trainer.state.log_history if "loss" in r]
    assert len(logged) == 2
    for row in logged:
        assert row["tflops"] > 0 and row["mfu"] == pytest.approx(row["tflops"] / 0.5, rel=1e-2, abs=1e-4)
    assert out.metrics["train_mfu"] == pytest.approx(out.metrics["train_tflops"] / 0.5, rel=1e-2, abs=1e-4)
    assert out.metrics["train_tokens_per_second"] > 0


def test_peak_zero_turns_mfu_off_but_keeps_tflops(tmp_path):
    rows = Dataset.from_list([{"input_ids": list(range(3, 13)), "labels": list(range(3, 13))}] * 8)
    trainer = Trainer(model=tiny_llama(), args=make_args(tmp_path, max_steps=2, peak_tflops=0), train_dataset=rows)
    out = trainer.train()
    assert "train_mfu" not in out.metrics and out.metrics["train_tflops"] > 0
    assert all("mfu" not in r for r in trainer.state.log_history)


def test_negative_peak_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="peak_tflops=-1"):
        TrainingArguments(output_dir=str(tmp_path), peak_tflops=-1)


def test_peak_is_measured_once_then_read_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("TRAINFORMERS_PEAK_TFLOPS", raising=False)
    monkeypatch.setenv("TRAINFORMERS_CACHE", str(tmp_path / "cache"))
    calls = []

    def fake(device, dtype, sizes):
        calls.append(dtype)
        return 0.25, 0.97  # (TFLOP/s, CPU share): an idle machine

    monkeypatch.setattr(F, "_measure", fake)
    cpu = torch.device("cpu")
    first = F.peak_tflops(cpu, torch.float32)
    second = F.peak_tflops(cpu, torch.float32)
    assert (first.tflops, first.source) == (0.25, "measured")
    assert (second.tflops, second.source) == (0.25, "cached")
    assert calls == [torch.float32]
    assert F.peak_tflops(cpu, torch.bfloat16).source == "measured"  # its own entry per dtype
    stored = json.loads(F.cache_path().read_text())
    assert len(stored) == 2 and all("torch" in key for key in stored)
    F.cache_path().write_text("{not json")  # a broken cache costs a measurement, never a crash
    assert F.peak_tflops(cpu, torch.float32).source == "measured"
    assert F.peak_tflops(cpu, torch.float32, user=3.0) == F.Peak(3.0, "set", "float32")
    assert F.peak_tflops(cpu, torch.float32, user=0) is None


def test_a_peak_measured_on_a_busy_cpu_is_used_but_never_cached(tmp_path, monkeypatch):
    monkeypatch.delenv("TRAINFORMERS_PEAK_TFLOPS", raising=False)
    monkeypatch.setenv("TRAINFORMERS_CACHE", str(tmp_path / "cache"))
    shares = iter([0.45, 0.95])
    monkeypatch.setattr(F, "_measure", lambda device, dtype, sizes: (0.06, next(shares)))
    cpu = torch.device("cpu")
    busy = F.peak_tflops(cpu, torch.float32)
    assert busy is not None and busy.source == "loaded" and not F.cache_path().exists()
    assert "not cached" in busy.describe()
    assert F.peak_tflops(cpu, torch.float32).source == "measured"  # measured again, idle this time: cached


def test_the_cpu_share_drops_when_other_processes_take_the_cores():
    """Twice as many busy loops as this process may use cores: its matmul threads get about half."""
    import subprocess
    import sys

    idle = F._measure(torch.device("cpu"), torch.float32, (256, 384), reps=3)[1]
    burners = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2 * len(os.sched_getaffinity(0)))
    ]
    try:
        busy = F._measure(torch.device("cpu"), torch.float32, (512, 768, 1024), reps=5)[1]
    finally:
        for p in burners:
            p.kill()
            p.wait()
    assert busy < F.LOADED_SHARE <= idle or busy < 0.6 * idle


def test_matmul_measurement_is_a_positive_rate():
    assert F.measure_matmul_tflops(torch.device("cpu"), torch.float32, sizes=(64, 96), reps=2) > 0


@pytest.mark.parametrize(
    "name,dtype,peak",
    [
        ("NVIDIA H100 80GB HBM3", torch.bfloat16, 989.0),
        ("NVIDIA H100 PCIe", torch.bfloat16, 756.0),
        ("NVIDIA A100-SXM4-80GB", torch.bfloat16, 312.0),
        ("NVIDIA A10G", torch.float16, 70.0),
        ("NVIDIA L4", torch.bfloat16, 121.0),
        ("NVIDIA L40S", torch.bfloat16, 362.0),
        ("Some New GPU", torch.bfloat16, None),
    ],
)
def test_datasheet_peaks_match_the_right_gpu(name, dtype, peak):
    assert F.datasheet_peak(name, dtype) == peak


def test_evaluation_and_saving_time_is_not_training_time():
    meter = Meter()
    meter.start -= 10.0
    meter.pause(4.0)
    assert meter.elapsed() == pytest.approx(6.0, abs=0.1)
