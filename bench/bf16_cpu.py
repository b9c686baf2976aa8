"""bf16 autocast against fp32 training on CPU: tokens/s, and how far bf16 moves the loss curve.

Model: `DecoderLM` of `bench/decoder_lm.py`'s "20M" shape (hidden 512, 6 layers, 8 heads, 4 KV
heads, SwiGLU 1376, vocabulary 8,192, tied embeddings, sdpa, dropout 0), one fixed-seed init
that every run starts from. Data: the embedded default corpus (Python's help topics) through a
byte-level BPE tokenizer of at most 8,192 tokens, packed into blocks of `--seq` tokens; both
precisions see the same rows in the same order. Training goes through `trainformers.Trainer`
with decoder_lm.py's arguments (`optim="adamw_torch_fused"`, lr 1e-3, linear schedule, clipping
at 1.0, batch `--batch`), once as fp32 and once with `bf16=True`: Accelerate's CPU autocast, so
matmuls and attention run in bf16 while master weights, gradients, optimizer state and the loss
stay fp32.

Speed, as decoder_lm.py: a measurement is one `Trainer.train()` of `--warmup` + `--steps`
optimizer steps; tokens/s is (steps x batch x seq) / (time from the end of the last warm-up step
to the end of the last step). A round trains fp32 and bf16 back to back from the same weights on
the same data, fp32 first in odd rounds and bf16 first in even ones, and is discarded when other
processes used more than `--max-foreign` CPU cores during either (/proc/stat minus our own CPU
time). The table gives median (min-max) over the kept rounds of tokens/s per precision and of the
per-round ratio bf16/fp32. The bound on that ratio is the bf16/fp32 ratio of plain `torch.mm`
GFLOP/s (square 1024-2048, torch's threads), measured at start and printed.

Loss curve: one run of `--curve-steps` optimizer steps per precision from the same weights on
the same batches, the loss logged at every step; the deviation at step t is
|loss_bf16(t) - loss_fp32(t)| / loss_fp32(t). It does not depend on timing, so one run each; the
table gives its maximum and median over the curve. Tolerance: 2% at every step. bf16 keeps 8
significant bits (unit roundoff 2^-8, 0.4%) in the matmul inputs and activations; with fp32 master
weights, gradients and loss the curves drift apart only slowly: on the development machine (AMD
EPYC with AVX512-BF16, no AMX) the 20M curve stayed within 0.0001 over 30 steps (9.11 -> 7.10).
tests/test_bf16.py holds tiny models to the same 2% at every step of a 30-step curve (measured
there: at most 0.0096 over four seeds).

If this CPU has no native bf16 matmul (`trainformers.accel.cpu_has_native_bf16`), the script
says so in one line and stops: `bf16=True` trains in fp32 there.

glibc malloc is tuned at start as the `trainformers` CLI does, unless `--no-tune-malloc` or the
MALLOC_* variables are set.

    .venv/bin/python bench/bf16_cpu.py                        # about 3 minutes on 2 quiet cores
    .venv/bin/python bench/bf16_cpu.py --rounds 3 --curve-steps 40
    .venv/bin/python bench/bf16_cpu.py --profile              # also: top ops of a few steps of each
    .venv/bin/python bench/bf16_cpu.py --markdown bf16.md     # the docs/benchmarks.md section
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import os
import statistics
import tempfile
import time

import torch
from _machine import (  # bench/_machine.py
    CLK_TCK,
    Load,
    command_line,
    machine_line,
    spread,
    tune_malloc,
    write_fragment,
)
from decoder_lm import (  # the same 20M model and arguments
    SIZES,
    StepClock,
    configs,
    matmul_params,
    training_args,
)
from transformers import TrainerCallback, default_data_collator

from trainformers import DecoderLM, Trainer
from trainformers.accel import NO_CPU_BF16, cpu_has_native_bf16
from trainformers.data.corpus import default_corpus
from trainformers.data.packing import pack_texts
from trainformers.data.tokenizer import train_tokenizer

PRECISIONS = ("fp32", "bf16")
SIZE = "20M"
TOLERANCE = 0.02  # max |loss_bf16 - loss_fp32| / loss_fp32 over the curve; the docstring says why


# ---- set-up ----------------------------------------------------------------------------------


def matmul_rate(dtype: torch.dtype, sizes=(1024, 1536, 2048), reps: int = 5) -> tuple[float, float]:
    """(GFLOP/s, foreign load): square `torch.mm` in `dtype`, the median over sizes of per-size medians."""
    load = Load()
    per_size = []
    for n in sizes:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        out = torch.empty(n, n, dtype=dtype)
        torch.mm(a, b, out=out)  # warm-up (oneDNN creates its kernel on first use)
        rates = []
        for _ in range(reps):
            t = time.perf_counter()
            torch.mm(a, b, out=out)
            rates.append(2 * n**3 / (time.perf_counter() - t) / 1e9)
        per_size.append(statistics.median(rates))
    return statistics.median(per_size), load.foreign()


def initial_state(seq: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {k: v.clone() for k, v in DecoderLM(configs(SIZE, seq)[1]).state_dict().items()}


def build(seq: int, init: dict[str, torch.Tensor]) -> DecoderLM:
    model = DecoderLM(configs(SIZE, seq)[1])
    model.load_state_dict(init)
    return model


def corpus_blocks(seq: int):
    """The default corpus as packed blocks of `seq` tokens (BPE vocabulary at most the model's)."""
    texts = default_corpus()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        tokenizer = train_tokenizer(texts, SIZES[SIZE][4])
        blocks = pack_texts(texts, tokenizer, seq)
    return blocks.with_format("torch"), len(tokenizer)


def args_for(out: str, precision: str, steps: int, batch: int, logging_steps: int = 100_000):
    # decoder_lm.py's arguments; the data keeps its order, so both precisions see the same batches;
    # no report.png per run (seconds each, outside the timed steps but many of them)
    return dataclasses.replace(
        training_args(out, steps, batch),
        bf16=precision == "bf16",
        logging_steps=logging_steps,
        train_sampling_strategy="sequential",
        report_at_end=False,
    )


def train(
    precision: str, init, data, steps: int, batch: int, seq: int, callbacks=(), logging_steps: int = 100_000
) -> Trainer:
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(
            model=build(seq, init),
            args=args_for(out, precision, steps, batch, logging_steps),
            train_dataset=data,
            data_collator=default_data_collator,
            callbacks=list(callbacks),
        )
        with contextlib.redirect_stdout(io.StringIO()):  # the per-step log rows and the end-of-training line
            trainer.train()
    assert trainer.accelerator.mixed_precision == ("bf16" if precision == "bf16" else "no"), (
        trainer.accelerator.mixed_precision
    )
    return trainer


# ---- measuring -------------------------------------------------------------------------------


def run_once(precision: str, opts, init, data) -> dict[str, float]:
    clock = StepClock()
    train(precision, init, data, opts.warmup + opts.steps, opts.batch, opts.seq, callbacks=[clock])
    assert len(clock.marks) == opts.warmup + opts.steps, len(clock.marks)
    (t0, c0, b0, f0), (t1, c1, b1, f1) = clock.marks[opts.warmup - 1], clock.marks[-1]
    wall = t1 - t0
    return {
        "tok_s": opts.steps * opts.batch * opts.seq / wall,
        "s_step": wall / opts.steps,
        "foreign": max((b1 - b0) / CLK_TCK - (c1 - c0), 0.0) / wall,
        "faults_step": (f1 - f0) / opts.steps,
    }


def loss_curves(opts, init, data) -> dict[str, list[float]]:
    curves = {}
    for precision in PRECISIONS:
        trainer = train(precision, init, data, opts.curve_steps, opts.batch, opts.seq, logging_steps=1)
        curves[precision] = [row["loss"] for row in trainer.state.log_history if "loss" in row]
        assert len(curves[precision]) == opts.curve_steps, len(curves[precision])
    return curves


def profile(opts, init, data) -> None:
    """torch.profiler over 3 steps (after 2 warm-up steps) of each precision: top ops by self CPU time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    for precision in PRECISIONS:

        class Prof(TrainerCallback):
            def __init__(self):
                self.prof = torch_profile(activities=[ProfilerActivity.CPU])

            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == 2:
                    self.prof.__enter__()
                elif state.global_step == 5:
                    self.prof.__exit__(None, None, None)

        cb = Prof()
        train(precision, init, data, 5, opts.batch, opts.seq, callbacks=[cb])
        print(f"\n## profile {precision} {SIZE}: 3 steps, top ops by self CPU time")
        print(cb.prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20, max_name_column_width=48))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="valid paired rounds (median over them)")
    parser.add_argument("--steps", type=int, default=8, help="timed optimizer steps per measurement")
    parser.add_argument(
        "--warmup", type=int, default=2, help="untimed optimizer steps at the start of each measurement"
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument(
        "--curve-steps", type=int, default=60, help="optimizer steps of the loss-curve comparison (0: skip)"
    )
    parser.add_argument("--max-foreign", type=float, default=0.25, help="discard a round when others used more cores")
    parser.add_argument("--max-attempts", type=int, default=12, help="rounds tried at most")
    parser.add_argument("--no-tune-malloc", action="store_true")
    parser.add_argument("--profile", action="store_true", help="after the table, profile a few steps of each precision")
    parser.add_argument("--markdown", metavar="PATH", help="also write the results as a docs/benchmarks.md section")
    opts = parser.parse_args()
    if not cpu_has_native_bf16():
        raise SystemExit(NO_CPU_BF16 + "; nothing to compare")
    malloc = "untouched (--no-tune-malloc)" if opts.no_tune_malloc else tune_malloc()
    command = command_line(opts.markdown)

    print(f"machine: {machine_line()}; {torch.get_num_threads()} torch threads")
    print(f"malloc: {malloc}; load average at start {os.getloadavg()[0]:.2f}")
    (fp32_peak, f1), (bf16_peak, f2) = matmul_rate(torch.float32), matmul_rate(torch.bfloat16)
    disturbed = " (DISTURBED by foreign load)" if max(f1, f2) > opts.max_foreign else ""
    print(
        f"matmul: fp32 {fp32_peak:.0f} GFLOP/s, bf16 {bf16_peak:.0f} GFLOP/s, ratio {bf16_peak / fp32_peak:.2f}{disturbed}"
    )

    init = initial_state(opts.seq)
    total, n = matmul_params(build(opts.seq, init))
    data, vocab_used = corpus_blocks(opts.seq)
    print(
        f"model: DecoderLM {SIZE} ({total / 1e6:.2f}M parameters, N = {n / 1e6:.2f}M with the LM head); data: "
        f"{len(data)} blocks of {opts.seq} tokens from the default corpus ({vocab_used} BPE tokens used), "
        f"batch {opts.batch} = {opts.batch * opts.seq} tokens/step"
    )

    for precision in PRECISIONS:  # process warm-up: first kernels, oneDNN primitives, imports
        train(precision, init, data, 2, opts.batch, opts.seq)

    kept = {p: [] for p in PRECISIONS}
    ratios: list[float] = []
    start = time.perf_counter()
    attempt = 0
    while len(ratios) < opts.rounds and attempt < opts.max_attempts:
        load = os.getloadavg()[0]
        if load > torch.get_num_threads() + 1.5:
            print(
                f"round {attempt + 1}: load average {load:.2f} far above our {torch.get_num_threads()} threads; waiting 20 s"
            )
            attempt += 1
            time.sleep(20)
            continue
        order = PRECISIONS if attempt % 2 == 0 else PRECISIONS[::-1]
        attempt += 1
        measured = {p: run_once(p, opts, init, data) for p in order}
        worst = max(r["foreign"] for r in measured.values())
        verdict = "kept" if worst <= opts.max_foreign else "discarded"
        print(
            f"round {attempt} ({time.perf_counter() - start:.0f} s, {' then '.join(order)}): foreign load up to "
            f"{worst:.2f} cores, {verdict}; "
            + ", ".join(
                f"{p} {r['tok_s']:.0f} tok/s ({r['s_step'] * 1e3:.0f} ms/step, {r['faults_step']:.0f} faults/step)"
                for p, r in measured.items()
            )
        )
        if verdict == "kept":
            for p, r in measured.items():
                kept[p].append(r)
            ratios.append(measured["bf16"]["tok_s"] / measured["fp32"]["tok_s"])

    curves = loss_curves(opts, init, data) if opts.curve_steps else None
    if curves:
        dev = [abs(b - f) / f for f, b in zip(curves["fp32"], curves["bf16"])]
        worst_step = max(range(len(dev)), key=dev.__getitem__) + 1
        print(
            f"loss curve, {opts.curve_steps} steps: fp32 {curves['fp32'][0]:.3f} -> {curves['fp32'][-1]:.3f}, "
            f"bf16 {curves['bf16'][0]:.3f} -> {curves['bf16'][-1]:.3f}; |bf16 - fp32| / fp32 max {max(dev):.4f} "
            f"(step {worst_step}), median {statistics.median(dev):.4f}; tolerance {TOLERANCE}: "
            + ("within" if max(dev) <= TOLERANCE else "EXCEEDED")
        )

    if not ratios:
        raise SystemExit("no round ran without foreign CPU load; run again on a quiet machine")
    rows = [
        "| precision | rounds | ms/step | tokens/s | bf16/fp32 |",
        "|---|---:|---:|---:|---:|",
    ]
    for p in PRECISIONS:
        rows.append(
            f"| {p} | {len(kept[p])} | {spread([r['s_step'] * 1e3 for r in kept[p]], '{:.0f}')} | "
            f"{spread([r['tok_s'] for r in kept[p]], '{:.0f}')} | "
            + (f"{spread(ratios, '{:.2f}')}x |" if p == "bf16" else "1 (ref) |")
        )
    table = "\n".join(rows)
    print(
        f"\ntraining tokens/s, median (min-max) of {len(ratios)} kept paired rounds ({opts.warmup} warm-up + {opts.steps} "
        f"timed steps, batch {opts.batch} x seq {opts.seq}, fused AdamW); {time.perf_counter() - start:.0f} s\n{table}"
    )

    curve_text = (
        f"Loss curve over {opts.curve_steps} steps from the same weights on the same batches: fp32 "
        f"{curves['fp32'][0]:.3f} → {curves['fp32'][-1]:.3f}, bf16 {curves['bf16'][0]:.3f} → {curves['bf16'][-1]:.3f}; "
        f"|loss_bf16 − loss_fp32| / loss_fp32 at most **{max(dev):.4f}** (step {worst_step}), median "
        f"{statistics.median(dev):.4f}; the tolerance is {TOLERANCE}."
        if curves
        else "Loss curve not measured (`--curve-steps 0`)."
    )
    write_fragment(
        opts.markdown,
        f"""### bf16 autocast on CPU (`bench/bf16_cpu.py`)

Training tokens/s of the 20M `DecoderLM` ({total / 1e6:.2f}M parameters; hidden 512, 6 layers, 8 heads, 4 KV
heads, vocabulary 8,192) through our `Trainer` with fused AdamW, fp32 against `bf16=True` (CPU autocast:
matmuls and attention in bf16; weights, gradients, optimizer state and loss in fp32), on the default
corpus packed into {opts.batch} x {opts.seq}-token batches. Paired rounds in alternating order from the
same weights and data, {opts.warmup} untimed warm-up + {opts.steps} timed steps each; rounds with other
processes above {opts.max_foreign} cores discarded. Plain `torch.mm` on this machine: fp32
{fp32_peak:.0f} GFLOP/s, bf16 {bf16_peak:.0f} GFLOP/s (ratio {bf16_peak / fp32_peak:.2f}, the bound on the speed-up){disturbed}.
{curve_text}

Machine: {machine_line()}, {torch.get_num_threads()} torch threads. Command: `{command}`

{table}
""",
    )

    if opts.profile:
        profile(opts, init, data)


if __name__ == "__main__":
    main()
