"""Two processes under `accelerate launch` (gloo, CPU) match one process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

SCRIPT = Path(__file__).parent / "ddp_train.py"


def _launch(out: Path, processes: int, batch: int, accum: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    # on a machine without GPUs, --multi_gpu is accelerate's torchrun launcher; each process then
    # finds no CUDA and joins a gloo group on the CPU (plain --cpu would need mpirun)
    mode = "--multi_gpu" if processes > 1 else "--cpu"
    launcher = [sys.executable, "-m", "accelerate.commands.launch", mode, "--num_processes", str(processes),
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]
    done = subprocess.run([*launcher, str(SCRIPT), str(out), str(batch), str(accum)],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads((out / "result.json").read_text())
    result["weights"] = load_file(out / "weights.safetensors")
    return result


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    one = _launch(tmp_path / "one", 1, 8, 1)
    two = _launch(tmp_path / "two", 2, 2, 2)  # 2 ranks x 2 rows x 2 accumulation = the same 8 rows per step
    assert one["world"] == 1 and two["world"] == 2
    assert len(one["losses"]) == len(two["losses"]) == 5
    for a, b in zip(one["losses"], two["losses"]):
        assert a == pytest.approx(b, rel=1e-5)
    assert one["eval_loss"] == pytest.approx(two["eval_loss"], rel=1e-5)
    # predictions come back in dataset order, without the padded duplicates of uneven shards
    assert one["label_ids"] == two["label_ids"] and len(one["label_ids"]) == 10
    assert one["argmax"] == two["argmax"]
    for name, value in one["weights"].items():
        torch.testing.assert_close(value, two["weights"][name], rtol=1e-4, atol=1e-6, msg=name)
