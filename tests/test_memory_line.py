"""Peak memory in every run: each training row, the train_* metrics, the CLI's summary and the report."""

from __future__ import annotations

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
