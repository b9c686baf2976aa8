"""Every tracker gets every row of a run, in one run, named as transformers names it.

Each test trains a tiny model with TensorBoard, W&B (offline), MLflow (a file store in tmp_path)
and trackio (local, TRACKIO_DIR: conftest.py) at once, then reads each tracker's own files back
and compares them with log.jsonl: the same values at the same steps, HF's `train/` and `eval/`
names where the tracker has panels, one run, the names and the hyperparameters.
"""

from __future__ import annotations

import importlib.util
import json
import sqlite3
import struct
import sys
from pathlib import Path

import pytest
import yaml
from conftest import PadCollator, lm_rows, make_args, tiny_llama
from test_cli_distributed import run_file

from trainformers import Trainer
from trainformers.cli import main
from trainformers.trackers import finish_trackers, hyperparameters, rewrite_logs

FOUR = ["tensorboard", "wandb", "mlflow", "trackio"]
WANDB_OWN = {"_step", "_runtime", "_timestamp", "train/global_step"}  # W&B's bookkeeping, and HF's x-axis

pytestmark = pytest.mark.xdist_group("trackers")  # one worker imports wandb, mlflow and trackio once


@pytest.fixture
def stores(tmp_path, monkeypatch):
    """W&B offline and MLflow on a file store, both in tmp_path; no project or experiment named."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "mlruns").as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # ~6 s faster than a new sqlite store
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    for name in ("WANDB_PROJECT", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID", "MLFLOW_TAGS"):
        monkeypatch.delenv(name, raising=False)
    yield tmp_path
    if "wandb" in sys.modules:
        sys.modules["wandb"].teardown()  # W&B reads WANDB_DIR once per process, at its first run


# --- what log.jsonl holds, and what each tracker holds ------------------------------------------


def expected_rows(run_dir: Path, panels: bool) -> dict[tuple[str, int], float]:
    """log.jsonl's numbers as (name, step) -> value, the last one where a name repeats at a step
    (W&B keeps one value per step)."""
    out = {}
    for line in (run_dir / "log.jsonl").read_text().splitlines():
        row = json.loads(line)
        step = row.pop("step")
        values = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        for name, value in (rewrite_logs(values) if panels else values).items():
            out[name, step] = value
    return out


def assert_same_rows(tracker: str, got: dict[tuple[str, int], float], run_dir: Path) -> None:
    want = expected_rows(run_dir, panels=tracker != "mlflow")
    assert got.keys() == want.keys(), f"{tracker}: {sorted(got.keys() ^ want.keys())}"
    # log.jsonl rounds the epoch to 4 places; TensorBoard keeps float32
    close = {key: pytest.approx(v, rel=1e-5, abs=5e-5 if key[0].endswith("epoch") else 1e-9) for key, v in want.items()}
    wrong = {key: (got[key], want[key]) for key in want if got[key] != close[key]}
    assert not wrong, f"{tracker}: {wrong}"


def tensorboard_run(log_dir: Path) -> tuple[dict, dict]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    events.Reload()
    rows = {(tag, e.step): e.value for tag in events.Tags()["scalars"] for e in events.Scalars(tag)}
    (config,) = log_dir.glob("*/hparams.yml")  # Accelerate writes the hyperparameters there too
    return rows, yaml.safe_load(config.read_text())


def wandb_records(path: Path):
    """The records of an offline run's .wandb file (LevelDB's log format: 32 KiB blocks of
    checksum, length, type, data; each record a protobuf); wandb has no Python reader of its own."""
    from wandb.proto import wandb_internal_pb2

    data, pos, parts = path.read_bytes(), 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # a block's tail too short for a header is padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            break
        parts, pos = parts + data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            parts = b""
            yield record


def wandb_run(wandb_dir: Path) -> tuple[dict, dict, str, str]:
    (path,) = (wandb_dir / "wandb").glob("offline-run-*/*.wandb")  # one run
    rows, config, project, name = {}, {}, "", ""
    for record in wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            project, name = record.run.project, record.run.display_name
        elif kind == "config":
            config.update({item.key: json.loads(item.value_json) for item in record.config.update})
        elif kind == "history":
            items = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            if items.keys() - WANDB_OWN:
                assert items["train/global_step"] == record.history.step.num  # HF's x-axis
            rows.update({(k, record.history.step.num): v for k, v in items.items() if k not in WANDB_OWN})
    return rows, config, project, name


def mlflow_run(tmp_path: Path, experiment: str) -> tuple[dict, dict, str]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient((tmp_path / "mlruns").as_uri())
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])  # one run, in all
    assert client.get_experiment(run.info.experiment_id).name == experiment and run.info.status == "FINISHED"
    rows = {(key, m.step): m.value for key in run.data.metrics for m in client.get_metric_history(run.info.run_id, key)}
    return rows, run.data.params, run.info.run_name


def trackio_run(project: str) -> tuple[dict, dict, str]:
    from trackio.utils import TRACKIO_DIR

    with sqlite3.connect(TRACKIO_DIR / f"{project}.db") as db:
        metrics = db.execute("select run_id, run_name, step, metrics from metrics order by id").fetchall()
        ((config,),) = db.execute("select config from configs").fetchall()  # one run
    assert len({run_id for run_id, *_ in metrics}) == 1
    rows = {}
    for _, _, step, values in metrics:
        rows.update({(k, step): v for k, v in json.loads(values).items() if k != "train/global_step"})
    return rows, json.loads(config), metrics[0][1]


# --- the runs -------------------------------------------------------------------------------------


def test_a_trainer_run_and_a_later_evaluate_reach_every_tracker_in_one_run(stores):
    # project left at HF's default, "huggingface" (the only test that does: trackio's files last the session)
    args = make_args(stores, report_to="all", eval_strategy="steps", eval_steps=3, max_steps=4)
    assert args.report_to == FOUR  # `all`: every installed tracker, as in transformers (dev installs them)
    trainer = Trainer(tiny_llama(), args, PadCollator(), train_dataset=lm_rows(16), eval_dataset=lm_rows(8, seed=1))
    trainer.train()
    trainer.evaluate()  # after train(): the same runs, at step 4
    finish_trackers(trainer.accelerator)  # what the end of the process does
    run_dir = stores / "run"
    assert [json.loads(line)["step"] for line in (run_dir / "log.jsonl").read_text().splitlines()][-1] == 4

    rows, config = tensorboard_run(run_dir / "runs" / "run")  # the run is named after output_dir
    assert_same_rows("tensorboard", rows, run_dir)
    assert ("eval/loss", 4) in rows and ("train/loss", 4) in rows and ("train/train_runtime", 4) in rows
    assert config["learning_rate"] == 1e-2 and config["num_hidden_layers"] == 2  # arguments, model config

    rows, config, wandb_project, name = wandb_run(stores)
    assert (wandb_project, name) == ("huggingface", "run")  # WANDB_PROJECT unset: HF's default project
    assert_same_rows("wandb", rows, run_dir)
    assert config["learning_rate"] == 1e-2 and config["model/num_parameters"] == sum(
        p.numel() for p in trainer.model.parameters()
    )

    rows, params, name = mlflow_run(stores, "Default")  # MLFLOW_EXPERIMENT_NAME unset: MLflow's default
    assert name == "run" and params["learning_rate"] == "0.01" and params["hidden_size"] == "16"
    assert_same_rows("mlflow", rows, run_dir)  # flat names, as HF's MLflowCallback logs them
    assert ("eval_loss", 4) in rows

    rows, config, name = trackio_run("huggingface")
    assert name == "run" and config["learning_rate"] == 1e-2
    assert_same_rows("trackio", rows, run_dir)


def test_the_cli_names_runs_as_hf_does_and_logs_every_section(stores, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_PROJECT", "from-env")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "experiment-from-env")
    project = f"cli-{stores.name}"
    path = run_file(stores, output_dir=str(stores / "out"), run_name="tiny", project=project, save_steps=100)
    code = main(["train", str(path), "--training.report_to", "all", "--model.preset", "nano"])
    assert code == 0, capsys.readouterr().err[-3000:]
    run_dir = stores / "out"
    assert "eval_perplexity" in (run_dir / "log.jsonl").read_text()  # logged after train()

    assert [p.name for p in (run_dir / "runs").iterdir()] == ["tiny"]
    rows, config = tensorboard_run(run_dir / "runs" / "tiny")
    assert_same_rows("tensorboard", rows, run_dir)
    assert ("eval/perplexity", 4) in rows
    assert config["model.preset"] == "nano" and config["data.max_length"] == 32 and config["max_steps"] == 4

    rows, config, wandb_project, name = wandb_run(stores)
    assert (wandb_project, name) == ("from-env", "tiny")
    assert_same_rows("wandb", rows, run_dir)
    assert config["model.preset"] == "nano" and config["data.num_samples"] == 30

    rows, params, name = mlflow_run(stores, "experiment-from-env")
    assert name == "tiny" and params["model.preset"] == "nano" and params["data.max_length"] == "32"
    assert_same_rows("mlflow", rows, run_dir)
    assert ("eval_perplexity", 4) in rows

    rows, config, name = trackio_run(project)
    assert name == "tiny" and config["model.preset"] == "nano"
    assert_same_rows("trackio", rows, run_dir)


@pytest.mark.parametrize(
    ("tracker", "install"),
    [
        ("trackio", "pip install trackio (or pip install 'trainformers[trackio]'),"),
        ("wandb", "pip install wandb (or pip install 'trainformers[wandb]'),"),
        ("mlflow", "pip install mlflow (or pip install 'trainformers[mlflow]'),"),
        ("comet_ml", "pip install comet-ml,"),  # no extra of that name
    ],
)
def test_a_tracker_not_installed_is_found_before_anything_is_written(tmp_path, capsys, monkeypatch, tracker, install):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == tracker else find_spec(name, *a))
    out = tmp_path / "run"
    code = main(["train", "--training.report_to", tracker, "--training.output_dir", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and f"report_to names '{tracker}' but it is not installed; {install}" in err[0]
    assert not out.exists()  # no tokenizer, no config.yaml


def test_the_pip_lines_name_extras_that_exist():
    import tomllib

    extras = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    from trainformers.trackers import _EXTRAS

    assert set(_EXTRAS) <= extras["optional-dependencies"].keys()


def test_hyperparameters_are_flat_scalars_with_hf_names():
    class Model:
        config = {"hidden_size": 16, "learning_rate": "the model's"}
        peft_config = {"default": {"r": 8, "target_modules": {"v_proj", "q_proj"}}}

        def parameters(self):
            return []

    args = make_args(Path("/tmp/x"), learning_rate=3e-4)
    sections = {"model": {"preset": "nano"}, "data": {"mixture": [{"source": "a"}]}, "training": {"patience": 2}}
    values = hyperparameters(args, Model(), sections)
    assert values["learning_rate"] == 3e-4  # the arguments win over the model's config, as in HF
    assert values["hidden_size"] == 16 and values["model/num_parameters"] == 0
    assert values["peft_config.default.target_modules"] == '["q_proj", "v_proj"]'
    assert values["model.preset"] == "nano" and values["data.mixture"] == '[{"source": "a"}]'
    assert values["patience"] == 2 and values["report_to"] == "[]"
    assert all(v is None or isinstance(v, (bool, int, float, str)) for v in values.values())


def test_hf_panel_names():
    assert rewrite_logs({"loss": 1, "eval_loss": 2, "test_acc": 3, "epoch": 4}) == {
        "train/loss": 1,
        "eval/loss": 2,
        "test/acc": 3,
        "train/epoch": 4,
    }
