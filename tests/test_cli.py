"""The CLI end to end: the embedded default run, kill -9 and resume, and every bad input's one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from trainformers.cli import main

# the embedded default run, shrunk so the test takes seconds (same code path, smaller numbers)
SMALL = [
    "--model.hidden_size",
    "32",
    "--model.num_layers",
    "1",
    "--model.num_heads",
    "2",
    "--model.num_kv_heads",
    "1",
    "--model.vocab_size",
    "300",
    "--data.num_samples",
    "30",
    "--data.max_length",
    "32",
    "--training.logging_steps",
    "2",
    "--training.eval_steps",
    "4",
    "--training.save_steps",
    "4",
    "--model.sample_max_new_tokens",
    "5",
]


def cli(*argv: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "trainformers.cli", *argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def log_losses(run: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


@pytest.mark.slow
def test_default_run_writes_what_it_promises(tmp_path):
    done = cli("train", *SMALL, "--training.max_steps", "8", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "runs" / "default"
    for name in (
        "config.yaml",
        "log.jsonl",
        "report.png",
        "final/model.safetensors",
        "final/config.json",
        "final/tokenizer.json",
        "tokenizer/tokenizer.json",
        "checkpoint-8/trainer_state.json",
    ):
        assert (run / name).is_file(), name
    assert (run / "runs").is_dir()  # TensorBoard events (the dev install has tensorboard)
    assert json.loads((run / "final" / "config.json").read_text())["model_type"] == "trainformers_decoder"
    assert "held-out perplexity" in done.stdout and "sample: 'The" in done.stdout
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [2, 4, 6, 8]
    assert all(r["tflops"] > 0 and r["mfu"] > 0 for r in rows if "loss" in r)  # peak from conftest's env
    assert "training speed:" in done.stdout and "TFLOP/s model FLOPs, MFU" in done.stdout
    assert any("eval_perplexity" in r for r in rows)
    # the saved model reloads with plain transformers and gives the same logits as the final checkpoint
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(run / "final")
    tok = AutoTokenizer.from_pretrained(run / "final")
    ids = tok("def f(x): return x", return_tensors="pt")["input_ids"]
    ref = AutoModelForCausalLM.from_pretrained(run / "checkpoint-8")
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref(ids).logits)


@pytest.mark.slow
def test_sigkill_and_resume_equals_uninterrupted(tmp_path):
    args = [
        *SMALL,
        "--model.hidden_size",
        "64",
        "--training.max_steps",
        "100",
        "--training.save_steps",
        "5",
        "--training.eval_strategy",
        "no",
        "--model.sample_prompt",
        "''",
    ]
    full = cli("train", *args, "--training.output_dir", "full", cwd=tmp_path)
    assert full.returncode == 0, full.stderr[-3000:]

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "trainformers.cli", "train", *args, "--training.output_dir", "killed"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    killed = tmp_path / "killed"
    deadline = time.time() + 240
    while not (killed / "checkpoint-20" / "trainer_state.json").exists():
        assert proc.poll() is None, "run finished before it could be killed"
        assert time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "final").exists()

    resumed = cli(
        "train", *args, "--training.output_dir", "killed", "--training.resume_from_checkpoint", "true", cwd=tmp_path
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert log_losses(killed) == log_losses(tmp_path / "full")
    a, b = (
        load_file(tmp_path / "full" / "final" / "model.safetensors"),
        load_file(killed / "final" / "model.safetensors"),
    )
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


# ---- bad input: one line, exit 2, nothing destroyed --------------------------------------------


def run_main(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--training.lerning_rate", "1"],
            "unknown key 'training.lerning_rate' in the command line (did you mean 'training.learning_rate'?)",
        ),
        (["--trainig.seed", "1"], "did you mean 'training'"),
        (["--training.learning_rate", "fast"], "learning_rate must be a number, got 'fast'"),
        (["--training.fp16", "--training.bf16"], "Can't set both fp16 and bf16"),
        (["--training.fp16"], "fp16=True needs a CUDA GPU"),
        (["--training.load_best_model_at_end", "true", "--training.save_strategy", "epoch"], "load_best_model_at_end"),
        (["--training.optim", "adamw_8bit"], "adamw_8bit"),
        (["--data.source", "missing.jsonl"], "data.source 'missing.jsonl' not found"),
        (["--training.resume_from_checkpoint", "nowhere/checkpoint-3"], "does not exist"),
        (
            ["--model.hidden_size", "30", "--model.num_heads", "4"],
            "model.hidden_size=30 must be divisible by model.num_heads=4",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    code, err = run_main(capsys, "train", *SMALL, "--training.max_steps", "2", *argv)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], err


def test_missing_config_file(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = run_main(capsys, "train", "nope.yaml")
    assert code == 2 and "config file 'nope.yaml' not found" in err


def test_existing_run_is_refused_and_untouched(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = [
        "train",
        *SMALL,
        "--training.max_steps",
        "4",
        "--training.output_dir",
        "run",
        "--training.overwrite_output_dir",
        "false",
        "--model.sample_prompt",
        "''",
    ]
    assert main(base) == 0
    capsys.readouterr()
    run = tmp_path / "run"
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    code, err = run_main(capsys, *base)
    assert code == 2 and "already holds a run" in err
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before


@pytest.mark.slow
def test_cli_error_has_no_traceback(tmp_path):
    done = cli("train", "--training.lerning_rate", "1", cwd=tmp_path)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and done.stderr.strip().startswith("error: ")


def test_yaml_example_runs(tmp_path, capsys, monkeypatch):
    example = Path(__file__).parents[1] / "examples" / "pretrain_small.yaml"
    monkeypatch.chdir(tmp_path)
    code = main(["train", str(example), "--training.max_steps", "3", "--training.output_dir", "ex", *SMALL])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "ex" / "final" / "model.safetensors").is_file()


@pytest.mark.slow
def test_instruction_example_fine_tunes_the_default_model(tmp_path):
    root = Path(__file__).resolve().parents[1]
    base = cli("train", *SMALL, "--training.max_steps", "4", "--model.sample_prompt", "''", cwd=tmp_path)
    assert base.returncode == 0, base.stderr[-3000:]
    done = cli(
        "train",
        str(root / "examples" / "instruct_default.yaml"),
        "--data.source",
        str(root / "examples" / "data" / "python_help.jsonl"),
        "--data.num_samples",
        "60",
        "--data.max_length",
        "128",
        "--training.max_steps",
        "4",
        "--training.eval_strategy",
        "steps",
        "--training.eval_steps",
        "2",
        "--training.save_strategy",
        "steps",
        "--training.save_steps",
        "2",
        "--training.logging_steps",
        "1",
        "--model.sample_max_new_tokens",
        "5",
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "runs" / "instruct"
    assert (run / "final" / "model.safetensors").is_file()
    assert "no assistant" not in done.stdout and "sample:" in done.stdout
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] and any("eval_loss" in r for r in rows)


def test_run_trains_its_tokenizer_where_model_tokenizer_points(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = ["train", *SMALL, "--training.max_steps", "2", "--model.tokenizer", "./tok", "--model.sample_prompt", "''"]
    assert main([*base, "--training.output_dir", "a"]) == 0
    vocab = (tmp_path / "tok" / "tokenizer.json").read_text()
    assert not (tmp_path / "a" / "tokenizer").exists()  # trained where model.tokenizer said
    assert main([*base, "--training.output_dir", "b", "--model.vocab_size", "400"]) == 0
    assert (tmp_path / "tok" / "tokenizer.json").read_text() == vocab  # reused, not retrained
    capsys.readouterr()


def test_lr_find_command_suggests_and_leaves_a_run_alone(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert (
        main(
            [
                "train",
                *SMALL,
                "--training.max_steps",
                "2",
                "--training.output_dir",
                "run",
                "--model.sample_prompt",
                "''",
            ]
        )
        == 0
    )
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "run").rglob("*") if "tokenizer" not in p.parts}
    capsys.readouterr()
    assert main(["lr-find", *SMALL, "--training.output_dir", "run"]) == 0
    out = capsys.readouterr().out
    assert "suggested learning_rate:" in out and (tmp_path / "run" / "lr_find.png").is_file()
    after = {p: p.stat().st_mtime_ns for p in before}
    assert after == before  # checkpoints, log, final model: untouched


def test_learning_rate_auto_trains_with_the_suggestion(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = main(
        [
            "train",
            *SMALL,
            "--training.max_steps",
            "2",
            "--training.learning_rate",
            "auto",
            "--training.output_dir",
            "auto",
            "--model.sample_prompt",
            "''",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0 and "learning_rate: auto ->" in out and (tmp_path / "auto" / "lr_find.png").is_file()
    saved = json.loads((tmp_path / "auto" / "final" / "training_args.json").read_text())
    assert isinstance(saved["learning_rate"], float) and saved["learning_rate"] > 0


def test_quantization_without_gpu_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = Path(__file__).resolve().parents[1]
    code, err = run_main(capsys, "train", str(root / "examples" / "qlora.yaml"), "--training.output_dir", "q")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "load_in_4bit" in err
    assert not (tmp_path / "q").exists()


def test_overwrite_with_bad_data_destroys_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = ["train", *SMALL, "--training.max_steps", "4", "--training.output_dir", "run", "--model.sample_prompt", "''"]
    assert main(base) == 0
    capsys.readouterr()
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "run").rglob("*"))
    (tmp_path / "rows.jsonl").write_text('{"body": "x"}\n')
    code, err = run_main(capsys, *base, "--data.source", "rows.jsonl", "--training.overwrite_output_dir", "true")
    assert code == 2 and "text_field 'text' not in columns ['body']" in err
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "run").rglob("*")) == before


def test_report_command(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert (
        main(
            ["train", *SMALL, "--training.max_steps", "4", "--training.output_dir", "r", "--model.sample_prompt", "''"]
        )
        == 0
    )
    (tmp_path / "r" / "report.png").unlink()
    capsys.readouterr()
    assert main(["report", "r"]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out[: out.rindex("}") + 1])
    assert summary["steps"] == 4 and (tmp_path / "r" / "report.png").is_file()
    code, err = run_main(capsys, "report", "nowhere")
    assert code == 2 and "log.jsonl" in err


def test_cycle_command_runs_a_run_file_and_rejects_bad_input(tmp_path, capsys):
    import yaml

    from trainformers.cli import main

    config = {
        "model_A": {"preset": "nano", "vocab_size": 300, "max_position_embeddings": 64},
        "model_B": {"preset": "nano", "vocab_size": 300, "max_position_embeddings": 64, "num_layers": 1},
        "data": {
            "task": "demo",
            "options": {"n_paired_train": 16, "n_unpaired_A": 64, "n_unpaired_B": 64, "n_eval": 8},
        },
        "training": {
            "output_dir": str(tmp_path / "run"),
            "max_steps": 4,
            "warmup_paired_steps": 2,
            "per_device_train_batch_size": 4,
            "logging_steps": 2,
            "metrics": ["exact_match"],
            "max_new_tokens_A": 6,
            "max_new_tokens_B": 6,
            "report_to": [],
            "disable_tqdm": True,
        },
    }
    path = tmp_path / "cycle.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["cycle", str(path), "--training.seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "eval_A_to_B_exact_match" in out and "seed: 3" in out
    run = tmp_path / "run"
    assert (run / "final" / "A" / "model.safetensors").is_file() and (run / "final" / "B" / "config.json").is_file()
    assert (run / "checkpoint-4" / "loop_state_0.json").is_file() and (run / "log.jsonl").is_file()
    # bad input: one line, exit 2, the finished run untouched
    assert main(["cycle", str(path), "--training.cycle_directions", "C"]) == 2
    assert main(["cycle", str(path), "--data.task", "translate"]) == 2
    err = capsys.readouterr().err
    assert "cycle_directions='C' is not supported" in err and "did you mean 'translation'" in err
    assert main(["cycle", str(path)]) == 2  # output_dir already holds a run
    assert "already holds a run" in capsys.readouterr().err
    assert (run / "final" / "A" / "model.safetensors").is_file()
    assert main(["cycle", "--demo.sed", "1"]) == 2
    assert "did you mean 'seed'" in capsys.readouterr().err
