"""Training tokens/s and MFU of `DecoderLM` against `transformers.LlamaForCausalLM` of the same shape.

Two sizes, each built twice with identical shapes: hidden, layers, heads, KV heads, SwiGLU width
(DecoderLM's default 8/3 rule, passed to Llama too), vocabulary, tied embeddings, sdpa attention,
fp32, dropout 0, `use_cache=False`:

    1M:  hidden 128, 4 layers, 4 heads, 2 KV heads, SwiGLU 352,  vocab 2,048 (the default run's shape)
    20M: hidden 512, 6 layers, 8 heads, 4 KV heads, SwiGLU 1376, vocab 8,192

The Llama is initialised with a fixed seed and DecoderLM gets the same weights through
`from_llama_state_dict`; the script checks that both give the same logits before timing. Data:
random token blocks (`--batch` x `--seq`, default 8 x 128; packed: `input_ids` and `labels`, no
attention mask, the model shifts), fed through `trainformers.Trainer` with
`TrainingArguments(optim="adamw_torch_fused", max_grad_norm=1.0, lr_scheduler_type="linear", ...)`.

A measurement is one `Trainer.train()` of `--warmup` + N optimizer steps; a `TrainerCallback`
timestamps every `on_step_end`, and tokens/s is (N x batch x seq) / (time from the end of the last
warm-up step to the end of the last step). A round measures both models of one size back to back,
from the same weights and data, in alternating order (Llama first in odd rounds, DecoderLM first
in even ones); a round is discarded and run again when other processes used more than
`--max-foreign` CPU cores during it (from /proc/stat minus this process's CPU time), and the script
waits when the 1-minute load average is far above our own threads. The table gives medians over
`--rounds` valid rounds per size and the median of the per-round ratios DecoderLM/Llama.

FLOPs (PaLM appendix B style, causal masking not discounted):

    model FLOPs per token = 6 * N + 12 * L * H * T

N = parameters that do matmuls: every parameter except the input embedding, plus the LM head
(with tied embeddings that equals the unique parameter count; the RMSNorm weights are in it and
are negligible); L layers, H hidden size, T sequence length. MFU = tokens/s x FLOPs per token /
peak, where the peak is measured once at start: fp32 `torch.mm` on square matrices (1024, 1536,
2048) with torch's threads, the median over sizes of each size's median GFLOP/s (retried when
foreign load disturbed it; if every try did, measured again after the first quiet round).

glibc malloc is tuned at start as the `trainformers` CLI does (mmap threshold 32 MiB, trim
threshold 2 GiB; docs/perf-notes.md), unless `--no-tune-malloc` or the MALLOC_* variables are set.
Each round line shows minor page faults per step: at 20M the logits (8 x 128 x 8192 fp32) are
exactly 32 MiB, so they, their gradient and log-softmax output reach that mmap threshold and are
mapped and faulted afresh every step (7k-41k faults/step); the 20M numbers vary more for it. With
MALLOC_MMAP_THRESHOLD_=134217728 in the environment the faults go to ~0.

    .venv/bin/python bench/decoder_lm.py                    # about 2 minutes on 2 quiet cores
    .venv/bin/python bench/decoder_lm.py --sizes 1M --rounds 5
    .venv/bin/python bench/decoder_lm.py --profile          # also: torch.profiler top ops, a few steps each
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import resource
import statistics
import tempfile
import time

import datasets
import torch
import transformers
from _machine import (  # bench/_machine.py
    CLK_TCK,
    Load,
    busy_jiffies,
    command_line,
    machine_line,
    own_cpu,
    spread,
    tune_malloc,
    write_fragment,
)
from transformers import LlamaConfig, LlamaForCausalLM, TrainerCallback, default_data_collator

import trainformers
from trainformers import DecoderLM, DecoderLMConfig, Trainer, TrainingArguments
from trainformers.flops import model_flops
from trainformers.models.decoder_lm import from_llama_state_dict

MODELS = ("Llama", "DecoderLM")
# name -> (hidden, layers, heads, kv heads, vocab, timed steps per measurement)
SIZES = {
    "1M": (128, 4, 4, 2, 2048, 40),
    "20M": (512, 6, 8, 4, 8192, 8),
}


# ---- machine ---------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def matmul_peak(sizes=(1024, 1536, 2048), reps: int = 7) -> tuple[float, dict[int, float], float]:
    """fp32 square matmul GFLOP/s with torch's threads: per size the median of `reps`, then the median."""
    load = Load()
    per_size = {}
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        out = torch.empty(n, n)
        torch.mm(a, b, out=out)  # warm-up
        rates = []
        for _ in range(reps):
            t = time.perf_counter()
            torch.mm(a, b, out=out)
            rates.append(2 * n**3 / (time.perf_counter() - t) / 1e9)
        per_size[n] = statistics.median(rates)
    return statistics.median(per_size.values()), per_size, load.foreign()


# ---- models and data -------------------------------------------------------------------------


def configs(size: str, seq: int) -> tuple[LlamaConfig, DecoderLMConfig]:
    hidden, layers, heads, kv, vocab, _ = SIZES[size]
    dec = DecoderLMConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        max_position_embeddings=max(256, seq),
        dropout=0.0,
        tie_word_embeddings=True,
        use_cache=False,
        attn_implementation="sdpa",
    )
    llama = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=dec.intermediate_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        max_position_embeddings=max(256, seq),
        rms_norm_eps=dec.rms_norm_eps,
        rope_theta=dec.rope_theta,
        attention_dropout=0.0,
        attention_bias=False,
        mlp_bias=False,
        tie_word_embeddings=True,
        use_cache=False,
        attn_implementation="sdpa",
        initializer_range=dec.initializer_range,
        dtype=torch.float32,
    )
    return llama, dec


def build(name: str, size: str, seq: int, init: dict[str, torch.Tensor]) -> torch.nn.Module:
    llama_cfg, dec_cfg = configs(size, seq)
    model = LlamaForCausalLM(llama_cfg) if name == "Llama" else DecoderLM(dec_cfg)
    state = init if name == "Llama" else from_llama_state_dict(init)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if "rotary" not in k]
    assert not missing and not unexpected, (name, missing, unexpected)
    if name == "Llama":
        assert model.config._attn_implementation == "sdpa", model.config._attn_implementation
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight, f"{name}: head not tied"
    return model.float()


def initial_llama_state(size: str, seq: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {k: v.clone() for k, v in LlamaForCausalLM(configs(size, seq)[0]).state_dict().items()}


def matmul_params(model: torch.nn.Module) -> tuple[int, int]:
    """(unique parameters, N = parameters that do matmuls), N as the Trainer counts it (trainformers.flops)."""
    total = sum(p.numel() for p in model.parameters())  # deduplicates the tied head
    return total, model_flops(model).matmul_params


def random_blocks(rows: int, seq: int, vocab: int, seed: int) -> datasets.Dataset:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (rows, seq), generator=g)
    return datasets.Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()}).with_format("torch")


# ---- measuring -------------------------------------------------------------------------------


class StepClock(TrainerCallback):
    """Wall time, own CPU time, machine busy jiffies and minor page faults at each optimizer step's end."""

    def __init__(self) -> None:
        self.marks: list[tuple[float, float, int, int]] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.marks.append(
            (time.perf_counter(), own_cpu(), busy_jiffies(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt)
        )


def training_args(out: str, steps: int, batch: int) -> TrainingArguments:
    return TrainingArguments(
        output_dir=out,
        max_steps=steps,
        per_device_train_batch_size=batch,
        learning_rate=1e-3,
        optim="adamw_torch_fused",
        max_grad_norm=1.0,
        lr_scheduler_type="linear",
        weight_decay=0.0,
        logging_steps=100_000,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        seed=0,
        dataloader_pin_memory=False,
        report_at_end=False,
    )


def run_once(name: str, size: str, opts, init: dict[str, torch.Tensor], data_seed: int) -> dict[str, float]:
    vocab, steps = SIZES[size][4], SIZES[size][5] if opts.steps is None else opts.steps
    model = build(name, size, opts.seq, init)
    clock = StepClock()
    data = random_blocks(opts.batch * (opts.warmup + steps), opts.seq, vocab, data_seed)
    with tempfile.TemporaryDirectory() as out:
        args = training_args(out, opts.warmup + steps, opts.batch)
        trainer = Trainer(
            model=model, args=args, train_dataset=data, data_collator=default_data_collator, callbacks=[clock]
        )
        with contextlib.redirect_stdout(io.StringIO()):  # the end-of-training metrics line
            trainer.train()
    assert len(clock.marks) == opts.warmup + steps, len(clock.marks)
    (t0, c0, b0, f0), (t1, c1, b1, f1) = clock.marks[opts.warmup - 1], clock.marks[-1]
    wall = t1 - t0
    return {
        "tok_s": steps * opts.batch * opts.seq / wall,
        "s_step": wall / steps,
        "foreign": max((b1 - b0) / CLK_TCK - (c1 - c0), 0.0) / wall,
        "own_cores": (c1 - c0) / wall,
        "faults_step": (f1 - f0) / steps,
    }


def check_parity(size: str, opts, init) -> float:
    """Max |logits difference| of the two models on one batch (same weights): they compute the same thing."""
    ids = torch.randint(0, SIZES[size][4], (2, opts.seq), generator=torch.Generator().manual_seed(123))
    with torch.no_grad():
        a = build("Llama", size, opts.seq, init).eval()(input_ids=ids).logits
        b = build("DecoderLM", size, opts.seq, init).eval()(input_ids=ids).logits
    return float((a - b).abs().max())


def profile(size: str, opts, init) -> None:
    """torch.profiler over 3 steps (after 2 warm-up steps) of each model: the top ops by self CPU time."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    vocab = SIZES[size][4]
    for name in MODELS:
        model = build(name, size, opts.seq, init)

        class Prof(TrainerCallback):
            def __init__(self):
                self.prof = torch_profile(activities=[ProfilerActivity.CPU], record_shapes=False)

            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == 2:
                    self.prof.__enter__()
                elif state.global_step == 5:
                    self.prof.__exit__(None, None, None)

        cb = Prof()
        with tempfile.TemporaryDirectory() as out:
            trainer = Trainer(
                model=model,
                args=training_args(out, 5, opts.batch),
                data_collator=default_data_collator,
                train_dataset=random_blocks(opts.batch * 5, opts.seq, vocab, 0),
                callbacks=[cb],
            )
            with contextlib.redirect_stdout(io.StringIO()):
                trainer.train()
        print(f"\n## profile {name} {size}: 3 steps, top ops by self CPU time")
        print(cb.prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18, max_name_column_width=48))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--rounds", type=int, default=5, help="valid paired rounds per size (median over them)")
    parser.add_argument(
        "--steps", type=int, default=None, help="timed steps per measurement (default: 40 at 1M, 8 at 20M)"
    )
    parser.add_argument(
        "--warmup", type=int, default=2, help="untimed optimizer steps at the start of each measurement"
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--max-foreign", type=float, default=0.25, help="discard a round when others used more cores")
    parser.add_argument("--max-attempts", type=int, default=12, help="rounds tried at most per size")
    parser.add_argument(
        "--budget-s", type=float, default=420, help="stop starting rounds after this many seconds (once >= 3 are valid)"
    )
    parser.add_argument("--no-tune-malloc", action="store_true")
    parser.add_argument("--profile", action="store_true", help="after the table, profile a few steps of each model")
    parser.add_argument("--markdown", help="write the docs/benchmarks.md fragment here (make bench)")
    opts = parser.parse_args()
    malloc = "untouched (--no-tune-malloc)" if opts.no_tune_malloc else tune_malloc()

    threads = torch.get_num_threads()
    print(
        f"machine: {cpu_model()}, nproc {os.cpu_count()}, python {platform.python_version()}, torch {torch.__version__} "
        f"({threads} threads, interop {torch.get_num_interop_threads()}), transformers {transformers.__version__}, "
        f"trainformers {trainformers.__version__}"
    )
    print(f"malloc: {malloc}; load average at start {os.getloadavg()[0]:.2f}")
    print(
        f"data: random token blocks, batch {opts.batch} x seq {opts.seq} = {opts.batch * opts.seq} tokens/step, packed, labels = input_ids"
    )

    # the peak: measured once, on a quiet machine; when every try at start is disturbed, it is taken
    # again after the next kept round (quiet by then), and the table says which
    peak_note = ""
    for _attempt in range(6):
        peak, per_size, foreign = matmul_peak()
        if foreign <= opts.max_foreign:
            break
        print(f"peak measurement disturbed (foreign load {foreign:.2f} cores, {peak:.1f} GFLOP/s); again in 10 s")
        time.sleep(10)
    peak_clean = foreign <= opts.max_foreign

    def report_peak() -> None:
        print(
            f"peak{peak_note}: fp32 matmul {peak:.1f} GFLOP/s with {threads} threads (median of "
            + ", ".join(f"{n}: {g:.1f}" for n, g in per_size.items())
            + f"; foreign load {foreign:.2f} cores{'' if peak_clean else ', DISTURBED: to be measured again'})"
        )

    report_peak()

    inits, info = {}, {}
    for size in opts.sizes:
        hidden, layers, heads, kv, vocab, _ = SIZES[size]
        inits[size] = initial_llama_state(size, opts.seq)
        diff = check_parity(size, opts, inits[size])
        models = {name: build(name, size, opts.seq, inits[size]) for name in MODELS}
        counts = {name: matmul_params(model) for name, model in models.items()}
        assert counts["Llama"] == counts["DecoderLM"], counts
        total, n = counts["Llama"]
        flops_tok = model_flops(models["Llama"]).per_batch(1, opts.seq)  # the formula the Trainer logs MFU with
        assert flops_tok == 6 * n + 12 * layers * hidden * opts.seq
        del models
        info[size] = {"params": total, "n": n, "flops_tok": flops_tok}
        print(
            f"{size}: hidden {hidden}, {layers} layers, {heads} heads, {kv} KV heads, SwiGLU "
            f"{configs(size, opts.seq)[1].intermediate_size}, vocab {vocab}; {total / 1e6:.2f}M parameters "
            f"(N = {n / 1e6:.2f}M incl. LM head); FLOPs/token = 6*N + 12*L*H*T = {flops_tok / 1e6:.2f}M; "
            f"max |logits Llama - DecoderLM| = {diff:.1e}"
        )
        assert diff < 1e-3, f"{size}: the two models do not compute the same function (diff {diff})"

    run_once("Llama", opts.sizes[0], opts, inits[opts.sizes[0]], 0)  # process warm-up (first kernels, imports)

    results = {size: {m: [] for m in MODELS} for size in opts.sizes}
    ratios = {size: [] for size in opts.sizes}
    start = time.perf_counter()
    for size in opts.sizes:
        attempt = 0
        while len(ratios[size]) < opts.rounds and attempt < opts.max_attempts:
            elapsed = time.perf_counter() - start
            if len(ratios[size]) >= 3 and elapsed > opts.budget_s * (opts.sizes.index(size) + 1) / len(opts.sizes):
                print(f"{size}: time budget reached after {len(ratios[size])} valid rounds")
                break
            load = os.getloadavg()[0]
            if load > threads + 1.5:
                print(
                    f"{size} round {attempt + 1}: load average {load:.2f} far above our {threads} threads; waiting 20 s"
                )
                attempt += 1
                time.sleep(20)
                continue
            order = MODELS if attempt % 2 == 0 else MODELS[::-1]
            attempt += 1
            measured = {m: run_once(m, size, opts, inits[size], data_seed=attempt) for m in order}
            worst = max(r["foreign"] for r in measured.values())
            verdict = "kept" if worst <= opts.max_foreign else "discarded"
            print(
                f"{size} round {attempt} ({time.perf_counter() - start:.0f} s, {' then '.join(order)}): foreign load up to "
                f"{worst:.2f} cores, {verdict}; "
                + ", ".join(
                    f"{m} {r['tok_s']:.0f} tok/s ({r['s_step'] * 1e3:.1f} ms/step, {r['faults_step']:.0f} faults/step, "
                    f"{r['own_cores']:.2f} cores)"
                    for m, r in measured.items()
                )
            )
            if verdict == "kept":
                for m, r in measured.items():
                    results[size][m].append(r)
                ratios[size].append(measured["DecoderLM"]["tok_s"] / measured["Llama"]["tok_s"])
                if not peak_clean:
                    again = matmul_peak()
                    if again[2] <= opts.max_foreign:
                        (peak, per_size, foreign), peak_clean, peak_note = (
                            again,
                            True,
                            " (measured after a quiet round)",
                        )
                        report_peak()

    if not any(ratios.values()):
        raise SystemExit("no round ran without foreign CPU load; run again on a quiet machine")
    if not peak_clean:
        print(f"WARNING: no undisturbed peak measurement; MFU below uses a disturbed peak of {peak:.1f} GFLOP/s")
    print(
        f"\ntraining tokens/s, median of valid paired rounds ({opts.warmup} warm-up + timed steps, batch {opts.batch} x "
        f"seq {opts.seq}, fp32, sdpa, fused AdamW); peak {peak:.1f} GFLOP/s fp32 matmul, FLOPs/token = 6N + 12*L*H*T"
    )
    print("| model | size | params | rounds | ms/step | tokens/s | DecoderLM/Llama | TFLOP/s | MFU |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for size in opts.sizes:
        if not ratios[size]:
            print(f"| (all rounds of {size} discarded) | {size} | | 0 | | | | | |")
            continue
        for m in MODELS:
            kept = results[size][m]
            tok_s = statistics.median(r["tok_s"] for r in kept)
            flops = tok_s * info[size]["flops_tok"]
            ratio = f"{statistics.median(ratios[size]):.3f}x" if m == "DecoderLM" else "1 (ref)"
            print(
                f"| {m} | {size} | {info[size]['params'] / 1e6:.2f}M | {len(kept)} | "
                f"{statistics.median(r['s_step'] for r in kept) * 1e3:.1f} | {tok_s:.0f} | {ratio} | "
                f"{flops / 1e12:.4f} | {flops / (peak * 1e9):.2f} |"
            )
    for size in opts.sizes:
        if ratios[size]:
            print(f"{size} per-round DecoderLM/Llama ratios: " + ", ".join(f"{r:.3f}" for r in ratios[size]))
    if opts.markdown:
        rows = [
            "| model | size | params | tokens/s | DecoderLM / Llama | TFLOP/s | MFU | rounds |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for size in opts.sizes:
            for m in MODELS if ratios[size] else ():
                tok = [r["tok_s"] for r in results[size][m]]
                flops = statistics.median(tok) * info[size]["flops_tok"]
                ratio = spread(ratios[size], "{:.3f}") if m == "DecoderLM" else "1 (ref)"
                rows.append(
                    f"| {m} | {size} | {info[size]['params'] / 1e6:.2f}M | {spread(tok, '{:.0f}')} | {ratio} | "
                    f"{flops / 1e12:.4f} | {spread([t * info[size]['flops_tok'] / (peak * 1e9) for t in tok], '{:.2f}')} | {len(tok)} |"
                )
        table = "\n".join(rows)
        command = command_line(opts.markdown)
        write_fragment(
            opts.markdown,
            f"""### DecoderLM against LlamaForCausalLM, and MFU (`bench/decoder_lm.py`)

Training tokens/s of `DecoderLM` and a same-shape `LlamaForCausalLM` (same weights, identical
logits) under our `Trainer` (fp32, sdpa, fused AdamW, clip 1.0, batch {opts.batch} x {opts.seq}), paired rounds
in alternating order, rounds with foreign CPU load discarded; median (min–max). MFU: model FLOPs
(6N + 12·L·H·T per token) over the fp32 matmul peak measured in the same run ({peak:.1f} GFLOP/s).

Machine: {machine_line()}, {threads} threads. Command: `{command}`

{table}
""",
        )
    print(f"total {time.perf_counter() - start:.0f} s after set-up")

    if opts.profile:
        for size in opts.sizes:
            profile(size, opts, inits[size])


if __name__ == "__main__":
    main()
