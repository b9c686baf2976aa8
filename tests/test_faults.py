"""The fault suite: damaged checkpoints, full disks, two writers, failed starts. Nothing lost, nothing
poisoned, nothing silent (the NaN cases are in test_nan_policy.py, kill -9 resume in test_cli.py)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import PadCollator, lm_rows, make_args, tiny_llama, weights
from safetensors.torch import save_file

from trainformers import Trainer
from trainformers import checkpoint as ckpt
from trainformers.cli import main
from trainformers.errors import CheckpointError


def tree(root: Path) -> dict[str, str]:
    """Every file under `root` by relative path, with a hash of its bytes."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _trainer(tmp_path, **overrides):
    args = make_args(tmp_path, save_strategy="steps", save_steps=2, **overrides)
    return Trainer(model=tiny_llama(), args=args, train_dataset=lm_rows(48), data_collator=PadCollator())


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A 6-step run with checkpoints at 2, 4 and 6, and the weights a resume from checkpoint-4 ends with."""
    root = tmp_path_factory.mktemp("faults")
    _trainer(root).train()
    reference = root / "reference"
    import shutil

    shutil.copytree(root / "run", reference)
    shutil.rmtree(reference / "checkpoint-6")
    resumed = _trainer(root, output_dir=str(reference))
    resumed.train(resume_from_checkpoint=True)
    return root / "run", weights(resumed.model)


def _copy(run: Path, tmp_path: Path) -> Path:
    import shutil

    out = tmp_path / "run"
    shutil.copytree(run, out)
    return out


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garble(path: Path) -> None:
    path.write_bytes(os.urandom(path.stat().st_size))


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # inside the last tensor: only its checksum can tell
    path.write_bytes(bytes(data))


def _wrong_shapes(path: Path) -> None:
    other = tiny_llama(vocab=96)
    save_file({k: v.contiguous() for k, v in other.state_dict().items() if k != "lm_head.weight"}, str(path))


def _state(**change):
    def edit(path: Path) -> None:
        state = json.loads(path.read_text())
        state.update(change)
        path.write_text(json.dumps(state))

    return edit


DAMAGE = {
    "weights truncated": ("model.safetensors", _truncate, "model.safetensors is truncated or damaged"),
    "weights empty": ("model.safetensors", lambda p: p.write_bytes(b""), "model.safetensors is empty"),
    "weights garbled": ("model.safetensors", _garble, "model.safetensors is truncated or damaged"),
    "weights of another shape": ("model.safetensors", _wrong_shapes, "model.safetensors is of another model"),
    "optimizer garbled": ("optimizer.safetensors", _garble, "optimizer.safetensors is damaged"),
    "optimizer truncated": ("optimizer.safetensors", _truncate, "optimizer.safetensors is damaged"),
    "optimizer bit flip": ("optimizer.safetensors", _flip_last_byte, "fails its checksum"),
    "scheduler empty": ("scheduler.safetensors", lambda p: p.write_bytes(b""), "scheduler.safetensors is empty"),
    "rng missing": ("rng_state_0.safetensors", lambda p: p.unlink(), "rng_state_0.safetensors is missing"),
    "rng garbled": ("rng_state_0.safetensors", _garble, "rng_state_0.safetensors is damaged"),
    "state of wrong types": ("trainer_state.json", _state(global_step="six"), "global_step='six' is not an integer"),
    "state torn": ("trainer_state.json", _truncate, "trainer_state.json is damaged"),
    "state from elsewhere": ("trainer_state.json", _state(global_step=999), "global_step 999, not 6"),
    "loop state garbled": ("loop_state_0.json", _garble, "loop_state_0.json is damaged"),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(finished_run, tmp_path, capsys, kind):
    run, reference = finished_run
    out = _copy(run, tmp_path)
    name, damage, reason = DAMAGE[kind]
    damage(out / "checkpoint-6" / name)
    trainer = _trainer(tmp_path)
    trainer.train(resume_from_checkpoint=True)
    notice = [line for line in capsys.readouterr().out.splitlines() if line.startswith("resume: skipped")]
    assert notice == [notice[0]] and notice[0].startswith("resume: skipped checkpoint-6: ") and reason in notice[0]
    for key, value in weights(trainer.model).items():  # bit-identical to resuming from checkpoint-4 itself
        assert torch.equal(value, reference[key]), key


def test_naming_a_damaged_checkpoint_is_one_line(finished_run, tmp_path):
    out = _copy(run := finished_run[0], tmp_path)
    assert run != out
    _truncate(out / "checkpoint-6" / "optimizer.safetensors")
    with pytest.raises(CheckpointError) as info:
        _trainer(tmp_path).train(resume_from_checkpoint=str(out / "checkpoint-6"))
    assert str(info.value).startswith(
        f"resume_from_checkpoint '{out / 'checkpoint-6'}' can't be resumed: optimizer.safetensors"
    )
    assert "\n" not in str(info.value)


def test_an_unreadable_checkpoint_is_skipped(finished_run, tmp_path, capsys, monkeypatch):
    out = _copy(finished_run[0], tmp_path)
    real = Path.iterdir

    def iterdir(self):
        if self.name == "checkpoint-6":
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "iterdir", iterdir)
    assert ckpt.resolve_resume(True, out) == out / "checkpoint-4"
    assert "resume: skipped checkpoint-6: the directory is unreadable (Permission denied)" in capsys.readouterr().out


def test_no_checkpoint_that_loads_says_start_over(finished_run, tmp_path):
    out = _copy(finished_run[0], tmp_path)
    for step in (2, 4, 6):
        (out / f"checkpoint-{step}" / "rng_state_0.safetensors").unlink()
    before = tree(out)
    with pytest.raises(
        CheckpointError,
        match="holds a run that can't be resumed: none of its checkpoints loads .*overwrite_output_dir=True",
    ):
        _trainer(tmp_path).train(resume_from_checkpoint=True)
    assert tree(out) == before


def test_a_damaged_file_the_checks_cannot_see_is_still_one_line(finished_run, tmp_path, monkeypatch):
    out = _copy(finished_run[0], tmp_path)
    monkeypatch.setattr(ckpt, "checkpoint_problem", lambda *a, **k: None)  # as if the damage passed every check
    _truncate(out / "checkpoint-6" / "scheduler.safetensors")
    with pytest.raises(CheckpointError, match=r"scheduler.safetensors' is damaged \(invalid header length\)"):
        _trainer(tmp_path).train(resume_from_checkpoint=True)


# ---- full disks ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "failure",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        RuntimeError("[enforce fail at inline_container.cc:672] unexpected pos 64 vs 0"),
    ],
    ids=["ENOSPC", "torch archive writer"],
)
def test_a_full_disk_says_so_and_keeps_the_earlier_checkpoints(tmp_path, monkeypatch, failure):
    trainer = _trainer(tmp_path, max_steps=4)
    real, calls = ckpt.save_state, []

    def save_state(obj, path):
        calls.append(path)
        if "checkpoint-4" in str(path):
            raise failure
        real(obj, path)

    monkeypatch.setattr(ckpt, "save_state", save_state)
    monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda path: _Usage(0))  # the disk is full
    with pytest.raises(CheckpointError) as info:
        trainer.train()
    message = str(info.value)
    assert message.startswith("no space left on device writing ") and "checkpoint-4" in message
    assert "needs about" in message and "\n" not in message
    out = tmp_path / "run"
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint")) == ["checkpoint-2"]
    assert ckpt.checkpoint_problem(out / "checkpoint-2") is None


class _Usage:
    def __init__(self, free: int) -> None:
        self.free, self.total, self.used = free, 10 * 2**30, 10 * 2**30 - free


def test_final_is_written_atomically(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    from trainformers import Trainer as T

    def broken(self, output_dir=None, _internal_call=False):
        Path(output_dir, "config.json").write_text("{}")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(T, "save_model", broken)
    code = main(["train", *_SMALL, "--training.output_dir", "r", "--training.max_steps", "2"])
    assert code == 2 and "no space left on device writing" in capsys.readouterr().err
    assert not (tmp_path / "r" / "final").exists() and not (tmp_path / "r" / "final.tmp").exists()


# ---- failed starts change nothing -----------------------------------------------------------------

_SMALL = [
    "--model.hidden_size", "32", "--model.num_layers", "1", "--model.num_heads", "2", "--model.num_kv_heads", "1",
    "--model.vocab_size", "300", "--data.num_samples", "30", "--data.max_length", "32",
    "--training.logging_steps", "2", "--training.eval_steps", "2", "--training.save_steps", "2",
    "--model.sample_max_new_tokens", "0", "--training.report_to", "none",
]  # fmt: skip


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_faults")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert main(["train", *_SMALL, "--training.output_dir", "r", "--training.max_steps", "4"]) == 0
    finally:
        os.chdir(cwd)
    return root / "r"


BAD_STARTS = {
    "no run file, no overwrite": ([], "already holds a run"),
    "fp16 on a CPU": (["--training.overwrite_output_dir", "true", "--training.fp16", "true"], "fp16"),
    "8-bit Adam without bitsandbytes": (
        ["--training.overwrite_output_dir", "true", "--training.optim", "adamw_8bit"],
        "bitsandbytes",
    ),
    "unknown peft key": (["--training.overwrite_output_dir", "true", "--peft.rank", "8"], "peft"),
    "resume with a damaged newest and no other": (["--training.resume_from_checkpoint", "true"], "can't be resumed"),
}


@pytest.mark.parametrize("case", list(BAD_STARTS))
def test_a_failed_start_leaves_the_run_byte_for_byte(cli_run, tmp_path, monkeypatch, capsys, case):
    import importlib.util
    import shutil

    if case == "8-bit Adam without bitsandbytes" and importlib.util.find_spec("bitsandbytes"):
        pytest.skip("bitsandbytes is installed here")
    shutil.copytree(cli_run, tmp_path / "r")
    if case == "resume with a damaged newest and no other":
        shutil.rmtree(tmp_path / "r" / "checkpoint-2", ignore_errors=True)
        _truncate(next((tmp_path / "r").glob("checkpoint-*")) / "model.safetensors")
    monkeypatch.chdir(tmp_path)
    before = tree(tmp_path / "r")
    extra, needle = BAD_STARTS[case]
    code = main(["train", *_SMALL, "--training.output_dir", "r", "--training.max_steps", "6", *extra])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and err.count("\n") == 1, err
    assert tree(tmp_path / "r") == before


def test_a_new_directory_stays_absent_after_a_failed_start(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = main(["train", *_SMALL, "--training.output_dir", "new", "--training.fp16", "true"])
    assert (
        code == 2 and not (tmp_path / "new" / "tokenizer").exists() and not (tmp_path / "new" / "config.yaml").exists()
    )


def test_a_failed_cycle_start_writes_nothing(tmp_path, capsys):
    """`trainformers cycle` trains its tokenizer in memory: a start refused later leaves no directory."""
    import yaml

    config = {
        "model_A": {"preset": "nano", "vocab_size": 300, "max_position_embeddings": 64},
        "model_B": {"preset": "nano", "vocab_size": 300, "max_position_embeddings": 64},
        "data": {"task": "demo", "options": {"n_paired_train": 8, "n_unpaired_A": 32, "n_unpaired_B": 32, "n_eval": 4}},
        "training": {"output_dir": str(tmp_path / "new"), "max_steps": 2, "report_to": [], "fp16": True},
    }
    (tmp_path / "cycle.yaml").write_text(yaml.safe_dump(config))
    assert main(["cycle", str(tmp_path / "cycle.yaml")]) == 2
    assert "fp16" in capsys.readouterr().err and not (tmp_path / "new").exists()


def test_stopped_before_the_first_checkpoint_gets_one_consistent_advice(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "log.jsonl").write_text('{"loss": 5.0, "step": 1}\n')
    (out / "checkpoint-2.tmp").mkdir()
    with pytest.raises(CheckpointError) as resuming:
        _trainer(tmp_path).train(resume_from_checkpoint=True)
    with pytest.raises(CheckpointError) as starting:
        ckpt.check_output_dir(out, resuming=False, overwrite=False)
    for message in (str(resuming.value), str(starting.value)):
        assert "overwrite_output_dir=True" in message and "resume_from_checkpoint=True to" not in message


def test_a_finished_run_resumed_says_there_is_nothing_left(finished_run, tmp_path, capsys):
    _copy(finished_run[0], tmp_path)
    _trainer(tmp_path).train(resume_from_checkpoint=True)
    assert "resume: checkpoint-6 is at step 6, at or past max_steps=6: nothing left to train" in capsys.readouterr().out


def test_output_dir_that_is_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(CheckpointError, match="output_dir '.*f' is a file"):
        ckpt.check_output_dir(tmp_path / "f", resuming=False, overwrite=False)


# ---- two writers ------------------------------------------------------------------------------------


def test_a_second_writer_is_refused_before_it_writes(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", f"from trainformers.run_lock import RunLock; RunLock({str(out)!r}).acquire(); input()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        lock_file = out / ".trainformers.lock"
        for _ in range(2400):  # the holder imports torch first: up to 2 minutes on a loaded machine
            if lock_file.is_file() and lock_file.read_text():
                break
            import time

            time.sleep(0.05)
        before = tree(out)
        with pytest.raises(CheckpointError, match=rf"output_dir '{out}' is in use by another run \(pid {holder.pid} "):
            _trainer(tmp_path, overwrite_output_dir=True).train()
        assert tree(out) == before
    finally:
        holder.communicate("\n", timeout=60)


# ---- no pickle ------------------------------------------------------------------------------------


def test_no_pickle_in_a_checkpoint(finished_run):
    import zipfile

    for path in (finished_run[0] / "checkpoint-6").iterdir():
        assert path.suffix in {".safetensors", ".json", ".jinja"} or path.is_dir(), path.name
        assert not zipfile.is_zipfile(path) if path.is_file() else True


def test_the_pt_files_of_an_older_release_still_resume(finished_run, tmp_path):
    from trainformers.state_files import load_state_file

    out = _copy(finished_run[0], tmp_path)
    import shutil

    shutil.rmtree(out / "checkpoint-6")
    for path in (out / "checkpoint-4").glob("*.safetensors"):
        if path.name != "model.safetensors":
            torch.save(load_state_file(path), path.with_suffix(".pth" if path.name.startswith("rng") else ".pt"))
            path.unlink()
    trainer = _trainer(tmp_path)
    trainer.train(resume_from_checkpoint=True)
    for key, value in weights(trainer.model).items():
        assert torch.equal(value, finished_run[1][key]), key


class _Payload:
    def __reduce__(self):
        return (os.mkdir, ("/tmp/trainformers-pwned",))


def test_a_malicious_pickle_is_skipped_and_never_run(finished_run, tmp_path, capsys):
    out = _copy(finished_run[0], tmp_path)
    (out / "checkpoint-6" / "optimizer.safetensors").unlink()
    torch.save({"state": _Payload()}, out / "checkpoint-6" / "optimizer.pt")
    assert ckpt.resolve_resume(True, out) == out / "checkpoint-4"
    assert "resume: skipped checkpoint-6: optimizer.pt is not a plain state file" in capsys.readouterr().out
    assert not Path("/tmp/trainformers-pwned").exists()


def test_a_tokenizer_file_is_refused_not_silently_retrained(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{}")
    code = main(["train", *_SMALL, "--training.output_dir", "r", "--model.tokenizer", "tokenizer.json"])
    err = capsys.readouterr().err
    assert code == 2 and "model.tokenizer='tokenizer.json' is a file; give the directory" in err
    assert not (tmp_path / "r").exists()


# ---- kill -9 at a few points ------------------------------------------------------------------------

KILL_SCRIPT = Path(__file__).parent / "kill_run.py"


def _kill_run(out: Path, kill_at: str, *resume: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    return subprocess.run(
        [sys.executable, str(KILL_SCRIPT), str(out), kill_at, *resume],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("kill") / "full"
    assert _kill_run(out, "none").returncode == 0
    return out


@pytest.mark.parametrize("kill_at", ["save:4", "renamed:4", "save:2", "final"])
def test_kill_9_anywhere_resumes_bit_identical(uninterrupted, tmp_path, kill_at):
    from safetensors.torch import load_file

    out = tmp_path / "run"
    killed = _kill_run(out, kill_at)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not (out / "final").exists()
    resumed = _kill_run(out, "none", "--resume") if kill_at != "save:2" else _kill_run(out, "none")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    expected, got = load_file(uninterrupted / "end.safetensors"), load_file(out / "end.safetensors")
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    full = [json.loads(line) for line in (uninterrupted / "log.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["loss"] for r in rows if "loss" in r}
    assert losses == {r["step"]: r["loss"] for r in full if "loss" in r}
