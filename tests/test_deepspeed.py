"""DeepSpeed ZeRO 1/2/3 through Accelerate on two CPU processes (gloo): "auto" values filled from the
training arguments, accumulation delegated to the engine exactly, per-rank checkpoints that resume to
the identical run, and a consolidated final/. Runs where deepspeed is installed (pip install
deepspeed; its CPU build compiles one small op with the system C++ compiler on first use); skipped,
with that reason, where it is not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import accelerate_launch
from safetensors.torch import load_file

pytest.importorskip("deepspeed", reason="deepspeed is not installed (pip install deepspeed)")

SCRIPT = Path(__file__).parent / "engine_run.py"
AUTO = {
    "train_micro_batch_size_per_gpu": "auto",
    "gradient_accumulation_steps": "auto",
    "train_batch_size": "auto",
    "gradient_clipping": "auto",
}


def _launch(out: Path, processes: int, batch: int, accum: int, extra: dict | None = None) -> dict:
    accelerate_launch(SCRIPT, out, batch, accum, json.dumps(extra or {}), processes=processes)
    return json.loads((out / "result.json").read_text())


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    out = tmp_path_factory.mktemp("one")
    return out, _launch(out, 1, 4, 2)


@pytest.mark.slow
@pytest.mark.xdist_group("deepspeed")
@pytest.mark.parametrize("stage", [1, 2, 3])
def test_zero_on_two_cpu_processes_matches_one_process_and_resumes_exactly(one_process, tmp_path, stage):
    ref_dir, ref = one_process
    config = {**AUTO, "zero_optimization": {"stage": stage}}
    two = _launch(tmp_path, 2, 2, 2, {"deepspeed": config})  # 2 ranks x 2 rows x 2 accumulation
    assert two["world"] == 2 and two["distributed_type"] == "DistributedType.DEEPSPEED"
    assert two["sharding"]["zero_stage"] == stage
    assert two["sharding"]["engine_steps"] == 6  # one engine step per window, not per micro-batch
    assert two["losses"] == pytest.approx(ref["losses"], rel=1e-5)
    assert two["resumed_losses"] == two["losses"]
    assert two["uneven_eval_loss"] == pytest.approx(ref["uneven_eval_loss"], rel=1e-5)  # ZeRO-3: in lockstep
    assert two["after"] == {  # the next Trainer of the process is plain DDP again
        "distributed_type": "DistributedType.MULTI_CPU",
        "ACCELERATE_USE_FSDP": None,
        "ACCELERATE_USE_DEEPSPEED": None,
    }
    checkpoint = tmp_path / "run" / "checkpoint-3"
    assert (checkpoint / "deepspeed" / "latest").is_file()
    assert (checkpoint / "model.safetensors").is_file() == (stage < 3)  # ZeRO-3 keeps only its partitions
    final = load_file(tmp_path / "run" / "final" / "model.safetensors")
    expected = load_file(ref_dir / "run" / "final" / "model.safetensors")
    assert sorted(final) == sorted(expected)
    for name, value in expected.items():
        torch.testing.assert_close(final[name], value, rtol=0, atol=1e-5, msg=name)
    resumed = load_file(tmp_path / "resumed" / "final" / "model.safetensors")
    for name, value in final.items():
        torch.testing.assert_close(resumed[name], value, rtol=0, atol=0, msg=name)
