"""Two processes under `accelerate launch` (gloo, CPU) match one process with the same global batch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import accelerate_launch
from safetensors.torch import load_file

SCRIPT = Path(__file__).parent / "ddp_train.py"


def _launch(out: Path, processes: int, batch: int, accum: int) -> dict:
    accelerate_launch(SCRIPT, out, batch, accum, processes=processes)
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


CYCLE_SCRIPT = Path(__file__).parent / "ddp_cycle.py"


def _launch_cycle(out: Path, processes: int, batch: int, accum: int, kind: str) -> dict:
    accelerate_launch(CYCLE_SCRIPT, out, batch, accum, kind, processes=processes)
    result = json.loads((out / "result.json").read_text())
    result["weights"] = load_file(out / "weights.safetensors")
    return result


@pytest.mark.slow
def test_cycle_two_processes_match_one(tmp_path):
    # generation is a fixed function of the text here, so the comparison is of the training math:
    # window sharding, the label count across ranks, the DDP gradient average, eval reduction
    one = _launch_cycle(tmp_path / "one", 1, 4, 1, "deterministic")
    two = _launch_cycle(tmp_path / "two", 2, 1, 2, "deterministic")  # 2 ranks x 1 row x 2 accumulation
    assert one["world"] == 1 and two["world"] == 2 and one["step"] == two["step"] == 3
    for key in ("loss_A", "loss_B"):
        assert one[key] == pytest.approx(two[key], rel=1e-5)
    assert one["eval_loss"] == pytest.approx(two["eval_loss"], rel=1e-5)
    for name, value in one["weights"].items():
        # The two runs sum the same terms in a different order (4 rows per batch vs 1 per rank, then
        # the all-reduce). Adam divides each gradient by its own running scale, so on near-zero
        # gradients that rounding noise becomes a visible step: in float32 one T5 weight of 1,024
        # ended 1.66e-4 apart. In float64 (ddp_cycle.py) the same runs end at most 6.7e-14 apart
        # (measured on this 2-core VM, transformers 5.24): rounding, not a difference in the math.
        # Adam also hides a wrong scale: a gradient doubled on 2 ranks changes float32 weights by
        # less than that noise, but float64 ones by 1.7e-8 (measured by doubling the loss in
        # cycle/trainer.py when world > 1). atol 1e-10 sits between the two, with 1,000x room.
        assert value.dtype == torch.float64
        torch.testing.assert_close(value, two["weights"][name], rtol=0, atol=1e-10, msg=name)


@pytest.mark.slow
def test_cycle_with_real_generation_runs_on_two_processes(tmp_path):
    two = _launch_cycle(tmp_path / "two", 2, 2, 1, "generate")
    assert two["world"] == 2 and two["step"] == 3 and len(two["loss_A"]) == 3


NODES_SCRIPT = Path(__file__).parent / "nodes_run.py"


@pytest.mark.slow
def test_two_nodes_without_a_shared_disk_each_save_and_resume_with_save_on_each_node(tmp_path):
    # two torchrun "machines" on localhost, one process each; nodes_run.py gives each its own output_dir
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(Path(__file__).parents[1] / "src"),
    }
    nodes = [
        subprocess.Popen(
            [
                sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
                "--node_rank", str(rank), "--master_addr", "127.0.0.1", "--master_port", str(port),
                str(NODES_SCRIPT), str(tmp_path),
            ],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for rank in (0, 1)
    ]  # fmt: skip
    for node in nodes:
        _, err = node.communicate(timeout=300)
        assert node.returncode == 0, err[-4000:]
    for rank in (0, 1):
        disk = tmp_path / f"node{rank}"
        result = json.loads((disk / "result.json").read_text())
        assert result["rank"] == rank and result["world"] == 2 and result["should_save"]
        assert result["same_weights"]  # resumed from this disk's own checkpoint-2 to the identical weights
        checkpoint = disk / "run" / "checkpoint-2"
        assert (checkpoint / "model.safetensors").is_file() and (checkpoint / "optimizer.safetensors").is_file()
        assert (checkpoint / f"rng_state_{rank}.safetensors").is_file()  # each machine holds its own ranks' states
        assert not (checkpoint / f"rng_state_{1 - rank}.safetensors").exists()
