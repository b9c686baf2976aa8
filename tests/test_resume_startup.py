"""Resuming mid-epoch jumps: nothing before the resume position is walked, fetched or collated.

The jumped order is checked against Accelerate's walking `SkipBatchSampler` over every sharding
mode on fake ranks, and through `Trainer.train` against an uninterrupted run.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from accelerate.data_loader import BatchSamplerShard, SkipBatchSampler
from conftest import PadCollator, accelerate_launch, lm_rows, make_args, tiny_llama
from torch.utils.data import BatchSampler

from trainformers import Trainer
from trainformers.sampling import EpochSampler, jump_batch_sampler


def _sharded(sampler, size, world, rank, split, even, drop_last):
    """What Accelerate's prepared loader holds: batches, dealt to `rank` of `world` when world > 1."""
    inner = BatchSampler(sampler, size, drop_last)
    return inner if world == 1 else BatchSamplerShard(inner, world, rank, split_batches=split, even_batches=even)


def _walked_and_jumped(n, skip, *sharding, **sampler_kwargs):
    def batch_sampler():
        sampler = EpochSampler(n, seed=5, **sampler_kwargs)
        sampler.set_epoch(2)
        return _sharded(sampler, *sharding)

    jumped, passed = jump_batch_sampler(batch_sampler(), skip)
    walked, resumed = SkipBatchSampler(batch_sampler(), skip), SkipBatchSampler(jumped, passed)
    assert len(resumed) == len(walked)  # Accelerate's own count (it can be off by one with split_batches)
    return list(walked), list(resumed)


SHARDINGS = [(1, 0, False), (2, 0, False), (2, 1, False), (3, 2, False), (2, 0, True), (2, 1, True)]


@pytest.mark.parametrize("world,rank,split", SHARDINGS)
@pytest.mark.parametrize("even,drop_last", [(True, False), (False, False), (True, True)])
def test_jump_yields_what_walking_yields(world, rank, split, even, drop_last):
    for n, size in [(37, 4), (48, 4), (23, 2)]:  # uneven last batch; even; a wrap-around round
        sharding = (size, world, rank, split, even, drop_last)
        total = len(list(_sharded(range(n), *sharding)))
        for skip in range(1, total + 1):
            walked, jumped = _walked_and_jumped(n, skip, *sharding)
            assert jumped == walked, (n, size, skip)


@pytest.mark.parametrize("kind", [{"shuffle": False}, {"lengths": [i % 7 for i in range(37)], "batch_size": 8}])
def test_jump_keeps_sequential_and_length_grouped_orders(kind):
    for skip in (1, 2, 4):
        walked, jumped = _walked_and_jumped(37, skip, 4, 2, 1, False, True, False, **kind)
        assert jumped == walked and walked


class Rows:
    """A map-style dataset that records every row it hands out."""

    def __init__(self, data):
        self.data, self.fetched = data, []

    def __len__(self):
        return len(self.data)

    def __getitem__(self, index):
        self.fetched.append(index)
        return {**self.data[index], "row": index}


class Collate(PadCollator):
    """PadCollator that records the rows of every batch it builds."""

    def __init__(self):
        self.batches = []

    def __call__(self, features):
        self.batches.append([f["row"] for f in features])
        return super().__call__(features)


ARGS = {
    "per_device_train_batch_size": 2,
    "gradient_accumulation_steps": 2,
    "max_steps": 10,
    "save_strategy": "steps",
    "save_steps": 3,
    "logging_steps": 5,
}


def _run(out, resume=None):
    data, collate = Rows(lm_rows(24)), Collate()  # 12 micro-batches, 6 steps per epoch
    t = Trainer(tiny_llama(), make_args(out, **ARGS), data_collator=collate, train_dataset=data)
    t.train(resume_from_checkpoint=resume)
    return data.fetched, collate.batches


@pytest.mark.parametrize("step", [3, 9])  # epoch 0, and epoch 1 (6 micro-batches in)
def test_resume_fetches_and_collates_only_the_batches_it_trains_on(tmp_path, monkeypatch, step):
    full_rows, full_batches = _run(tmp_path / "full")
    pulled = []
    walk = EpochSampler.__iter__

    def counted(self):
        for index in walk(self):
            pulled.append(index)
            yield index

    monkeypatch.setattr(EpochSampler, "__iter__", counted)
    checkpoint = Path(tmp_path / "full" / "run" / f"checkpoint-{step}")
    rows, batches = _run(tmp_path / "full", resume=str(checkpoint))
    done = step * ARGS["gradient_accumulation_steps"]  # micro-batches before the checkpoint
    assert batches == full_batches[done : done + len(batches)]  # the uninterrupted run's, from there on
    assert len(batches) >= (ARGS["max_steps"] - step) * ARGS["gradient_accumulation_steps"]
    start = done * ARGS["per_device_train_batch_size"]
    assert rows == full_rows[start : start + len(rows)]  # no row before the position is read
    assert len(rows) == sum(len(b) for b in batches)  # every row read is collated
    assert len(pulled) == len(rows)  # and the sampler produced no index it did not hand out


DDP_SCRIPT = """
import hashlib, json, os, sys
sys.path.insert(0, {tests!r})
from conftest import PadCollator, lm_rows, tiny_llama
from trainformers import Trainer, TrainingArguments
out, resume = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None
args = TrainingArguments(
    output_dir=out, per_device_train_batch_size=2, gradient_accumulation_steps=2, max_steps=7, save_strategy="steps",
    save_steps=2, logging_steps=1, learning_rate=1e-2, report_to="none", disable_tqdm=True, report_at_end=False,
    seed=0, optim="adamw_torch", ddp_backend="gloo",
)
collate = PadCollator()
rows = []
def record(features):
    batch = collate(features)
    rows.append(batch["input_ids"].tolist())
    return batch
trainer = Trainer(tiny_llama(), args, data_collator=record, train_dataset=lm_rows(26))
trainer.train(resume_from_checkpoint=resume)
rank = trainer.accelerator.process_index
losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
weights = {{k: hashlib.sha256(v.numpy().tobytes()).hexdigest() for k, v in trainer.accelerator.unwrap_model(trainer.model).state_dict().items()}}
with open(os.path.join(out, f"result_{{rank}}.json"), "w") as f:
    json.dump({{"losses": losses, "weights": weights, "collated": rows}}, f)
trainer.accelerator.end_training()
sys.stdout.flush()
os._exit(0)
"""


def _launch_two(tmp_path: Path, out: Path, *extra: str) -> list[dict]:
    import json

    script = tmp_path / "ddp_resume.py"
    script.write_text(DDP_SCRIPT.format(tests=str(Path(__file__).parent)))
    accelerate_launch(script, out, *extra, processes=2)
    return [json.loads((out / f"result_{rank}.json").read_text()) for rank in range(2)]


@pytest.mark.slow
def test_two_process_resume_equals_uninterrupted_and_reads_only_what_it_trains_on(tmp_path):
    # 26 rows, 2 per batch, 2 ranks: 13 batches, so each epoch ends in a round that wraps around
    # to the epoch's first rows; resuming at step 2 (4 micro-batches in) trains through it
    full = _launch_two(tmp_path, tmp_path / "full")
    resumed = _launch_two(tmp_path, tmp_path / "cut", str(tmp_path / "full" / "checkpoint-2"))
    for rank in range(2):
        assert resumed[rank]["weights"] == full[rank]["weights"]  # bit for bit
        assert resumed[rank]["losses"] == full[rank]["losses"]
        # the same batches from the resume position on; the 4 skipped ones were never collated
        assert resumed[rank]["collated"] == full[rank]["collated"][4:]
