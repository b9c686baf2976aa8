"""The throughput row of tools/gpu_check.py: our Trainer against transformers.Trainer on one model.

A Llama-shaped `DecoderLM` of 336M parameters (hidden 1024, 24 layers, 16 heads, SwiGLU 2752,
vocabulary 32,000, tied embeddings, sdpa) trains in bf16 on random token blocks of 1024 under
each Trainer with the same arguments (fused AdamW, clip 1.0, linear schedule, batch 16). As in
bench/decoder_lm.py, a `TrainerCallback` timestamps every step's end (after a CUDA synchronize);
tokens/s counts the steps after the warm-up. Rounds alternate the order (ours first, then HF
first); each measurement builds the model afresh from the same seed. FLOPs per token are the
Trainer's own formula (trainformers.flops: 6N + 12·L·H·T with every parameter training), MFU is
over the device's dense bf16 peak (the H200 datasheet: 989 TFLOP/s). The CPU smoke test runs the
same at a toy size in fp32, where the figures only show that both Trainers ran.
"""

from __future__ import annotations

import gc
import math
import statistics
import tempfile
import time
from typing import Any

import torch
import transformers
from gpu_check_checks import CheckFailed, Context, token_blocks
from transformers import TrainerCallback, default_data_collator

import trainformers
from trainformers import DecoderLM, DecoderLMConfig
from trainformers.flops import model_flops, peak_tflops

# name -> DecoderLM shape and the run: (vocab, hidden, layers, heads, seq, batch, warm-up steps, timed steps, rounds)
SIZES = {
    "cuda": (32000, 1024, 24, 16, 1024, 16, 5, 15, 2),
    "cpu": (512, 64, 2, 4, 64, 8, 2, 6, 2),
}
MIN_RATIO = 0.9  # on a GPU our tokens/s below 0.9x HF's fails the row; the CPU smoke test only reports
LOSS_RTOL = 0.05  # the two Trainers' mean training losses on the same model and data


class StepClock(TrainerCallback):
    """perf_counter at each optimizer step's end, after the GPU finished the step."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.marks: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        if self.cuda:
            torch.cuda.synchronize()
        self.marks.append(time.perf_counter())


def build(cuda: bool) -> DecoderLM:
    vocab, hidden, layers, heads, seq = SIZES["cuda" if cuda else "cpu"][:5]
    config = DecoderLMConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=seq,
        dropout=0.0,
        tie_word_embeddings=True,
        use_cache=False,
        attn_implementation="sdpa",
    )
    torch.manual_seed(0)  # the same initial weights for every measurement
    with torch.device("cuda" if cuda else "cpu"):
        return DecoderLM(config)


def measure(which: str, cuda: bool, data: Any) -> tuple[float, float]:
    """Train a fresh model under `which` ("ours" or "hf"); (tokens/s after the warm-up, mean training loss)."""
    _, _, _, _, seq, batch, warmup, steps, _ = SIZES["cuda" if cuda else "cpu"]
    clock = StepClock(cuda)
    model = build(cuda)
    with tempfile.TemporaryDirectory() as out:
        common: dict[str, Any] = dict(
            output_dir=out,
            max_steps=warmup + steps,
            per_device_train_batch_size=batch,
            learning_rate=3e-4,
            optim="adamw_torch_fused",
            max_grad_norm=1.0,
            lr_scheduler_type="linear",
            weight_decay=0.0,
            logging_steps=1000,  # no per-step logging in either
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            seed=0,
            bf16=cuda,
            dataloader_pin_memory=cuda,
        )
        if which == "ours":
            trainer: Any = trainformers.Trainer(
                model=model,
                args=trainformers.TrainingArguments(**common, report_at_end=False),
                train_dataset=data,
                data_collator=default_data_collator,
                callbacks=[clock],
            )
        else:
            trainer = transformers.Trainer(
                model=model,
                args=transformers.TrainingArguments(**common),
                train_dataset=data,
                data_collator=default_data_collator,
                callbacks=[clock],
            )
        loss = trainer.train().training_loss
    del trainer, model
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    if len(clock.marks) != warmup + steps:
        raise CheckFailed(f"{which}: {len(clock.marks)} steps timed, expected {warmup + steps}")
    return steps * batch * seq / (clock.marks[-1] - clock.marks[warmup - 1]), float(loss)


def check_throughput(ctx: Context) -> tuple[str, str]:
    cuda = ctx.cuda
    vocab, _, _, _, seq, batch, warmup, steps, rounds = SIZES["cuda" if cuda else "cpu"]
    data = token_blocks(batch * (warmup + steps), seq, vocab=vocab)
    model = build(cuda)
    params = sum(p.numel() for p in model.parameters())
    flops_per_token = model_flops(model).per_batch(1, seq)  # what our Trainer logs MFU with
    del model
    dtype = torch.bfloat16 if cuda else torch.float32
    peak = peak_tflops(torch.device("cuda" if cuda else "cpu"), dtype)
    speed: dict[str, list[float]] = {"ours": [], "hf": []}
    losses: dict[str, list[float]] = {"ours": [], "hf": []}
    ratios = []
    for r in range(rounds):
        for which in ("ours", "hf") if r % 2 == 0 else ("hf", "ours"):
            tok_s, loss = measure(which, cuda, data)
            speed[which].append(tok_s)
            losses[which].append(loss)
        ratios.append(speed["ours"][-1] / speed["hf"][-1])

    def figure(which: str) -> tuple[float, float | None]:
        tok_s = statistics.median(speed[which])
        return tok_s, tok_s * flops_per_token / (peak.tflops * 1e12) if peak else None

    (ours, ours_mfu), (hf, hf_mfu) = figure("ours"), figure("hf")
    ratio = statistics.median(ratios)
    loss_ours, loss_hf = statistics.median(losses["ours"]), statistics.median(losses["hf"])

    def mfu(value: float | None) -> str:
        return f", MFU {value:.1%}" if value is not None else ""

    detail = (
        f"ours {ours:,.0f} tok/s{mfu(ours_mfu)}; HF {hf:,.0f} tok/s{mfu(hf_mfu)}; ours/HF {ratio:.2f} "
        f"({params / 1e6:.3g}M params, {'bf16' if cuda else 'fp32'}, batch {batch} x {seq}, {steps} timed steps, "
        f"{rounds} rounds; peak {peak.describe() if peak else 'off'}; loss ours {loss_ours:.3f}, HF {loss_hf:.3f})"
    )
    if not all(math.isfinite(x) for x in (loss_ours, loss_hf)) or abs(loss_ours - loss_hf) > LOSS_RTOL * loss_hf:
        raise CheckFailed(f"the two Trainers' losses disagree: {detail}")
    if cuda:
        if any(m is not None and not 0 < m <= 1 for m in (ours_mfu, hf_mfu)):
            raise CheckFailed(f"MFU outside (0, 1]: the FLOPs or the peak are wrong; {detail}")
        if ratio < MIN_RATIO:
            raise CheckFailed(f"ours/HF {ratio:.2f} < {MIN_RATIO}: {detail}")
    return "PASS", detail
