"""Reading a run's log.jsonl back: plot and summary."""

from __future__ import annotations

import json
import math

import pytest

from trainformers.errors import CheckpointError
from trainformers.report import plot_run, read_log, summarize_run

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_log(run_dir, *, truncated: bool = False):
    rows = []
    for step in range(1, 21):
        rows.append(
            {
                "step": step,
                "epoch": step / 10,
                "loss": 5.0 - 0.2 * step + (0.5 if step == 20 else 0.0),
                "learning_rate": 1e-3 * min(1.0, step / 5),
                "grad_norm": 1.0 / step,
            }
        )
        if step % 10 == 0:
            eval_loss = 3.5 if step == 10 else 3.7
            rows.append(
                {
                    "step": step,
                    "epoch": step / 10,
                    "eval_loss": eval_loss,
                    "eval_perplexity": math.exp(eval_loss),
                    "eval_runtime": 0.5,
                    "eval_samples_per_second": 100.0,
                }
            )
    text = "".join(json.dumps(row) + "\n" for row in rows)
    if truncated:
        text += '{"step": 21, "epoch": 2.1, "lo'
    (run_dir / "log.jsonl").write_text(text)
    return rows


def test_plot_run_writes_png(tmp_path):
    write_log(tmp_path)
    out = plot_run(tmp_path)
    assert out == tmp_path / "report.png"
    data = out.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000
    assert not list(tmp_path.glob("*.tmp"))

    other = plot_run(str(tmp_path), tmp_path / "sub" / "custom.png")
    assert other.read_bytes().startswith(PNG_SIGNATURE)


def test_plot_run_with_empty_log(tmp_path):
    (tmp_path / "log.jsonl").write_text("")
    assert plot_run(tmp_path).read_bytes().startswith(PNG_SIGNATURE)


def test_truncated_last_line_is_skipped(tmp_path):
    rows = write_log(tmp_path, truncated=True)
    assert read_log(tmp_path) == rows
    assert plot_run(tmp_path).exists()


def test_corrupt_middle_line_is_an_error(tmp_path):
    (tmp_path / "log.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step"\n{"step": 2}\n')
    with pytest.raises(CheckpointError, match="line 2 is not valid JSON"):
        read_log(tmp_path)


def test_missing_log(tmp_path):
    with pytest.raises(CheckpointError, match="no log.jsonl in .*trainformers run directory"):
        plot_run(tmp_path)
    with pytest.raises(CheckpointError):
        summarize_run(tmp_path / "nope")


def test_summarize_run(tmp_path):
    write_log(tmp_path, truncated=True)
    summary = summarize_run(tmp_path)
    assert summary["steps"] == 20
    assert summary["epoch"] == 2.0
    assert summary["final_loss"] == pytest.approx(1.5)
    assert summary["min_loss"] == pytest.approx(1.2) and summary["min_loss_step"] == 19
    assert summary["best_eval_loss"] == 3.5 and summary["best_eval_step"] == 10
    assert summary["eval_step"] == 20
    assert summary["eval"] == {
        "eval_loss": 3.7,
        "eval_perplexity": pytest.approx(math.exp(3.7)),
        "eval_runtime": 0.5,
        "eval_samples_per_second": 100.0,
    }
    json.dumps(summary)  # the report command prints it as JSON


def test_summarize_empty_log(tmp_path):
    (tmp_path / "log.jsonl").write_text("\n")
    summary = summarize_run(tmp_path)
    assert summary["steps"] == 0 and summary["final_loss"] is None and summary["eval"] == {}
