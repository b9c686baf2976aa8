"""Peak memory in every run: each training row, the train_* metrics, the CLI's summary and the report."""

from __future__ import annotations

import json

from conftest import PadCollator, lm_rows, make_args, tiny_llama

from trainformers import Trainer
from trainformers.memory import peak_memory_mb
from trainformers.report import summarize_run
from trainformers.run import throughput_line


def test_every_row_and_the_summaries_carry_the_peak(tmp_path):
    import torch

    args = make_args(tmp_path, max_steps=3)
    trainer = Trainer(model=tiny_llama(), args=args, train_dataset=lm_rows(16), data_collator=PadCollator())
    result = trainer.train()
    peaks = [r["peak_memory_mb"] for r in trainer.state.log_history if "loss" in r]
    assert len(peaks) == 3 and peaks == sorted(peaks)  # a high-water mark never goes down
    # rows carry the peak rounded to 0.1 MiB, hence the half-unit allowance against the live reading
    assert 100 < peaks[0] <= result.metrics["train_peak_memory_mb"] <= peak_memory_mb(torch.device("cpu")) + 0.05
    line = throughput_line({**result.metrics, "train_tflops": 0.1}, None)
    assert line is not None and "; peak memory " in line and ("MiB" in line or "GiB" in line)
    assert summarize_run(args.output_dir)["peak_memory_mb"] == result.metrics["train_peak_memory_mb"]


def test_the_report_shows_it(tmp_path):
    from trainformers.report import write_report

    args = make_args(tmp_path, max_steps=2)
    Trainer(model=tiny_llama(), args=args, train_dataset=lm_rows(8), data_collator=PadCollator()).train()
    _, md = write_report(args.output_dir)
    assert "| peak memory | " in md.read_text() and "| peak memory | n/a |" not in md.read_text()


def test_the_peak_is_the_largest_of_any_rank(tmp_path):
    """Two processes, rank 1 holding 600 MiB more: both log rank 1's peak (the device that runs out first)."""
    import json
    from pathlib import Path

    from conftest import accelerate_launch

    accelerate_launch(Path(__file__).parent / "ddp_peak.py", tmp_path)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[1]["own"] > ranks[0]["own"] + 500
    for rank in ranks:
        # logged during training: rank 1's peak then, above all of rank 0's, at most rank 1's final peak
        assert rank["rows"] and all(ranks[0]["own"] + 500 < row <= ranks[1]["own"] + 0.05 for row in rank["rows"])
        assert ranks[0]["own"] + 500 < rank["train"] <= ranks[1]["own"] + 0.05


def test_cycle_runs_carry_it_too(tmp_path, capsys):
    """CycleTrainer rows, its train_* metrics, and the `trainformers cycle` summary line."""
    import yaml

    from trainformers.cli import main

    config = {
        "model_A": {"preset": "nano", "vocab_size": 300, "max_position_embeddings": 64},
        "model_B": {"preset": "nano", "vocab_size": 300, "max_position_embeddings": 64},
        "data": {"task": "demo", "options": {"n_paired_train": 8, "n_unpaired_A": 32, "n_unpaired_B": 32, "n_eval": 4}},
        "training": {"output_dir": str(tmp_path / "run"), "max_steps": 2, "logging_steps": 1, "report_to": []},
    }
    (tmp_path / "cycle.yaml").write_text(yaml.safe_dump(config))
    assert main(["cycle", str(tmp_path / "cycle.yaml")]) == 0
    assert "; peak memory " in capsys.readouterr().out
    rows = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    peaks = [r["peak_memory_mb"] for r in rows if "loss" in r]
    assert len(peaks) == 2 and all(p > 100 for p in peaks)
    assert any(r.get("train_peak_memory_mb", 0) >= peaks[-1] for r in rows)
