"""Per-step overhead: our `Trainer` against a hand-written PyTorch loop, with the HF `Trainer` beside them.

Three Llama-shaped models from config (random init, fp32, sdpa, tied embeddings, `use_cache=False`):

    nano: hidden 64,  2 layers, 2 heads,  SwiGLU 128,  vocab 256   (almost no compute: overhead shows)
    1M:   hidden 128, 4 layers, 4 heads,  SwiGLU 352,  vocab 2,048 (the default run's shape)
    20M:  hidden 512, 6 layers, 8 heads,  SwiGLU 1376, vocab 8,192

Every variant trains the same weights on the same random token blocks (batch 8 x 128, `input_ids`
and `labels`, no mask) with the same recipe: fused AdamW (lr 1e-3, no weight decay), linear
schedule, gradient clipping at 1.0, one micro-batch per step, shuffled `DataLoader` with
`default_data_collator` over a list of tensor rows.

- `hand`: the loop people write by hand (`model(**batch).loss`, `backward`, `clip_grad_norm_`,
  `step`, scheduler, `zero_grad(set_to_none=True)`), timestamped after each step;
- `ours`: `trainformers.Trainer`, defaults otherwise (progress bar on, logging every 50 steps);
- `hf`: `transformers.Trainer` with the same arguments.

Each size starts with one untimed run of every variant (first kernels, imports, allocator
growth). A measurement is one training run of warm-up + N steps, each step's end timestamped
(`on_step_end` in the Trainers); steps/s is 1 / the median time between consecutive step ends
after the warm-up, so an odd stalled step (a page-fault storm, a neighbour's burst) does not
move it while a cost paid every step does (the Trainers' log row every 50 steps is left out
that way too: one `.item()` and a dict, well under a millisecond here). A round runs the
three variants back to back in one process, in an order rotated from round to round, from the
same initial weights; a round is discarded and run again when other processes used more than
`--max-foreign` CPU cores during it (bench/_machine.py). The table gives, per size, the median
(min–max) steps/s over the valid rounds and the median (min–max) of the per-round ratios to `hand`.

glibc malloc is left as it is (`--tune-malloc` applies the CLI's mallopt to the whole process:
every variant gets it).

    .venv/bin/python bench/step_overhead.py                       # about 6 minutes on 2 quiet cores
    .venv/bin/python bench/step_overhead.py --sizes nano --rounds 3
    .venv/bin/python bench/step_overhead.py --profile ours --sizes nano   # cProfile of our loop, top functions
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import statistics
import sys
import tempfile
import time

import torch
import transformers
from torch.utils.data import DataLoader
from transformers import LlamaConfig, LlamaForCausalLM, TrainerCallback, default_data_collator, get_linear_schedule_with_warmup

from _machine import Load, machine_line, spread, tune_malloc, write_fragment  # bench/_machine.py
import trainformers

# name -> (hidden, layers, heads, SwiGLU, vocab, timed steps, warm-up steps)
SIZES = {
    "nano": (64, 2, 2, 128, 256, 300, 20),
    "1M": (128, 4, 4, 352, 2048, 60, 5),
    "20M": (512, 6, 8, 1376, 8192, 8, 2),
}
VARIANTS = ("hand", "ours", "hf")
BATCH, SEQ, LR = 8, 128, 1e-3


def build(size: str, init: dict[str, torch.Tensor] | None = None) -> LlamaForCausalLM:
    hidden, layers, heads, inter, vocab, _, _ = SIZES[size]
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=SEQ,
        tie_word_embeddings=True, use_cache=False, attn_implementation="sdpa", dtype=torch.float32,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    if init is not None:
        model.load_state_dict(init)
    return model


def rows(size: str, n: int) -> list[dict[str, torch.Tensor]]:
    ids = torch.randint(0, SIZES[size][4], (n, SEQ), generator=torch.Generator().manual_seed(1))
    return [{"input_ids": r, "labels": r} for r in ids]


class StepClock(TrainerCallback):
    def __init__(self) -> None:
        self.marks: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.marks.append(time.perf_counter())


def run_hand(model: torch.nn.Module, data: list, steps: int) -> list[float]:
    loader = DataLoader(data, batch_size=BATCH, shuffle=True, collate_fn=default_data_collator,
                        generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0, fused=True)
    scheduler = get_linear_schedule_with_warmup(optimizer, 0, steps)
    model.train()
    marks = []
    for batch in loader:
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        marks.append(time.perf_counter())
        if len(marks) == steps:
            break
    return marks


def trainer_args(cls, out: str, steps: int):
    return cls(
        output_dir=out, max_steps=steps, per_device_train_batch_size=BATCH, learning_rate=LR,
        optim="adamw_torch_fused", max_grad_norm=1.0, lr_scheduler_type="linear", weight_decay=0.0,
        logging_steps=50, save_strategy="no", report_to="none", seed=0, dataloader_pin_memory=False,
    )


def run_trainer(variant: str, model: torch.nn.Module, data: list, steps: int) -> list[float]:
    if variant == "ours":
        trainer_cls, args_cls = trainformers.Trainer, trainformers.TrainingArguments
    else:
        trainer_cls, args_cls = transformers.Trainer, transformers.TrainingArguments
    clock = StepClock()
    with tempfile.TemporaryDirectory() as out:
        extra = {"report_at_end": False} if variant == "ours" else {}
        args = trainer_args(args_cls, out, steps)
        for key, value in extra.items():
            setattr(args, key, value)
        trainer = trainer_cls(model=model, args=args, train_dataset=data, data_collator=default_data_collator, callbacks=[clock])
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            trainer.train()
    return clock.marks


def measure(variant: str, size: str, init: dict, data: list) -> float:
    timed, warm = SIZES[size][5], SIZES[size][6]
    gc.collect()  # the previous run's garbage (an HF Trainer leaves cycles) is not collected mid-measurement
    model = build(size, init)
    run = run_hand if variant == "hand" else lambda m, d, s: run_trainer(variant, m, d, s)
    marks = run(model, data, warm + timed)
    assert len(marks) == warm + timed, (variant, len(marks))
    steps = [b - a for a, b in zip(marks[warm - 1:], marks[warm:])]
    return 1.0 / statistics.median(steps)  # robust to the odd stalled step (page faults, a neighbour)


def profile(variant: str, size: str) -> None:
    import cProfile
    import pstats

    init = build(size).state_dict()
    timed, warm = SIZES[size][5], SIZES[size][6]
    data = rows(size, BATCH * (timed + warm))
    measure(variant, size, init, data)  # warm caches, imports
    prof = cProfile.Profile()
    prof.enable()
    rate = measure(variant, size, init, data)
    prof.disable()
    print(f"{variant} {size}: {rate:.1f} steps/s under cProfile")
    pstats.Stats(prof).sort_stats("tottime").print_stats(35)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-foreign", type=float, default=0.25)
    parser.add_argument("--max-attempts", type=int, default=12)
    parser.add_argument("--tune-malloc", action="store_true")
    parser.add_argument("--profile", choices=VARIANTS)
    parser.add_argument("--markdown", help="write the docs/benchmarks.md fragment here")
    opts = parser.parse_args()
    malloc = tune_malloc() if opts.tune_malloc else "glibc defaults"
    transformers.logging.set_verbosity_error()
    if opts.profile:
        for size in opts.sizes:
            profile(opts.profile, size)
        return
    print(f"machine: {machine_line()}; {torch.get_num_threads()} threads; malloc: {malloc}", flush=True)
    results: dict[str, dict[str, list[float]]] = {}
    for size in opts.sizes:
        init = build(size).state_dict()
        timed, warm = SIZES[size][5], SIZES[size][6]
        data = rows(size, BATCH * (timed + warm))
        per = results[size] = {v: [] for v in VARIANTS}
        for v in VARIANTS:  # untimed: first kernels, imports and allocator growth would bias round 1
            measure(v, size, init, data)
        valid = attempts = 0
        while valid < opts.rounds and attempts < opts.max_attempts:
            attempts += 1
            order = VARIANTS[attempts % 3:] + VARIANTS[: attempts % 3]
            load = Load()
            rates = {v: measure(v, size, init, data) for v in order}
            foreign = load.foreign()
            line = ", ".join(f"{v} {rates[v]:.2f}" for v in VARIANTS)
            if foreign > opts.max_foreign:
                print(f"  {size} round {attempts}: {line} steps/s; foreign load {foreign:.2f} cores: discarded", flush=True)
                continue
            valid += 1
            for v in VARIANTS:
                per[v].append(rates[v])
            print(f"  {size} round {attempts}: {line} steps/s; ours/hand {rates['ours'] / rates['hand']:.3f}, "
                  f"hf/hand {rates['hf'] / rates['hand']:.3f}; foreign {foreign:.2f}", flush=True)

    lines = [
        "| size | hand-written loop, steps/s | trainformers, steps/s | ours / hand | HF Trainer, steps/s | HF / hand | rounds |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for size, per in results.items():
        if not per["hand"]:
            continue
        ours = [o / h for o, h in zip(per["ours"], per["hand"])]
        hf = [o / h for o, h in zip(per["hf"], per["hand"])]
        lines.append(
            f"| {size} | {spread(per['hand'], '{:.2f}')} | {spread(per['ours'], '{:.2f}')} | **{spread(ours, '{:.3f}')}** "
            f"| {spread(per['hf'], '{:.2f}')} | {spread(hf, '{:.3f}')} | {len(per['hand'])} |"
        )
    table = "\n".join(lines)
    print(table)
    command = "python bench/step_overhead.py " + " ".join(a for a in sys.argv[1:] if a not in (opts.markdown, "--markdown"))
    write_fragment(opts.markdown, f"""### Per-step overhead (`bench/step_overhead.py`)

Steps/s of the same training (Llama-shaped models from config, fp32, batch 8 x 128, fused AdamW,
linear schedule, clip 1.0) written by hand in PyTorch, with `trainformers.Trainer`, and with
`transformers.Trainer`, in paired rounds (order rotated, same weights and data, rounds with
foreign CPU load discarded); median (min–max) over rounds, ratios per round. Sizes: nano (hidden
64, 2 layers, vocab 256), 1M (hidden 128, 4 layers), 20M (hidden 512, 6 layers, vocab 8192).
Malloc: {malloc}.

Machine: {machine_line()}, {torch.get_num_threads()} threads. Command: `{command.strip()}`

{table}
""")


if __name__ == "__main__":
    main()
