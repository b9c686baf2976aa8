"""MACCT's memory at a real size: peak RSS of two full models vs one frozen base with two LoRA adapters.

A Llama-shaped base of SmolLM2-360M's dimensions (hidden 960, intermediate 2560, 32 layers, 15
heads, 5 KV heads, vocabulary 49,152, tied embeddings; 361.8M parameters), random init from
config (no Hub), trained by `CycleTrainer` the way users call it, three rows:

- `two`: two full fp32 models, ``models={"A": m1, "B": m2}`` (each with its own AdamW);
- `macct`: one fp32 base, ``peft_configs=LoraConfig(r=16, target_modules="all-linear")``: adapters A and B;
- `macct_bf16`: the same with the frozen base built in bf16 (``_from_config(config, dtype=torch.bfloat16)``,
  as ``from_pretrained(..., dtype=torch.bfloat16)`` loads it: no fp32 copy ever exists; peft keeps the
  adapters, their gradients and AdamW state in fp32).

Same batch and lengths everywhere: batch 2 per direction, real texts of 32 tokens, exactly 16
generated tokens (``min_new_tokens = max_new_tokens``), default optimizer (fused AdamW), a few
cycle steps (each trains both directions). Every (row, round) runs in its own process: "peak" is
that process's ``ru_maxrss`` (model building included), "models" its RSS once the model(s) are
built, before `CycleTrainer`. Beside the RSS each child reports torch's own accounting, taken just
before every optimizer step: bytes of parameters (unique storages, so a second copy of the base
would show), of gradients, and of optimizer state, with the count of frozen parameters holding a
gradient or optimizer state (must be 0). Malloc: `--malloc` lists the `cpu_malloc` policies to run
every row under (passed in `CycleTrainingArguments`, applied when `train()` starts): `system` is
glibc as a Python API user gets it, `memory` returns freed blocks of 128 KiB or more, `speed` (the
CLI's default) keeps up to 2 GiB of freed heap.

"What MACCT fits in the two-model footprint": MACCT rows also run at `--fit-layers` (default 16)
layers; peak = a + b x parameters through the two sizes (same width, so the same per-layer
activations) gives the base size whose MACCT peak equals the two-model peak at 32 layers.

    .venv/bin/python bench/macct_memory.py                      # 2 rounds: about an hour on 2 cores, peak ~11 GB
    .venv/bin/python bench/macct_memory.py --layers 4 --fit-layers 2 --rounds 1 --steps 1   # smoke test, 1 minute
    .venv/bin/python bench/macct_memory.py --markdown /tmp/macct_memory.md
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

from _machine import command_line, machine_line, spread, vm_mb, write_fragment  # bench/_machine.py

ROWS = ("two", "macct", "macct_bf16")
LABELS = {
    "two": "two full models, fp32",
    "macct": "MACCT, fp32 base + LoRA A/B",
    "macct_bf16": "MACCT, bf16 base + fp32 LoRA A/B",
}
# 200 pseudo-words of two consonant-vowel syllables; the tokenizer learns each as one token
WORDS = [a + b + c + d for a in "bdfgklmnprstvz" for b in "aeiou" for c in "bdfgklmnprstvz" for d in "aeiou"][::23][
    :200
]


def smollm2_360m(vocab: int, layers: int):  # -> LlamaConfig
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=960,
        intermediate_size=2560,
        num_hidden_layers=layers,
        num_attention_heads=15,
        num_key_value_heads=5,
        max_position_embeddings=8192,
        rope_theta=100000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
    )


def texts(n: int, length: int, seed: int) -> list[str]:
    import random

    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(length)) for _ in range(n)]


def storage_bytes(tensors) -> int:
    """Bytes of the distinct storages behind `tensors` (views and shared weights counted once)."""
    seen: dict[int, int] = {}
    for t in tensors:
        s = t.untyped_storage()
        seen[s.data_ptr()] = s.nbytes()
    return sum(seen.values())


def child(row: str, layers: int, malloc: str, opts: argparse.Namespace) -> dict:
    """One measurement in this process; returns its figures."""
    import torch

    torch.set_num_threads(opts.threads)
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import LlamaForCausalLM
    from transformers.utils import logging

    from trainformers import CycleTrainer, CycleTrainingArguments, TrainerCallback
    from trainformers.data import train_tokenizer

    logging.set_verbosity_error()
    corpus = {s: texts(64, opts.prompt_len, seed) for s, seed in (("A", 1), ("B", 2))}
    tok = train_tokenizer(corpus["A"] + corpus["B"], 1024, min_frequency=1)
    lengths = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in corpus["A"]]
    rss_start = vm_mb("VmRSS")
    config = smollm2_360m(49152, layers)
    config.eos_token_id, config.pad_token_id = tok.eos_token_id, tok.pad_token_id

    def build(seed: int, dtype=torch.float32):
        torch.manual_seed(seed)
        return LlamaForCausalLM._from_config(config, dtype=dtype)

    if row == "two":
        kw: dict = {"models": {"A": build(0), "B": build(1)}}
    else:
        base = build(0, torch.bfloat16 if row == "macct_bf16" else torch.float32)
        kw = {"models": base, "peft_configs": LoraConfig(r=16, lora_alpha=32, target_modules="all-linear")}
    params = sum(p.numel() for p in (kw["models"]["A"] if row == "two" else kw["models"]).parameters())
    rss_models = vm_mb("VmRSS")
    args = CycleTrainingArguments(
        output_dir=opts.workdir,
        overwrite_output_dir=True,
        max_steps=opts.steps,
        per_device_train_batch_size=opts.batch,
        learning_rate=1e-4,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        report_at_end=False,
        use_cpu=True,
        cpu_malloc=malloc,
        seed=0,
        gradient_checkpointing=opts.gradient_checkpointing,
        max_new_tokens_A=opts.new_tokens,
        max_new_tokens_B=opts.new_tokens,
        min_new_tokens_A=opts.new_tokens,
        min_new_tokens_B=opts.new_tokens,
    )
    trainer: CycleTrainer | None = None
    seen: dict[str, float] = {"rss_step_max": 0.0}
    accounts: list[dict] = []

    def account() -> dict:
        """torch's view of what is held, just before an optimizer step."""
        assert trainer is not None
        everything = {id(p): p for side in trainer.sides.values() for p in side.model.parameters()}
        params_all = list(everything.values())
        trainable = {id(p) for s in trainer.trained for p in trainer.sides[s].params}
        frozen = [p for p in params_all if id(p) not in trainable]
        state = [
            (p, v)
            for s in trainer.trained
            for p, st in trainer.sides[s].optimizer.state.items()
            for v in st.values()
            if torch.is_tensor(v)
        ]
        return {
            "param_mb": storage_bytes(params_all) / 2**20,
            "trainable_mb": storage_bytes([everything[i] for i in trainable]) / 2**20,
            "grad_mb": storage_bytes([p.grad for p in params_all if p.grad is not None]) / 2**20,
            "optimizer_mb": storage_bytes([v for _, v in state if v.dim() > 0]) / 2**20,
            "frozen_with_grad": sum(p.grad is not None for p in frozen),
            "frozen_with_state": sum(any(p is q for q, _ in state) for p in frozen),
            "rss_mb": vm_mb("VmRSS"),
        }

    class Watch(TrainerCallback):
        def on_train_begin(self, *a, **k):  # the kernels exist now (train() -> _prepare)
            assert trainer is not None
            for s in trainer.trained:
                kernel = trainer.sides[s].kernel
                step = kernel.step

                def wrapped(step=step):
                    accounts.append(account())
                    step()

                kernel.step = wrapped

        def on_step_end(self, *a, **k):
            seen["rss_step_max"] = max(seen["rss_step_max"], vm_mb("VmRSS"))

    trainer = CycleTrainer(
        args,
        tokenizers=tok,
        train_dataset_A=Dataset.from_dict({"text": corpus["A"]}),
        train_dataset_B=Dataset.from_dict({"text": corpus["B"]}),
        callbacks=[Watch()],
        **kw,
    )
    del kw
    rss_trainer = vm_mb("VmRSS")
    start = time.perf_counter()
    out = trainer.train()
    seconds = time.perf_counter() - start
    last = accounts[-1]
    return {
        "row": row,
        "layers": layers,
        "malloc": malloc,
        "params": params,
        "text_tokens": statistics.median(lengths),
        "rss_start_mb": rss_start,
        "rss_models_mb": rss_models,
        "rss_trainer_mb": rss_trainer,
        "rss_step_max_mb": seen["rss_step_max"],
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "train_s": seconds,
        "steps": out.global_step,
        "loss": out.training_loss,
        "accounts": accounts,
        **{k: max(a[k] for a in accounts) for k in last if k != "rss_mb"},
    }


def run_child(row: str, layers: int, malloc: str, opts: argparse.Namespace) -> dict:
    keep = ("--steps", "--batch", "--prompt-len", "--new-tokens", "--threads", "--workdir")
    cmd = [sys.executable, __file__, "--child", row, str(layers), malloc]
    for flag in keep:
        cmd += [flag, str(getattr(opts, flag[2:].replace("-", "_")))]
    if opts.gradient_checkpointing:
        cmd.append("--gradient-checkpointing")
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"{row} ({layers} layers): child failed\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares a, b of y = a + b x."""
    n = len(points)
    mx, my = sum(x for x, _ in points) / n, sum(y for _, y in points) / n
    b = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)
    return my - b * mx, b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", nargs="+", default=list(ROWS), choices=ROWS)
    parser.add_argument("--layers", type=int, default=32, help="SmolLM2-360M has 32")
    parser.add_argument("--fit-layers", type=int, nargs="*", default=[8], help="extra MACCT sizes for the fit")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2, help="cycle steps (each trains A and B)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--prompt-len", type=int, default=32, help="words (= tokens) of each real text")
    parser.add_argument("--new-tokens", type=int, default=16, help="exactly this many generated tokens")
    parser.add_argument(
        "--threads", type=int, default=1, help="memory does not depend on it; 1 is faster on a shared machine"
    )
    parser.add_argument(
        "--malloc", nargs="+", default=["system", "memory"], choices=("system", "memory", "speed"), help="cpu_malloc"
    )
    parser.add_argument("--workdir", default="/tmp/macct_memory_run")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="in every row")
    parser.add_argument("--markdown", help="write the docs/benchmarks.md fragment here")
    parser.add_argument("--child", nargs=3, metavar=("ROW", "LAYERS", "MALLOC"), help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.child:
        print(json.dumps(child(opts.child[0], int(opts.child[1]), opts.child[2], opts)))
        return

    import peft

    machine = f"{machine_line()}, peft {peft.__version__}, {opts.threads} torch threads"
    print(f"machine: {machine}", file=sys.stderr, flush=True)
    jobs = [(row, opts.layers, m) for m in opts.malloc for row in opts.rows]
    jobs += [
        (row, n, m)
        for m in opts.malloc
        for n in opts.fit_layers
        for row in opts.rows
        if row != "two" and n != opts.layers
    ]
    results: dict[tuple[str, int, str], list[dict]] = {}
    start = time.perf_counter()
    for r in range(opts.rounds):
        for job in jobs if r % 2 == 0 else reversed(jobs):
            res = run_child(*job, opts)
            results.setdefault(job, []).append(res)
            print(
                f"# round {r} {job}: peak {res['peak_mb']:.0f} MB, models {res['rss_models_mb']:.0f} MB, "
                f"params {res['param_mb']:.0f} MB, grads {res['grad_mb']:.0f} MB, optimizer {res['optimizer_mb']:.0f} MB, "
                f"{res['train_s']:.0f} s",
                file=sys.stderr,
                flush=True,
            )
    minutes = (time.perf_counter() - start) / 60

    def med(job: tuple[str, int, str], key: str) -> float:
        return statistics.median(x[key] for x in results[job])

    def cell(job: tuple[str, int, str], key: str) -> str:
        return spread([x[key] for x in results[job]], "{:.0f}")

    size = opts.layers
    lines = [
        "| setting | cpu_malloc | layers | base params | RSS of the model(s) MB | peak RSS MB | vs two models "
        "| params MB | grads MB | optimizer MB | frozen with grad / state | rounds |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for job in sorted(results, key=lambda k: (opts.malloc.index(k[2]), -k[1], ROWS.index(k[0]))):
        row, layers, malloc = job
        two = ("two", size, malloc)
        ratio = (
            spread([a["peak_mb"] / b["peak_mb"] for a, b in zip(results[job], results[two])], "{:.3f}")
            if two in results and layers == size
            else ""
        )
        first = results[job][0]
        lines.append(
            f"| {LABELS[row]} | {malloc} | {layers} | {first['params'] / 1e6:.1f}M | {cell(job, 'rss_models_mb')} | "
            f"{cell(job, 'peak_mb')} | {ratio} | {cell(job, 'param_mb')} | "
            f"{cell(job, 'grad_mb')} | {cell(job, 'optimizer_mb')} | "
            f"{first['frozen_with_grad']} / {first['frozen_with_state']} | {len(results[job])} |"
        )
    fits = []
    for malloc in opts.malloc:
        two = ("two", size, malloc)
        if two not in results:
            continue
        target = med(two, "peak_mb")
        for row in ("macct", "macct_bf16"):
            sizes = sorted(n for r, n, m in results if r == row and m == malloc)
            if len(sizes) < 2:
                continue
            a, b = fit([(results[(row, n, malloc)][0]["params"], med((row, n, malloc), "peak_mb")) for n in sizes])
            fits.append(
                f"- {LABELS[row]}, cpu_malloc={malloc}: peak ≈ {a:.0f} MB + {b * 1e6:.2f} MB per million base "
                f"parameters (through {', '.join(map(str, sizes))} layers), so the two-model peak of {target:.0f} MB "
                f"holds a **{(target - a) / b / 1e9:.2f}B**-parameter base "
                f"({(target - a) / b / results[two][0]['params']:.1f}× the two-model size)."
            )
    first = next(iter(results.values()))[0]
    checkpointing = ", with `gradient_checkpointing` in every row" if opts.gradient_checkpointing else ""
    text = f"""### MACCT memory at a real size (`bench/macct_memory.py`{checkpointing})

`CycleTrainer` on a random-init Llama of SmolLM2-360M's dimensions (hidden 960, 32 layers, vocabulary
49,152, tied embeddings): two full fp32 models against one frozen base with LoRA adapters A and B
(r=16, all-linear), fp32 and bf16 base (built in bf16, as `from_pretrained(..., dtype=torch.bfloat16)`
loads it). Every row under each `cpu_malloc` policy: `system` (glibc untouched, as a Python user gets
it) and `memory` (freed blocks of 128 KiB or more go back to the system). Batch {opts.batch} per direction, real texts of
{first["text_tokens"]:.0f} tokens, exactly {opts.new_tokens} generated tokens, {opts.steps} cycle steps
(both directions each), fused AdamW; each run in its own process. Peak = the process's `ru_maxrss`
(model building included); "RSS of the model(s)" = after building them, before `CycleTrainer`. Params,
grads and optimizer: torch's accounting (distinct storages) just before the optimizer steps, largest
seen. Median (min–max) over {opts.rounds} rounds; took {minutes:.0f} min.

Machine: {machine}. Command: `{command_line(opts.markdown)}`

{chr(10).join(lines)}

{chr(10).join(fits)}
"""
    print(text)
    write_fragment(opts.markdown, text)


if __name__ == "__main__":
    main()
