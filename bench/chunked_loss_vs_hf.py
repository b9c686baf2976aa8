"""The chunked linear + cross-entropy vs HF Trainer: peak memory and tokens/s of a 128k-vocabulary LM.

A Llama-shaped model (vocab 128,256, hidden 256, 2 layers; untied head), random init, fp32, trained
on random tokens at batch 4 x 1,024 with fused AdamW, by HF `Trainer`, by ours (the chunked loss,
on by default) and by ours with `chunked_cross_entropy=False`. Each run is its own process (its
peak RSS is the run's alone), the libraries interleaved round by round. Then the largest batch
(powers of two) whose run stays under `--budget-gb` of peak RSS, for HF and for ours.

    .venv/bin/python bench/chunked_loss_vs_hf.py [--rounds 2] [--steps 4] [--budget-gb 6]

Prints a Markdown table (median and min-max over rounds) for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

VOCAB, HIDDEN, LAYERS, SEQ = 128_256, 256, 2, 1024
VARIANTS = ("hf", "ours", "ours_plain")


def one_run(variant: str, batch: int, steps: int) -> dict[str, float]:
    """Train `steps` steps in this process; peak RSS, median step time after the first, first loss."""
    import torch
    import transformers
    from datasets import Dataset

    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=4 * HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=SEQ,
        tie_word_embeddings=False,
    )
    model = transformers.LlamaForCausalLM(config)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, VOCAB, (batch * steps, SEQ), generator=g)
    data = Dataset.from_dict({"input_ids": ids.tolist(), "labels": ids.tolist()})
    if variant == "hf":
        lib, extra = transformers, {}
    else:
        import trainformers as lib  # type: ignore[no-redef]

        extra = {"chunked_cross_entropy": variant == "ours", "report_at_end": False}
    stamps: list[float] = []

    class Clock(transformers.TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
            stamps.append(time.perf_counter())

    args = lib.TrainingArguments(
        output_dir=tempfile.mkdtemp(),
        per_device_train_batch_size=batch,
        max_steps=steps,
        learning_rate=1e-3,
        optim="adamw_torch_fused",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        train_sampling_strategy="sequential",
        **extra,
    )
    trainer = lib.Trainer(model=model, args=args, train_dataset=data, callbacks=[Clock()])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    trainer.train()
    times = [b - a for a, b in zip([start, *stamps], stamps)][1:]  # the first step warms up
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    return {
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "before_mb": before,
        "tokens_per_s": batch * SEQ / statistics.median(times),
        "first_loss": losses[0],
    }


def run(variant: str, batch: int, steps: int) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, __file__, "--one", variant, "--batch", str(batch), "--steps", str(steps)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def largest_batch(variant: str, budget_mb: float, steps: int) -> tuple[int, float]:
    """The largest power-of-two batch whose peak RSS stays under the budget (0 if none), and that peak."""
    best, peak, batch = 0, 0.0, 1
    while batch <= 64:
        try:
            result = run(variant, batch, steps)
        except subprocess.CalledProcessError:  # killed for memory: past the budget for sure
            break
        if result["peak_mb"] > budget_mb:
            break
        best, peak, batch = batch, result["peak_mb"], batch * 2
    return best, peak


def spread(values: list[float], fmt: str) -> str:
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}–{max(values):{fmt}})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--budget-gb", type=float, default=6.0)
    parser.add_argument("--one", choices=VARIANTS)
    opts = parser.parse_args()
    if opts.one:
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
        print(json.dumps(one_run(opts.one, opts.batch, opts.steps)))
        return
    import torch
    import transformers

    import trainformers

    results: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    for _ in range(opts.rounds):
        for variant in VARIANTS:
            results[variant].append(run(variant, opts.batch, opts.steps))
    print(
        f"machine: {os.cpu_count()} cores, torch {torch.__version__}, transformers {transformers.__version__}, "
        f"trainformers {trainformers.__version__}; vocab {VOCAB}, hidden {HIDDEN}, {LAYERS} layers, batch "
        f"{opts.batch} x {SEQ}, fp32, adamw_torch_fused, {opts.steps} steps, {opts.rounds} rounds\n"
    )
    print("| trainer | peak RSS MB | RSS before train() MB | tokens/s | first loss |")
    print("|---|---|---|---|---|")
    for variant in VARIANTS:
        rows = results[variant]
        print(
            f"| {variant} | {spread([r['peak_mb'] for r in rows], '.0f')} | "
            f"{spread([r['before_mb'] for r in rows], '.0f')} | {spread([r['tokens_per_s'] for r in rows], '.0f')} | "
            f"{rows[0]['first_loss']:.4f} |"
        )
    hf, ours = results["hf"], results["ours"]
    peak = statistics.median(r["peak_mb"] for r in ours) / statistics.median(r["peak_mb"] for r in hf)
    speed = statistics.median(r["tokens_per_s"] for r in ours) / statistics.median(r["tokens_per_s"] for r in hf)
    print(f"\nours / HF: peak RSS {peak:.2f}x, tokens/s {speed:.2f}x")
    budget = opts.budget_gb * 1024
    print(f"\nlargest batch (x {SEQ} tokens) under {opts.budget_gb:g} GB peak RSS, 2 steps each:")
    for variant in ("hf", "ours"):
        batch, at = largest_batch(variant, budget, 2)
        print(f"- {variant}: batch {batch} (peak {at:.0f} MB)")


if __name__ == "__main__":
    main()
