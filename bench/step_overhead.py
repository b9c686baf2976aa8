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

How it is timed. On this VM the speed of the same loop drifts by up to 25% over seconds (a
neighbour on the host; no steal time is reported), so timing the variants one after the other
cannot resolve 5%. Instead the variants run side by side, interleaved: each in its own process
(torch in its main thread, its own OpenMP pool: in a second Python thread of one process the
nano step is 2x slower), gated by this script, which lets one process run a block of steps
(10 at nano, 5 at 1M, 2 at 20M), then the next, in a rotating order, so the three see the same
machine within a fraction of a second. Each step's end is timestamped (`on_step_end` in the
Trainers); a step's time runs from the previous step's end, or from the moment the process got
the gate back. Left out: the warm-up steps (first kernels, allocator growth) and the first step
of every block (cold caches after another process ran). steps/s is 1 / the median step time,
so an odd stalled step does not move it while a cost paid every step does (the Trainers' log
row every 50 steps is left out that way too: one `.item()` and a dict). A round starts three
fresh processes from the same initial weights and data; it is discarded and run again when
other processes used more than `--max-foreign` CPU cores during it (bench/_machine.py). The
table gives, per size, the median (min–max) steps/s over the valid rounds and the median
(min–max) of the per-round ratios to `hand`.

glibc malloc is left as it is (`--tune-malloc` applies the CLI's mallopt in every variant's process).

    .venv/bin/python bench/step_overhead.py                       # about 9 minutes on 2 quiet cores
    .venv/bin/python bench/step_overhead.py --sizes nano --rounds 3
    .venv/bin/python bench/step_overhead.py --profile ours --sizes nano   # cProfile of our loop, top functions
"""

from __future__ import annotations

import argparse
import contextlib
import io
import multiprocessing as mp
import statistics
import tempfile
import time

import torch
import transformers
from _machine import Load, command_line, machine_line, spread, tune_malloc, write_fragment  # bench/_machine.py
from torch.utils.data import DataLoader
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    TrainerCallback,
    default_data_collator,
    get_linear_schedule_with_warmup,
)

import trainformers

# name -> (hidden, layers, heads, SwiGLU, vocab, timed steps, warm-up steps, steps per block)
SIZES = {
    "nano": (64, 2, 2, 128, 256, 300, 20, 10),
    "1M": (128, 4, 4, 352, 2048, 100, 5, 5),
    "20M": (512, 6, 8, 1376, 8192, 10, 2, 2),
}
VARIANTS = ("hand", "ours", "hf")
BATCH, SEQ, LR = 8, 128, 1e-3


def build(size: str) -> LlamaForCausalLM:
    hidden, layers, heads, inter, vocab = SIZES[size][:5]
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=SEQ,
        tie_word_embeddings=True,
        use_cache=False,
        attn_implementation="sdpa",
        dtype=torch.float32,
    )
    torch.manual_seed(0)  # the same initial weights in every process
    return LlamaForCausalLM(config)


def rows(size: str, n: int) -> list[dict[str, torch.Tensor]]:
    ids = torch.randint(0, SIZES[size][4], (n, SEQ), generator=torch.Generator().manual_seed(1))
    return [{"input_ids": r, "labels": r} for r in ids]


class Gate:
    """A variant's side of the interleaving: step times, and handing the machine back every `block` steps.

    Without a connection (the profile) it only records the step times.
    """

    def __init__(self, conn=None, block: int = 0, steps: int = 0) -> None:
        self.conn, self.block, self.steps = conn, block, steps
        self.times: list[float] = []
        self.last = time.perf_counter()

    def start(self) -> None:
        if self.conn is not None:
            self.conn.recv()  # "go"
        self.last = time.perf_counter()

    def step_end(self) -> None:
        now = time.perf_counter()
        self.times.append(now - self.last)
        self.last = now
        if self.conn is not None and len(self.times) % self.block == 0 and len(self.times) < self.steps:
            self.conn.send("yield")
            self.start()


class GateCallback(TrainerCallback):
    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    def on_train_begin(self, args, state, control, **kwargs):
        self.gate.start()

    def on_step_end(self, args, state, control, **kwargs):
        self.gate.step_end()


def run_hand(model: torch.nn.Module, data: list, steps: int, gate: Gate) -> None:
    loader = DataLoader(
        data,
        batch_size=BATCH,
        shuffle=True,
        collate_fn=default_data_collator,
        generator=torch.Generator().manual_seed(0),
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0, fused=True)
    scheduler = get_linear_schedule_with_warmup(optimizer, 0, steps)
    model.train()
    gate.start()
    for batch in loader:
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        gate.step_end()
        if len(gate.times) == steps:
            break


def trainer_args(cls, out: str, steps: int):
    return cls(
        output_dir=out,
        max_steps=steps,
        per_device_train_batch_size=BATCH,
        learning_rate=LR,
        optim="adamw_torch_fused",
        max_grad_norm=1.0,
        lr_scheduler_type="linear",
        weight_decay=0.0,
        logging_steps=50,
        save_strategy="no",
        report_to="none",
        seed=0,
        dataloader_pin_memory=False,
    )


def run_trainer(variant: str, model: torch.nn.Module, data: list, steps: int, gate: Gate) -> None:
    if variant == "ours":
        trainer_cls, args_cls = trainformers.Trainer, trainformers.TrainingArguments
    else:
        trainer_cls, args_cls = transformers.Trainer, transformers.TrainingArguments
    with tempfile.TemporaryDirectory() as out:
        args = trainer_args(args_cls, out, steps)
        if variant == "ours":
            args.report_at_end = False
        trainer = trainer_cls(
            model=model,
            args=args,
            train_dataset=data,
            data_collator=default_data_collator,
            callbacks=[GateCallback(gate)],
        )
        trainer.train()


def run_variant(variant: str, size: str, gate: Gate) -> list[float]:
    """Train `variant` for warm-up + timed steps; the time of every step."""
    steps = sum(SIZES[size][5:7])
    data, model = rows(size, BATCH * steps), build(size)
    run = run_hand if variant == "hand" else lambda m, d, s, g: run_trainer(variant, m, d, s, g)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        run(model, data, steps, gate)
    assert len(gate.times) == steps, (variant, len(gate.times))
    return gate.times


def child(variant: str, size: str, malloc: bool, conn) -> None:
    """One variant in its own process: runs a block whenever the parent says "go"."""
    if malloc:
        tune_malloc()
    transformers.logging.set_verbosity_error()
    block, steps = SIZES[size][7], sum(SIZES[size][5:7])
    conn.send(("done", run_variant(variant, size, Gate(conn, block, steps))))


def step_rate(times: list[float], size: str) -> float:
    """steps/s: 1 / the median time of the steady steps (past the warm-up, not first in a block)."""
    warm, block = SIZES[size][6], SIZES[size][7]
    steady = [t for i, t in enumerate(times) if i >= warm and i % block]
    return 1.0 / statistics.median(steady)


def interleaved_round(size: str, order: tuple[str, ...], malloc: bool) -> dict[str, float]:
    """Start one process per variant and let them run a block each, in turn, until all are done."""
    ctx = mp.get_context("spawn")
    conns, procs = {}, []
    for variant in order:
        parent, child_end = ctx.Pipe()
        proc = ctx.Process(target=child, args=(variant, size, malloc, child_end), daemon=True)
        proc.start()
        conns[variant] = parent
        procs.append(proc)
    active, times = list(order), {}
    try:
        while active:
            for variant in list(active):
                conns[variant].send("go")
                message = conns[variant].recv()  # EOFError if the child died: its traceback is on stderr
                if message != "yield":
                    times[variant] = message[1]
                    active.remove(variant)
    finally:
        for proc in procs:
            proc.join(timeout=60)
    return {v: step_rate(times[v], size) for v in order}


def profile(variant: str, size: str) -> None:
    import cProfile
    import pstats

    run_variant(variant, size, Gate())  # warm caches, imports
    prof = cProfile.Profile()
    prof.enable()
    times = run_variant(variant, size, Gate())
    prof.disable()
    print(f"{variant} {size}: {1 / statistics.median(times[SIZES[size][6] :]):.1f} steps/s under cProfile")
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
    malloc = "mallopt as the CLI in every process" if opts.tune_malloc else "glibc defaults"
    transformers.logging.set_verbosity_error()
    if opts.profile:
        if opts.tune_malloc:
            tune_malloc()
        for size in opts.sizes:
            profile(opts.profile, size)
        return
    print(f"machine: {machine_line()}; {torch.get_num_threads()} threads per process; malloc: {malloc}", flush=True)
    results: dict[str, dict[str, list[float]]] = {}
    for size in opts.sizes:
        per = results[size] = {v: [] for v in VARIANTS}
        valid = attempts = 0
        while valid < opts.rounds and attempts < opts.max_attempts:
            attempts += 1
            order = VARIANTS[attempts % 3 :] + VARIANTS[: attempts % 3]
            load = Load()
            rates = interleaved_round(size, order, opts.tune_malloc)
            foreign = load.foreign()
            line = ", ".join(f"{v} {rates[v]:.2f}" for v in VARIANTS)
            if foreign > opts.max_foreign:
                print(
                    f"  {size} round {attempts}: {line} steps/s; foreign load {foreign:.2f} cores: discarded",
                    flush=True,
                )
                continue
            valid += 1
            for v in VARIANTS:
                per[v].append(rates[v])
            print(
                f"  {size} round {attempts}: {line} steps/s; ours/hand {rates['ours'] / rates['hand']:.3f}, "
                f"hf/hand {rates['hf'] / rates['hand']:.3f}; foreign {foreign:.2f}",
                flush=True,
            )

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
    command = command_line(opts.markdown)
    write_fragment(
        opts.markdown,
        f"""### Per-step overhead (`bench/step_overhead.py`)

Steps/s of the same training (Llama-shaped models from config, fp32, batch 8 x 128, fused AdamW,
linear schedule, clip 1.0) written by hand in PyTorch, with `trainformers.Trainer`, and with
`transformers.Trainer`. The three run interleaved, one process each, a block of steps at a time
in rotating order, so they share the machine's moment-to-moment speed (this VM drifts by up to
25% over seconds); rounds with foreign CPU load are discarded. Median (min–max) over rounds,
ratios per round. Sizes: nano (hidden 64, 2 layers, vocab 256), 1M (hidden 128, 4 layers),
20M (hidden 512, 6 layers, vocab 8192). Malloc: {malloc}.

Machine: {machine_line()}, {torch.get_num_threads()} threads per process. Command: `{command}`

{table}
""",
    )


if __name__ == "__main__":
    main()
