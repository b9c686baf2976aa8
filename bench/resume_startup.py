"""Resume start-up: time from `Trainer.train(resume_from_checkpoint=...)` to the end of the first step.

A resumed run should start as fast at step 10,000 of an epoch as at step 0: the sampler jumps to
the position (`trainformers.sampling.skip_first_batches`), no skipped batch is fetched, collated
or walked. Measured on a tiny Llama (hidden 16, 2 layers, vocab 64; the step itself is ~ms) and
100,000 rows of 16 tokens (a `datasets.Dataset`), batch 8: 12,500 micro-batches per epoch.

The checkpoints: one real training step is run and saved (`checkpoint-1`: model, optimizer,
scheduler, RNG, trainer state), then copied once per position k with trainer_state.json's
position counters edited (`global_step`, `micro_step`, `epoch_step` = k, `epoch` = k / 12,500).
Everything else in the checkpoint is that of step 1, so the files read are the same for every
position and only the position differs, which is what start-up may depend on. (A real run to
step 10,000 gives the same files in size; it only takes longer to make.)

Variants, per position: `jump` (trainformers now) and `walk` (Accelerate's `skip_first_batches`,
which iterates the skipped batches' indices without loading them: the code before, patched
back in). `fresh` is `train()` with no checkpoint, for reference. Each measurement builds a new
model and Trainer; the clock runs from the `train()` call to `on_step_end` of the first step
(which stops training). Median (min–max) over `--repeats` rounds, order rotated per round;
"load" is the CPU other processes used meanwhile.

    .venv/bin/python bench/resume_startup.py                    # about 1 minute on 2 quiet cores
    .venv/bin/python bench/resume_startup.py --repeats 2 --rows 20000 --positions 0 1000
    .venv/bin/python bench/resume_startup.py --markdown /tmp/resume_startup.md
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from _machine import (  # bench/_machine.py
    Load,
    command_line,
    machine_line,
    spread,
    write_fragment,
)
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM

import trainformers
import trainformers.trainer
from trainformers import TrainerCallback

BATCH, SEQ, VOCAB = 8, 16, 64


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=SEQ,
        pad_token_id=0,
        use_cache=False,
    )
    return LlamaForCausalLM(config)


def rows(n: int) -> Dataset:
    ids = torch.randint(3, VOCAB, (n, SEQ), generator=torch.Generator().manual_seed(0)).tolist()
    return Dataset.from_dict({"input_ids": ids, "labels": ids})


def collate(features: list[dict]) -> dict[str, torch.Tensor]:
    return {k: torch.tensor([f[k] for f in features]) for k in ("input_ids", "labels")}


class FirstStep(TrainerCallback):
    """Marks the end of the first optimizer step and stops training there."""

    def __init__(self) -> None:
        self.at: float | None = None

    def on_step_end(self, args, state, control, **kwargs):
        self.at = time.perf_counter()
        control.should_training_stop = True


def args(out: Path, max_steps: int, save: bool) -> trainformers.TrainingArguments:
    return trainformers.TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=BATCH,
        max_steps=max_steps,
        learning_rate=1e-3,
        save_strategy="steps" if save else "no",
        save_steps=1,
        logging_steps=100_000,
        report_to="none",
        disable_tqdm=True,
        report_at_end=False,
        seed=0,
        optim="adamw_torch",
        dataloader_pin_memory=False,
    )


def make_checkpoints(root: Path, data: Dataset, positions: list[int], steps_per_epoch: int) -> dict[int, Path]:
    """One real step saved, then a copy per position with the position counters edited."""
    base = root / "base"
    trainer = trainformers.Trainer(tiny_llama(), args(base, 1, save=True), data_collator=collate, train_dataset=data)
    trainer.train()
    made = {}
    for k in positions:
        path = root / f"at_{k}" / f"checkpoint-{k}"
        shutil.copytree(base / "checkpoint-1", path)
        state_file = path / "trainer_state.json"
        state = json.loads(state_file.read_text())
        state.update(global_step=k, micro_step=k, epoch_step=k, epoch=k / steps_per_epoch)
        state_file.write_text(json.dumps(state))
        made[k] = path
    return made


def measure(variant: str, data: Dataset, checkpoint: Path | None, out: Path, steps_per_epoch: int) -> float:
    clock = FirstStep()
    trainer = trainformers.Trainer(
        tiny_llama(),
        args(checkpoint.parent if checkpoint else out, steps_per_epoch, save=False),
        data_collator=collate,
        train_dataset=data,
        callbacks=[clock],
    )
    original = trainformers.trainer.skip_first_batches
    if variant == "walk":
        trainformers.trainer.skip_first_batches = lambda accel, loader, k: accel.skip_first_batches(loader, k)
    try:
        start = time.perf_counter()
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    finally:
        trainformers.trainer.skip_first_batches = original
    assert clock.at is not None
    return clock.at - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--positions", type=int, nargs="+", default=[0, 1_000, 10_000])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--markdown", help="write the docs/benchmarks.md fragment here")
    opts = parser.parse_args()
    from transformers.utils import logging

    logging.set_verbosity_error()
    steps_per_epoch = -(-opts.rows // BATCH)
    if max(opts.positions) >= steps_per_epoch:
        sys.exit(f"positions must be below the {steps_per_epoch} steps of one epoch")
    print(f"machine: {machine_line()}; {torch.get_num_threads()} threads", flush=True)
    data = rows(opts.rows)
    cases = [("fresh", None)] + [(v, k) for k in opts.positions for v in ("jump", "walk")]
    times: dict[tuple[str, int | None], list[float]] = {case: [] for case in cases}
    loads: list[float] = []
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        root = Path(tmp)
        checkpoints = make_checkpoints(root, data, opts.positions, steps_per_epoch)
        measure("fresh", data, None, root / "warm-up", steps_per_epoch)  # imports, first-call costs
        for repeat in range(opts.repeats):
            load = Load()
            order = cases[repeat % len(cases) :] + cases[: repeat % len(cases)]
            for variant, k in order:
                out = root / f"fresh_{repeat}"
                times[(variant, k)].append(measure(variant, data, checkpoints.get(k), out, steps_per_epoch))
            loads.append(load.foreign())
            print(
                f"  round {repeat + 1}: "
                + ", ".join(f"{v}@{k} {times[(v, k)][-1] * 1e3:.0f} ms" for v, k in cases)
                + f"; load {loads[-1]:.2f}",
                file=sys.stderr,
                flush=True,
            )

    lines = ["| start | position (step of 12,500) | jump (now), ms | walk (before), ms |", "|---|---:|---:|---:|"]
    lines.append(f"| fresh, no checkpoint | 0 | {spread([t * 1e3 for t in times[('fresh', None)]], '{:.0f}')} | |")
    for k in opts.positions:
        jump = spread([t * 1e3 for t in times[("jump", k)]], "{:.0f}")
        walk = spread([t * 1e3 for t in times[("walk", k)]], "{:.0f}")
        lines.append(f"| resume | {k:,} | {jump} | {walk} |")
    lines[0] = lines[0].replace("12,500", f"{steps_per_epoch:,}")
    table = "\n".join(lines)
    print(table + f"\n\nforeign load per round: {spread(loads, '{:.2f}')} cores")
    command = command_line(opts.markdown)
    write_fragment(
        opts.markdown,
        f"""### Resume start-up (`bench/resume_startup.py`)

Time from `Trainer.train(resume_from_checkpoint=...)` to the end of the first optimizer step, for
checkpoints at several positions of one epoch ({opts.rows:,} rows of {SEQ} tokens, batch {BATCH}: {steps_per_epoch:,}
micro-batches; a tiny Llama, so the step itself is a few ms and start-up dominates). The
checkpoints are one real saved step with the position counters of trainer_state.json edited, so
all read the same files. "jump" is trainformers now (the sampler starts at the position); "walk" is
Accelerate's `skip_first_batches`, which iterates the skipped indices (the code before, patched
back in). Median (min–max) over {opts.repeats} rounds, order rotated; foreign CPU load per round
{spread(loads, "{:.2f}")} cores.

Machine: {machine_line()}, {torch.get_num_threads()} threads. Command: `{command}`

{table}
""",
    )


if __name__ == "__main__":
    main()
