"""tools/gpu_check.sh --cpu-smoke: the GPU check's CPU rows pass, its GPU rows SKIP, and a failing or
hanging row makes the exit status non-zero (so the check itself can fail)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "tools" / "gpu_check.sh"
CPU_ROWS = {
    "bf16-exact-resume",
    "ddp-save-resume-final",
    "torch-compile-vs-eager",
    "grad-checkpointing-vs-off",
    "throughput-vs-hf",
    # FSDP2 runs on CPU processes too (gloo): the script's GPU-day engine harness is checked here first
    "fsdp2-save-resume-final",
}
GPU_ROWS = {
    "fp16-scaler-exact-resume",
    # ZeRO runs on CPU too (tests/test_deepspeed.py), but DeepSpeed's first use compiles an op: over
    # 165 s on a loaded 2-core CI machine, too long for a smoke row
    "zero2-save-resume-final",
    "zero3-save-resume-final",
    "qlora-4bit",
}


def gpu_check(out: Path, *args: str) -> tuple[int, dict[str, tuple[str, str]], str]:
    """Run the script; (exit status, {row: (status, detail)} from the table written to `out`, output)."""
    done = subprocess.run(
        ["bash", str(SCRIPT), "--cpu-smoke", "--out", str(out), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHON": sys.executable},
    )
    rows = {}
    for line in out.read_text().splitlines() if out.exists() else []:
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if line.startswith("| ") and len(cells) == 4 and cells[1] in ("PASS", "FAIL", "SKIP"):
            rows[cells[0]] = (cells[1], cells[3])
    return done.returncode, rows, done.stdout + done.stderr


@pytest.mark.slow
def test_cpu_smoke_passes_its_rows_and_skips_the_gpu_ones(tmp_path):
    code, rows, output = gpu_check(tmp_path / "gpu_check.md")
    assert set(rows) == CPU_ROWS | GPU_ROWS, output[-3000:]
    failed = {k: v for k, v in rows.items() if v[0] == "FAIL"}
    assert not failed and code == 0, (failed, output[-3000:])
    assert all(rows[r][0] == "PASS" for r in CPU_ROWS), rows
    assert all(rows[r] == ("SKIP", "needs CUDA") for r in GPU_ROWS), rows
    for row in ("bf16-exact-resume", "ddp-save-resume-final", "fsdp2-save-resume-final"):
        assert "bitwise equal" in rows[row][1], rows[row]
    assert "ours/HF" in rows["throughput-vs-hf"][1]
    assert "| check | status | seconds | detail |" in output  # the table is printed too


@pytest.mark.slow
def test_a_failing_or_hanging_row_fails_the_check(tmp_path):
    fail, hang = "grad-checkpointing-vs-off", "torch-compile-vs-eager"
    only = f"{fail},{hang}"
    args = ("--only", only, "--inject-fail", fail, "--inject-hang", hang, "--timeout-s", "3")
    code, rows, output = gpu_check(tmp_path / "g.md", *args)
    assert code == 1, output[-3000:]
    assert rows[fail] == ("FAIL", f"RuntimeError: injected failure (--inject-fail {fail})")
    assert rows[hang] == ("FAIL", "timed out after 3 s")
    assert "RuntimeError: injected failure" in (tmp_path / "g_logs" / f"{fail}.log").read_text()  # the traceback
