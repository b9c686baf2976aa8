"""`cpu_malloc`: each policy puts a freed 1 MiB block where it says (heap or its own mapping), the
trainers apply it when training starts, the CLI's 'auto' is 'speed', and the environment wins.

Malloc settings are process-wide, so every check that applies one runs in a fresh interpreter."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from trainformers import TrainingArguments
from trainformers.errors import ConfigError

TESTS = Path(__file__).parent
SRC = TESTS.parent / "src"


def _has_mallinfo2() -> bool:
    try:
        return hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2")
    except OSError:
        return False


pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or not _has_mallinfo2(), reason="glibc >= 2.33 (mallinfo2) only"
)

# Prints whether a freshly malloc'd 1 MiB block (and a 64 MiB one) got its own mapping, after a freed
# 16 MiB mapping has raised glibc's dynamic mmap threshold (what building a model does).
PLACEMENT = """
import ctypes
libc = ctypes.CDLL("libc.so.6")
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
libc.free(libc.malloc(16 << 20))
def mapped(size):
    before = libc.mallinfo2().hblks
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    own = libc.mallinfo2().hblks > before
    libc.free(block)
    return own
print("1MiB", "mapped" if mapped(1 << 20) else "heap")
print("64MiB", "mapped" if mapped(64 << 20) else "heap")
"""


def _python(*parts: str, env: dict[str, str] | None = None) -> str:
    """stdout of a fresh interpreter running `parts` (each dedented, then joined)."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    environment.update({"PYTHONPATH": f"{SRC}{os.pathsep}{TESTS}", "OMP_NUM_THREADS": "1", **(env or {})})
    done = subprocess.run(
        [sys.executable, "-c", "\n".join(textwrap.dedent(part) for part in parts)],
        capture_output=True,
        text=True,
        timeout=240,
        env=environment,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.parametrize(
    ("policy", "placement"),
    [
        ("system", {"1MiB": "heap", "64MiB": "mapped"}),  # glibc's raised threshold (16 MiB) keeps 1 MiB
        ("auto", {"1MiB": "heap", "64MiB": "mapped"}),  # from Python, auto leaves glibc alone
        ("memory", {"1MiB": "mapped", "64MiB": "mapped"}),  # fixed at 128 KiB: returned when freed
        ("speed", {"1MiB": "heap", "64MiB": "heap"}),  # fixed at 128 MiB: kept for the next step
    ],
)
def test_each_policy_places_a_freed_block_where_it_says(policy, placement):
    out = _python(
        f"""
        from trainformers.allocator import apply_malloc_policy
        print("said:", apply_malloc_policy({policy!r}))
        """,
        PLACEMENT,
    )
    got = dict(line.split() for line in out.splitlines() if not line.startswith("said:"))
    assert got == placement
    said = out.splitlines()[0]
    assert (said == "said: None") == (policy in ("system", "auto"))
    if policy == "memory":
        assert said == "said: cpu_malloc=memory: mmap threshold 128 KiB, trim threshold 128 KiB"


def test_the_cli_default_is_speed():
    out = _python(
        """
        from trainformers.allocator import apply_malloc_policy
        assert apply_malloc_policy("auto", cli=True) is None  # the default says nothing
        """,
        PLACEMENT,
    )
    assert "1MiB heap" in out and "64MiB heap" in out


def test_the_environment_wins_and_an_explicit_choice_says_so():
    out = _python(
        """
        from trainformers.allocator import apply_malloc_policy
        print(apply_malloc_policy("memory"))
        print(apply_malloc_policy("auto", cli=True))
        """,
        env={"MALLOC_MMAP_THRESHOLD_": "33554432"},
    )
    assert out.splitlines() == [
        "cpu_malloc=memory: not applied, the environment sets MALLOC_MMAP_THRESHOLD_=33554432",
        "None",
    ]


def test_trainer_applies_it_when_training_starts(tmp_path):
    out = _python(
        f"""
        from pathlib import Path
        from conftest import PadCollator, lm_rows, make_args, tiny_llama
        from trainformers import Trainer
        args = make_args(Path({str(tmp_path)!r}), max_steps=1, cpu_malloc="memory")
        Trainer(model=tiny_llama(), args=args, train_dataset=lm_rows(8), data_collator=PadCollator()).train()
        """,
        PLACEMENT,
    )
    assert "cpu_malloc=memory: mmap threshold 128 KiB, trim threshold 128 KiB" in out
    assert "1MiB mapped" in out


def test_cycle_trainer_applies_it_when_training_starts(tmp_path):
    out = _python(
        f"""
        from pathlib import Path
        from cycle_helpers import cycle_args, demo, tiny_causal, tokenizer
        from trainformers import CycleTrainer
        d = demo()
        CycleTrainer(
            cycle_args(Path({str(tmp_path)!r}), max_steps=1, cpu_malloc="memory"),
            models={{"A": tiny_causal(0), "B": tiny_causal(1)}},
            tokenizers=tokenizer(),
            train_dataset_A=d.unpaired_A,
            train_dataset_B=d.unpaired_B,
        ).train()
        """,
        PLACEMENT,
    )
    assert "cpu_malloc=memory: mmap threshold 128 KiB" in out and "1MiB mapped" in out


def test_the_cli_runner_applies_the_run_files_choice(tmp_path, monkeypatch):
    """`trainformers train`: 'auto' reaches `apply_malloc_policy` as the CLI's choice (speed)."""
    import trainformers.accel as accel_module
    import trainformers.run as run_module
    from trainformers.cli import main

    calls: list[tuple[str, bool]] = []

    def record(policy: str, *, cli: bool = False) -> None:
        calls.append((policy, cli))

    monkeypatch.setattr(run_module, "apply_malloc_policy", record)
    monkeypatch.setattr(accel_module, "apply_malloc_policy", record)
    monkeypatch.chdir(tmp_path)
    small = ["--model.hidden_size", "32", "--model.num_layers", "1", "--model.num_heads", "2"]
    small += ["--model.num_kv_heads", "1", "--model.vocab_size", "300", "--data.num_samples", "30"]
    small += ["--data.max_length", "32", "--model.sample_prompt", "''", "--training.max_steps", "1"]
    assert main(["train", *small, "--training.output_dir", "a"]) == 0
    assert calls == [("auto", True), ("auto", False)]
    calls.clear()
    assert main(["train", *small, "--training.output_dir", "b", "--training.cpu_malloc", "memory"]) == 0
    assert calls == [("memory", True), ("memory", False)]


def test_a_bad_value_is_one_line():
    with pytest.raises(ConfigError, match=r"cpu_malloc='fast' is not supported; choose one of: auto, speed, memory"):
        TrainingArguments(output_dir="unused", cpu_malloc="fast")
