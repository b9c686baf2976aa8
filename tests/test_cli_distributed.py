"""The CLI on two CPU processes (gloo): `accelerate launch -m trainformers` and `--num-processes`, rank 0
alone printing and writing; the seed framework's distributed keys; bad launch input as one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from trainformers.cli import main
from trainformers.config import load_config

SRC = Path(__file__).parents[1] / "src"
# the embedded default run, shrunk as in test_cli.py; eval batch 8 so each rank's half of the
# held-out blocks (49) still fills batches under dataloader_drop_last
RUN = {
    "model": {
        "hidden_size": 32,
        "num_layers": 1,
        "num_heads": 2,
        "num_kv_heads": 1,
        "vocab_size": 300,
        "sample_max_new_tokens": 5,
    },
    "data": {"num_samples": 30, "max_length": 32},
    "training": {
        "max_steps": 4,
        "per_device_eval_batch_size": 8,
        "logging_steps": 2,
        "eval_steps": 4,
        "save_steps": 4,
        "report_to": [],
    },
}


def run_file(folder: Path, name: str = "run.yaml", **training) -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump({**RUN, "training": {**RUN["training"], **training}}))
    return path


def python(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    """`python *argv` as a user runs it: its own process, offline, the package from this checkout."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(SRC)}
    return subprocess.run(
        [sys.executable, *argv], cwd=cwd, capture_output=True, text=True, timeout=300, env=env, check=False
    )


def printed_once(out: str) -> None:
    for line in ("# resolved configuration", "# on 2 processes", "parameters | data:", "sample: ", "done in "):
        assert out.count(line) == 1, (line, out[-3000:])


def written_once(run: Path) -> dict:
    """The run's files, each rank-0 file once; returns the final weights."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert sorted(p.name for p in (run / "tokenizer").iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    assert AutoTokenizer.from_pretrained(run / "tokenizer").get_vocab() == (
        AutoTokenizer.from_pretrained(run / "final").get_vocab()
    )
    AutoModelForCausalLM.from_pretrained(run / "final")
    for name in ("config.yaml", "report.md", "report.png", "checkpoint-4/trainer_state.json"):
        assert (run / name).is_file(), name
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [2, 4]  # one log, written by rank 0 alone
    saved = (run / "config.yaml").read_text()
    assert saved.startswith("# on 2 processes") and "num_gpus" not in saved and "distributed_strategy" not in saved
    return load_file(run / "final" / "model.safetensors")


@pytest.mark.slow
def test_two_processes_print_once_write_once_and_num_processes_agrees(tmp_path):
    run_file(tmp_path, output_dir="launched")
    launcher = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    launcher += ["--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]
    done = python(*launcher, "-m", "trainformers", "train", "run.yaml", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    printed_once(done.stdout)
    launched = written_once(tmp_path / "launched")

    # the seed framework's keys in the file and our flag agree: relaunched through accelerate, same run
    seeded = run_file(tmp_path, "seeded.yaml", output_dir="relaunched", distributed_strategy="ddp", num_gpus=2)
    done = python("-m", "trainformers", "train", seeded.name, "--num-processes", "2", "--verbose", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    printed_once(done.stdout)
    mapped, _, resolved = done.stdout.partition("# resolved configuration")
    assert "# mapped training.distributed_strategy='ddp' -> nothing" in mapped  # said once, in one line
    assert "distributed_strategy" not in resolved and "fsdp: []" in resolved  # ddp: nothing to set
    relaunched = written_once(tmp_path / "relaunched")
    assert launched.keys() == relaunched.keys()
    for name in launched:
        assert torch.equal(launched[name], relaunched[name]), name


@pytest.mark.slow
def test_the_seed_fsdp_run_shards_on_two_processes_and_leaves_a_consolidated_final(tmp_path):
    seeded = run_file(tmp_path, output_dir="sharded", distributed_strategy="fsdp", num_gpus=2)
    done = python("-m", "trainformers", "train", seeded.name, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    printed_once(done.stdout)
    run = tmp_path / "sharded"
    shards = {p.name for p in (run / "checkpoint-4" / "model_shards").iterdir()}
    assert shards == {".metadata", "__0_0.distcp", "__1_0.distcp"}  # FSDP2 applied: each rank its shard
    written_once(run)  # final/ is one model that from_pretrained loads


# ---- the seed keys, through the run-file loader -------------------------------------------------


@pytest.mark.parametrize(
    ("sharding", "fsdp"),
    [
        (None, ["full_shard", "auto_wrap"]),
        ("FULL_SHARD", ["full_shard", "auto_wrap"]),
        ("SHARD_GRAD_OP", ["shard_grad_op", "auto_wrap"]),
    ],
)
def test_seed_keys_map_onto_fsdp_and_processes(tmp_path, sharding, fsdp):
    keys = {"distributed_strategy": "fsdp", "num_gpus": 4, **({"fsdp_sharding_strategy": sharding} if sharding else {})}
    config = load_config(run_file(tmp_path, output_dir="run", **keys))
    assert config.training.fsdp == fsdp and config.num_processes == 4
    echoed = config.to_yaml()
    assert echoed.startswith("# on 4 processes: trainformers train FILE --num-processes 4\n")
    assert not any(key in echoed for key in keys)
    reread = tmp_path / "echoed.yaml"
    reread.write_text(echoed)
    assert load_config(reread).training == config.training  # what it maps to reads back as ours


def test_seed_ddp_sets_nothing_and_keys_work_from_the_command_line(tmp_path):
    plain = load_config(run_file(tmp_path, output_dir="run"))
    ddp = load_config(run_file(tmp_path, "ddp.yaml", output_dir="run", distributed_strategy="ddp"))
    assert ddp == plain and ddp.num_processes is None
    flags = load_config(run_file(tmp_path, output_dir="run"), ["--training.num_gpus", "2"])
    assert flags.num_processes == 2 and flags.training == plain.training


def test_seed_fsdp_refused_by_the_engine_names_the_seed_keys(tmp_path):
    path = run_file(tmp_path, output_dir="run", distributed_strategy="fsdp", fsdp_sharding_strategy="NO_SHARD")
    with pytest.raises(Exception, match=r"FSDP2 has no NO_SHARD .* comes from training.distributed_strategy=fsdp"):
        load_config(path)


# ---- bad input: one line, exit 2, nothing launched ----------------------------------------------


@pytest.fixture
def no_launch(monkeypatch):
    """subprocess.run replaced: the commands main() would launch, none started."""
    launched: list[list[str]] = []

    def fake_run(command, check=False):
        launched.append(list(command))
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(subprocess, "run", fake_run)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    return launched


@pytest.mark.parametrize(
    ("training", "argv", "message"),
    [
        (
            {"distributed_strategy": "deepspeed"},
            [],
            "training.distributed_strategy='deepspeed' is not supported; choose one of: ddp, fsdp",
        ),
        (
            {"distributed_strategy": "fsdp", "fsdp_sharding_strategy": "full"},
            [],
            "training.fsdp_sharding_strategy='full' is not supported; choose one of: FULL_SHARD, SHARD_GRAD_OP, "
            "NO_SHARD, HYBRID_SHARD",
        ),
        (
            {"distributed_strategy": "ddp", "fsdp_sharding_strategy": "FULL_SHARD"},
            [],
            "Can't set both training.distributed_strategy=ddp and training.fsdp_sharding_strategy=FULL_SHARD",
        ),
        ({"fsdp_sharding_strategy": "FULL_SHARD"}, [], "needs training.distributed_strategy=fsdp"),
        (
            {"distributed_strategy": "ddp", "fsdp": "full_shard"},
            [],
            "Can't set both training.distributed_strategy=ddp and training.fsdp",
        ),
        (
            {"distributed_strategy": "fsdp", "fsdp": "shard_grad_op"},
            [],
            "Can't set both training.distributed_strategy=fsdp",
        ),
        ({"num_gpus": 0}, [], "training.num_gpus=0 must be an integer >= 1"),
        ({"num_gpus": "two"}, [], "training.num_gpus must be an integer, got 'two'"),
        ({"num_gpus": 2}, ["--num-processes", "3"], "Can't set both training.num_gpus=2 and --num-processes 3"),
        ({"distributed_stratgy": "ddp"}, [], "did you mean 'training.distributed_strategy'"),
        ({}, ["--num-processes", "0"], "--num-processes must be a positive integer, got '0'"),
        ({}, ["--num-processes", "two"], "--num-processes must be a positive integer, got 'two'"),
        ({}, ["--num-processes"], "--num-processes needs a value"),
        ({}, ["--main-process-port", "1234"], "--main-process-port is for several processes; add --num-processes N"),
        ({}, ["--num-processes", "2", "--machine-rank", "1"], "--machine-rank is for several machines"),
        ({}, ["--num-processes", "4", "--num-machines", "2"], "--num-machines 2 needs --main-process-ip"),
        ({}, ["--num-processes", "3", "--num-machines", "2", "--main-process-ip", "h"], "must be a multiple of"),
        ({}, ["--num-processes", "2", "--main-process-port", "70000"], "--main-process-port must be an integer in"),
        (
            {"deepspeed": {"zero_optimization": {"stage": 2}, "optimizer": {"type": "AdamW"}}},
            ["--num-processes", "2"],
            "training.deepspeed has a 'optimizer' section",
        ),
    ],
)
def test_bad_distributed_input_is_one_line(tmp_path, capsys, no_launch, training, argv, message):
    code = main(["train", str(run_file(tmp_path, output_dir=str(tmp_path / "run"), **training)), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not no_launch and not (tmp_path / "run").exists()


def test_launch_commands(tmp_path, capsys, no_launch):
    path = str(run_file(tmp_path, output_dir=str(tmp_path / "run"), num_gpus=2))
    assert main(["train", path, "--training.seed", "1"]) == 0  # num_gpus alone launches
    assert (
        main(
            ["train", "--num-processes", "16", path, "--num-machines", "2", "--machine-rank", "1"]
            + ["--main-process-ip", "10.0.0.1", "--training.num_gpus", "16"]
        )
        == 0
    )
    one, nodes = no_launch
    accelerate = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu"]
    assert one == [*accelerate, "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no"] + [
        "--dynamo_backend",
        "no",
        "--main_process_port",
        "0",
        "-m",
        "trainformers",
        "train",
        path,
        "--training.seed",
        "1",
    ]
    assert nodes[nodes.index("--num_processes") + 1] == "16" and nodes[nodes.index("--machine_rank") + 1] == "1"
    assert nodes[nodes.index("--main_process_ip") + 1] == "10.0.0.1" and "--main_process_port" not in nodes
    assert nodes[-5:] == ["trainformers", "train", path, "--training.num_gpus", "16"]
    assert capsys.readouterr().out == ""  # the launched processes print; this one does not


def test_under_a_launcher_the_processes_must_match(tmp_path, capsys, no_launch, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    code = main(["train", str(run_file(tmp_path, output_dir=str(tmp_path / "run"), num_gpus=2))])
    assert code == 2 and "asks for 2 processes but was launched on 3" in capsys.readouterr().err
    assert main(["train", str(run_file(tmp_path, output_dir="run")), "--num-machines", "2"]) == 2
    assert "give it to that" in capsys.readouterr().err and not no_launch


def test_other_ranks_load_the_tokenizer_rank_0_trained(tmp_path):
    from trainformers.data import train_tokenizer
    from trainformers.run import build_tokenizer

    config = load_config(run_file(tmp_path, output_dir=str(tmp_path / "run")))
    trained = train_tokenizer(["abc abd abe"] * 20, 300, tmp_path / "run" / "tokenizer")

    def untouched():
        raise AssertionError("another rank must not read the data to train a tokenizer")
        yield

    loaded = build_tokenizer(config, untouched(), reuse_saved=True)
    assert loaded.get_vocab() == trained.get_vocab()


def test_train_help_shows_the_launch_options(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "--num-processes N" in capsys.readouterr().out


def test_an_engine_on_one_process_is_still_launched(tmp_path, no_launch):
    # FSDP and DeepSpeed need a launcher even on one GPU: --num-processes 1 starts one, plain DDP needs none
    fsdp = run_file(tmp_path, "fsdp.yaml", output_dir=str(tmp_path / "a"), distributed_strategy="fsdp", fsdp=True)
    assert load_config(str(fsdp)).training.fsdp == ["full_shard", "auto_wrap"]  # fsdp: true agrees with the seed key
    assert main(["train", str(fsdp), "--num-processes", "1"]) == 0
    ddp = run_file(tmp_path, "ddp.yaml", output_dir=str(tmp_path / "b"))
    assert main(["train", str(ddp), "--num-processes", "1"]) == 0  # trained here, in this process
    (launched,) = no_launch  # only the FSDP run went through accelerate launch
    assert launched[launched.index("--num_processes") + 1] == "1"
