"""The cycle demo (`trainformers.cycle.demo`) end to end on a tiny config: structure, ranges, determinism."""

from __future__ import annotations

import dataclasses

import pytest

from trainformers.cycle.demo import DemoRunConfig, format_table, run_baseline, run_demo
from trainformers.cycle.demo_data import DemoConfig

KEYS = {"A_to_B_exact_match", "B_to_A_exact_match", "A_to_B_chrf", "B_to_A_chrf"}


def tiny(**overrides) -> DemoRunConfig:
    settings = {
        "data": DemoConfig(n_paired_train=16, n_unpaired_A=48, n_unpaired_B=48, n_eval=12, max_number=999),
        "hidden_size": 32,
        "num_layers": 1,
        "num_heads": 2,
        "intermediate_size": 64,
        "paired_steps": 3,
        "cycle_steps": 4,
        "paired_mix_every": 2,
        "batch_size": 8,
        "eval_batch_size": 12,
    }
    return DemoRunConfig(**{**settings, **overrides})


def check_metrics(metrics: dict) -> None:
    assert set(metrics) == KEYS
    for key, value in metrics.items():
        assert isinstance(value, float)
        limit = 1.0 if key.endswith("exact_match") else 100.0
        assert 0.0 <= value <= limit, (key, value)


def test_run_demo_end_to_end(tmp_path):
    lines: list[str] = []
    result = run_demo(tiny(output_dir=str(tmp_path), do_sample=True, min_new_tokens=1), echo=lines.append)
    assert set(result) == {"before", "after", "seconds", "config"}
    check_metrics(result["before"])
    check_metrics(result["after"])
    assert set(result["seconds"]) == {"paired", "cycle"} and all(v >= 0 for v in result["seconds"].values())
    assert result["config"]["cycle_steps"] == 4 and result["config"]["data"]["n_paired_train"] == 16
    assert "before (paired)" in lines[-1] and "after (+cycle)" in lines[-1]
    assert lines[-1] == format_table(result)
    assert (tmp_path / "paired").is_dir() and (tmp_path / "cycle").is_dir()


def test_run_demo_is_deterministic_per_seed_and_baseline_runs():
    cfg = tiny(do_sample=True, seed=3)
    first, second = run_demo(cfg, echo=None), run_demo(cfg, echo=None)
    assert first["before"] == second["before"] and first["after"] == second["after"]
    baseline = run_baseline(dataclasses.replace(cfg, cycle_steps=2))
    assert set(baseline) == {"metrics", "seconds", "config"}
    check_metrics(baseline["metrics"])


def test_zero_steps_only_evaluates():
    result = run_demo(tiny(paired_steps=0, cycle_steps=0), echo=None)
    assert result["before"] == result["after"]


def test_bad_tokenizer_choice():
    with pytest.raises(ValueError, match="tokenizer"):
        run_demo(tiny(tokenizer="bpe"), echo=None)
