"""Reading a run's log.jsonl back: plot, summary, report.md, comparisons."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from trainformers.errors import CheckpointError, ConfigError
from trainformers.report import (
    PANEL_TITLES,
    config_diff,
    ema,
    format_value,
    plot_run,
    read_log,
    report_at_end,
    report_panels,
    summarize_run,
    write_report,
)

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


# ---- write_report: report.png + report.md, comparisons, the end-of-train hook ------------------


def png_size(path) -> tuple[int, int]:
    """Width and height from the PNG's IHDR chunk (bytes 16-24), no imaging library needed."""
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and data[12:16] == b"IHDR"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """A real 6-step run of a tiny Llama with two evaluations and a token count in its log."""
    from conftest import PadCollator, lm_rows, make_args, tiny_llama

    from trainformers import Trainer

    args = make_args(
        tmp_path_factory.mktemp("real"), eval_strategy="steps", eval_steps=3, include_num_input_tokens_seen=True
    )
    trainer = Trainer(
        model=tiny_llama(),
        args=args,
        data_collator=PadCollator(),
        train_dataset=lm_rows(16),
        eval_dataset=lm_rows(4, seed=1),
    )
    trainer.train()
    return trainer


def test_write_report_from_a_real_run(real_run):
    run_dir = Path(real_run.args.output_dir)
    rows = read_log(run_dir)
    png, md = write_report(run_dir, training_args=real_run.args)
    assert (png, md) == (run_dir / "report.png", run_dir / "report.md")
    assert png_size(png) == (1200, 800)
    text = md.read_text()
    final_loss = [r for r in rows if "loss" in r][-1]
    best_eval = min((r for r in rows if "eval_loss" in r), key=lambda r: r["eval_loss"])
    assert f"| loss | {format_value(final_loss['loss'])} | 6 |" in text
    eval_row = next(line for line in text.splitlines() if line.startswith("| eval_loss |"))
    assert eval_row.endswith(f"| {format_value(best_eval['eval_loss'])} | {best_eval['step']} |")
    assert "| steps | 6 |" in text
    seen = [r["num_input_tokens_seen"] for r in rows if "num_input_tokens_seen" in r]
    assert len(seen) == 6 and f"| tokens seen | {seen[-1]:,} |" in text
    assert "| training.learning_rate | 0.01 | 5e-05 |" in text
    assert "output_dir" not in text  # a location, not a setting
    assert "![training curves](report.png)" in text


def test_config_diff_reads_the_saved_run_config(tmp_path):
    from trainformers.config import DataSection, ModelSection, RunConfig, TrainingArguments

    write_log(tmp_path)
    RunConfig(
        model=ModelSection(preset="nano"),
        data=DataSection(max_length=64),
        training=TrainingArguments(output_dir=str(tmp_path), learning_rate=3e-3),
    ).save(tmp_path / "config.yaml")
    source, changes = config_diff(tmp_path, training_args=TrainingArguments(learning_rate=1.0))
    assert source == "config.yaml"  # the saved file wins over the live arguments
    diff = {key: (value, default) for key, value, default in changes}
    assert diff["training.learning_rate"] == (3e-3, 5e-5)
    assert diff["model.preset"] == ("nano", None) and diff["data.max_length"] == (64, 128)
    assert "data.seed" not in diff and "training.output_dir" not in diff  # derived / a location
    assert "| model.preset | nano | null |" in write_report(tmp_path)[1].read_text()


def test_compare_two_runs(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        write_log(tmp_path / name)
    (tmp_path / "b" / "training_args.json").write_text(json.dumps({"learning_rate": 0.5, "seed": 42}))
    png, md = write_report([tmp_path / "a", tmp_path / "b"])
    assert (png, md) == (tmp_path / "a" / "compare.png", tmp_path / "a" / "compare.md")
    assert png_size(png) == (1200, 800)
    text = md.read_text()
    assert "# Run comparison: a, b" in text and "| | a | b |" in text
    assert "| training.learning_rate | 5e-05 | (default) | 0.5 |" in text
    assert not (tmp_path / "a" / "report.md").exists()

    png, md = write_report([tmp_path / "a", tmp_path / "b"], out_dir=tmp_path / "cmp", labels=["base", "hot"])
    assert png.parent == tmp_path / "cmp" and "| | base | hot |" in md.read_text()
    with pytest.raises(ConfigError, match="labels"):
        write_report([tmp_path / "a", tmp_path / "b"], labels=["same", "same"])


def test_cycle_and_router_logs_get_their_panels(tmp_path):
    rows = []
    for step in range(1, 13):
        losses = {"loss_A": 3.0 - 0.1 * step, "loss_B": 2.5 - 0.1 * step}
        rows.append({
            **losses, "loss": sum(losses.values()) / 2, "learning_rate": 1e-3, "learning_rate_A": 1e-3,
            "learning_rate_B": 2e-3, "grad_norm_A": 1.0, "grad_norm_B": 2.0, "samples_per_second": 10.0,
            "generation_seconds_per_step": 0.1, "load_balance_loss": 1.1, "expert_usage_max": 0.4, "step": step,
        })  # fmt: skip
    rows.append({"eval_A_to_B_exact_match": 0.25, "eval_reconstruction_loss_A": 2.0, "step": 12})
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))

    panels = {panel.title: panel for panel in report_panels({"cycle": read_log(tmp_path)})}
    assert tuple(panels) == PANEL_TITLES  # every panel: loss, per direction, eval, lr, grad norm, ...
    direction = panels["loss per direction"].lines
    assert [(line.key, line.kind) for line in direction] == [
        ("loss_A", "raw"), ("loss_A", "smooth"), ("loss_B", "raw"), ("loss_B", "smooth"),
    ]  # fmt: skip
    assert [line.key for line in panels["learning rate"].lines] == ["learning_rate_A", "learning_rate_B"]
    assert panels["throughput"].ylabel == "samples/s"
    assert {line.key for line in panels["router / expert usage"].lines} == {"load_balance_loss", "expert_usage_max"}

    png, md = write_report(tmp_path)
    assert png_size(png) == (1200, 800)
    text = md.read_text()
    assert "| loss_B | 1.3 | 12 | 1.3 | 12 |" in text
    assert "| eval_A_to_B_exact_match | 0.25 | 12 | 0.25 | 12 |" in text
    assert "| training time | n/a (run not finished) |" in text


def test_ema():
    assert ema([2.0] * 50) == pytest.approx([2.0] * 50)  # debiased: no pull towards 0 at the start
    assert ema([1.0, 5.0, 3.0]) == [1.0, 5.0, 3.0]  # few points: span 1, unchanged
    smooth = ema([0.0, 10.0] * 50)
    assert max(smooth[20:]) - min(smooth[20:]) < 10


def test_report_at_end_writes_and_never_raises(tmp_path, caplog):
    write_log(tmp_path)
    args = SimpleNamespace(output_dir=str(tmp_path), report_at_end=True)
    trainer = SimpleNamespace(args=args, is_world_process_zero=lambda: True)
    assert report_at_end(trainer) == tmp_path / "report.png"
    assert (tmp_path / "report.md").is_file()

    args.report_at_end = False
    assert report_at_end(trainer) is None
    args.report_at_end = True
    assert report_at_end(SimpleNamespace(args=args, is_world_process_zero=lambda: False)) is None
    (tmp_path / "log.jsonl").write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with caplog.at_level("WARNING"):
        assert report_at_end(trainer) is None
    assert "no run report written" in caplog.text
    assert report_at_end(SimpleNamespace(args=SimpleNamespace(output_dir=str(tmp_path / "none")))) is None


def test_trainer_writes_the_report_at_the_end_of_train(tmp_path):
    from conftest import PadCollator, lm_rows, make_args, tiny_llama

    from trainformers import Trainer

    args = make_args(tmp_path, max_steps=2, report_at_end=True)
    Trainer(model=tiny_llama(), args=args, data_collator=PadCollator(), train_dataset=lm_rows(8)).train()
    assert png_size(tmp_path / "run" / "report.png") == (1200, 800) and (tmp_path / "run" / "report.md").is_file()


def test_a_metric_logged_once_is_a_labelled_marker_with_its_value():
    # perplexity computed only at the end used to be one unlabelled dot in the eval panel
    from matplotlib.figure import Figure

    from trainformers.report import draw_panel

    rows = [{"step": s, "loss": 5.0 - s / 10} for s in range(1, 30)] + [{"step": 29, "eval_perplexity": 41.25}]
    panel = next(p for p in report_panels({"run": rows}) if p.title == "eval metrics")
    ax = Figure().subplots()
    draw_panel(ax, panel, ["run"])
    assert [t.get_text() for t in ax.texts] == ["eval_perplexity = 41.25"]
    assert ax.get_legend() is not None and [t.get_text() for t in ax.get_legend().texts] == ["eval_perplexity"]
    assert ax.get_title() == "eval metrics"
