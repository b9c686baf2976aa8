"""Real (non-pad) tokens per second of training, for five ways of batching variable-length documents.

Synthetic corpus: 2,000 documents of random token ids (vocabulary 2,048), log-normal lengths
(mean about 100 tokens, EOS included; at most 512). It goes through the real pipeline: a
word-level tokenizer (`t17` -> id 17) and `trainformers.data.pretraining.tokenize_for_pretraining`.
Model: a random-init Llama (hidden 256, 4 layers, 4 heads, SwiGLU 704, vocab 2,048, sdpa, fp32,
4.2M parameters), trained with `trainformers.Trainer` (fused AdamW, lr 1e-3).

1. fixed-512: every document padded to 512 (HF tutorial `padding="max_length"`);
2. dynamic: padded to the longest document of the batch (multiple of 8);
3. grouped: dynamic padding, batches of similar lengths (`train_sampling_strategy="group_by_length"`);
4. packed: the library's default path, `tokenize_for_pretraining` with packing on and the collator
   `make_collator` picks for it: the token stream cut into blocks of 512, all full but the last (padded),
   so no token is dropped (attention crosses documents);
5. padding-free: `make_collator` with `padding_free`: a batch's documents bin-packed into rows of <= 512,
   `position_ids` restarting per document (`PaddingFreeCollator`; sdpa gets a block-diagonal mask,
   documents kept apart).

Every method sees about the same number of real tokens per optimizer step (`--tokens`, default
4,096): the batch size is `tokens / mean document length` documents, or `tokens / 512` blocks.
A measurement is one `Trainer.train()` of 1 + `--steps` steps from the same initial weights and
data order; the first step (warm-up) is not timed. Real tokens are counted at the model's input
(attention-mask sum, or every token when there is no mask); "real/fed" is their share of the
tokens the model processed. A round runs every method once from the same weights and data seed
(the seed and the order of methods change between rounds); a round is discarded and run again when other processes used more
than `--max-foreign` CPU cores during it (from /proc/stat minus this process's CPU time), or when
the 1-minute load average before it is far above our own threads. The table gives the median
(min–max) over `--rounds` valid rounds of real tokens/s and of the per-round ratio to fixed-512;
`--markdown PATH` writes it as the docs/benchmarks.md section.

    .venv/bin/python bench/padding.py                  # about 4 minutes on 2 cores
    .venv/bin/python bench/padding.py --rounds 5 --steps 4 --markdown /tmp/padding.md
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import tempfile
import time

import datasets
import numpy as np
import torch
from _machine import (  # bench/_machine.py
    CLK_TCK,
    busy_jiffies,
    command_line,
    machine_line,
    own_cpu,
    spread,
    write_fragment,
)
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, TrainerCallback

import trainformers
from trainformers import Trainer, TrainingArguments
from trainformers.config import DataSection
from trainformers.data import make_collator
from trainformers.data.collators import CausalLMCollator
from trainformers.data.pretraining import tokenize_for_pretraining

VOCAB, MAX_LEN, PAD, EOS = 2048, 512, 0, 1
METHODS = ("fixed-512", "dynamic", "grouped", "packed", "padding-free")
LABELS = {
    "fixed-512": 'padding to 512 (`padding="max_length"`)',
    "dynamic": "dynamic padding (multiple of 8)",
    "grouped": "length-grouped (`group_by_length`)",
    "packed": "packed into 512-token blocks (default)",
    "padding-free": "padding-free, bin-packed rows ≤ 512",
}


# ---- data ------------------------------------------------------------------------------------


def word_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"<pad>": PAD, "<eos>": EOS, **{f"t{i}": i for i in range(2, VOCAB)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>")


def synthetic_corpus(n_docs: int, seed: int = 0) -> datasets.Dataset:
    """Documents of random ids; lengths log-normal (sigma 1, mean ~100 with EOS), 1..511 + EOS."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(100) - 0.5, 1.0, n_docs).round().astype(int), 1, MAX_LEN - 1)
    docs = [" ".join(f"t{t}" for t in rng.integers(2, VOCAB, n)) for n in lengths]
    return datasets.Dataset.from_dict({"text": docs})


def build_rows(tokenizer, corpus: datasets.Dataset) -> dict[str, datasets.Dataset]:
    per_doc, stats = tokenize_for_pretraining(corpus, tokenizer, max_length=MAX_LEN, packing=False, name="docs")
    packed, packed_stats = tokenize_for_pretraining(corpus, tokenizer, max_length=MAX_LEN, name="packed")
    assert stats.truncated == 0, stats.summary()
    print(stats.summary())
    print(packed_stats.summary())
    return {"docs": per_doc, "packed": packed}


# ---- measuring -------------------------------------------------------------------------------


class Meter(TrainerCallback):
    """Real tokens fed to the model (forward pre-hook) and the time at each optimizer step's end."""

    def __init__(self, model: torch.nn.Module):
        self.tokens = self.fed = 0
        self.marks: list[tuple[float, int, int, float, int]] = []  # (wall, real, fed, own cpu s, busy jiffies)
        model.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs):
        mask, ids = kwargs.get("attention_mask"), kwargs["input_ids"]
        self.tokens += int(mask.sum()) if mask is not None else ids.numel()
        self.fed += ids.numel()

    def on_step_end(self, args, state, control, **kwargs):
        self.marks.append((time.perf_counter(), self.tokens, self.fed, own_cpu(), busy_jiffies()))


def make_model() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=256,
        intermediate_size=704,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=MAX_LEN,
        pad_token_id=PAD,
        eos_token_id=EOS,
        bos_token_id=EOS,
        use_cache=False,  # PaddingFreeCollator: a cache would switch per-document masking off
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(config)


def run_once(
    method: str, rows: dict[str, datasets.Dataset], tokenizer, batch: dict[str, int], steps: int, data_seed: int
) -> dict[str, float]:
    model = make_model()
    meter = Meter(model)
    dataset, collator, strategy = rows["docs"], CausalLMCollator(PAD, pad_to_multiple_of=8), "random"
    if method == "fixed-512":
        collator = CausalLMCollator(PAD, pad_to_multiple_of=MAX_LEN)  # every document <= 512: always 512 wide
    elif method == "grouped":
        strategy = "group_by_length"
    elif method == "packed":
        # what `trainformers train` uses: packing is the data section's default
        dataset, (collator, _) = rows["packed"], make_collator(DataSection(max_length=MAX_LEN), tokenizer)
    elif method == "padding-free":
        # bin-packed rows of <= 512, as `trainformers train` with data.padding_free
        collator, _ = make_collator(DataSection(max_length=MAX_LEN, padding_free=True), tokenizer)
    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            output_dir=out,
            max_steps=1 + steps,
            per_device_train_batch_size=batch[method],
            learning_rate=1e-3,
            logging_steps=1000,
            save_strategy="no",
            report_to="none",
            disable_tqdm=True,
            seed=0,
            data_seed=data_seed,
            dataloader_pin_memory=False,
            train_sampling_strategy=strategy,
        )
        trainer = Trainer(model=model, args=args, train_dataset=dataset, data_collator=collator, callbacks=[meter])
        with contextlib.redirect_stdout(io.StringIO()):  # the end-of-training metrics line
            trainer.train()
    (t0, n0, f0, c0, b0), (t1, n1, f1, c1, b1) = meter.marks[0], meter.marks[-1]
    wall = t1 - t0
    foreign = max((b1 - b0) / CLK_TCK - (c1 - c0), 0.0) / wall
    return {
        "tok_s": (n1 - n0) / wall,
        "foreign": foreign,
        "tokens_per_step": (n1 - n0) / steps,
        "s_per_step": wall / steps,
        "real_share": (n1 - n0) / (f1 - f0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="valid paired rounds (median over them)")
    parser.add_argument("--steps", type=int, default=3, help="timed optimizer steps per measurement (after 1 warm-up)")
    parser.add_argument("--tokens", type=int, default=4096, help="real tokens per optimizer step (approximately)")
    parser.add_argument("--docs", type=int, default=2000, help="documents in the synthetic corpus")
    parser.add_argument("--max-foreign", type=float, default=0.25, help="discard a round when others used more cores")
    parser.add_argument("--max-attempts", type=int, default=8, help="rounds tried at most")
    parser.add_argument("--markdown", help="write the docs/benchmarks.md section here")
    opts = parser.parse_args()

    threads = torch.get_num_threads()
    print(
        f"machine: {machine_line()}; {threads} threads; datasets {datasets.__version__}, "
        f"trainformers {trainformers.__version__}"
    )
    print(f"MALLOC_MMAP_THRESHOLD_={os.environ.get('MALLOC_MMAP_THRESHOLD_', 'unset')}")
    tokenizer = word_tokenizer()
    rows = build_rows(tokenizer, synthetic_corpus(opts.docs))
    lengths = [len(ids) for ids in rows["docs"]["input_ids"]]
    mean = statistics.fmean(lengths)
    docs_per_step = max(1, round(opts.tokens / mean))
    batch = {m: docs_per_step for m in METHODS} | {"packed": max(1, opts.tokens // MAX_LEN)}
    corpus = (
        f"{len(lengths)} synthetic documents, log-normal lengths (mean {mean:.0f} tokens with EOS, median "
        f"{statistics.median(lengths):.0f}, max {max(lengths)})"
    )
    print(f"documents: {corpus}; batch sizes: {batch}")
    model = make_model()
    n_params = sum(p.numel() for p in model.parameters()) / 1e6
    print(f"model: {n_params:.2f}M parameters")
    del model
    run_once("packed", rows, tokenizer, batch, 1, 0)  # warm-up of the process (imports, first kernels)

    results: dict[str, list[dict[str, float]]] = {m: [] for m in METHODS}
    start, attempt, discarded = time.perf_counter(), 0, 0
    while min(len(r) for r in results.values()) < opts.rounds and attempt < opts.max_attempts:
        load = os.getloadavg()[0]
        if load > threads + 1.5:
            print(f"round {attempt + 1}: load average {load:.2f} far above our {threads} threads; waiting 20 s")
            attempt += 1
            time.sleep(20)
            continue
        order = METHODS[attempt % len(METHODS) :] + METHODS[: attempt % len(METHODS)]
        attempt += 1
        # Paired: in a round every method starts from the same weights and data seed; rounds
        # differ in data seed, so the medians cover several batch compositions.
        measured = {m: run_once(m, rows, tokenizer, batch, opts.steps, data_seed=attempt) for m in order}
        worst = max(r["foreign"] for r in measured.values())
        verdict = "kept" if worst <= opts.max_foreign else "discarded"
        print(
            f"round {attempt} ({time.perf_counter() - start:.0f} s): foreign load up to {worst:.2f} cores, {verdict}; "
            + ", ".join(f"{m} {r['tok_s']:.0f}" for m, r in measured.items())
        )
        if verdict == "kept":
            for m, r in measured.items():
                results[m].append(r)
        else:
            discarded += 1

    n = min(len(r) for r in results.values())
    if n == 0:
        raise SystemExit("no round ran without foreign CPU load; run again on a quiet machine")
    lines = [
        "| method | batch | real tokens/step | real/fed tokens | s/step | real tokens/s | × fixed-512 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for m in METHODS:
        kept, base = results[m][:n], results["fixed-512"][:n]
        ratios = [r["tok_s"] / f["tok_s"] for r, f in zip(kept, base)]  # paired: per round
        lines.append(
            f"| {LABELS[m]} | {batch[m]} | {statistics.median(r['tokens_per_step'] for r in kept):.0f} | "
            f"{statistics.median(r['real_share'] for r in kept):.2f} | "
            f"{spread([r['s_per_step'] for r in kept], '{:.2f}')} | {spread([r['tok_s'] for r in kept], '{:.0f}')} | "
            f"{spread(ratios, '{:.2f}')} |"
        )
    table = "\n".join(lines)
    print(f"\nreal tokens/s, median (min–max) of {n} paired rounds ({opts.steps} timed steps each)\n{table}")
    print(f"total {time.perf_counter() - start:.0f} s after set-up")
    command = command_line(opts.markdown)
    write_fragment(
        opts.markdown,
        f"""### Padding, packing and padding-free (`bench/padding.py`)

Real (non-pad) tokens per second of training with our `Trainer` on variable-length documents:
{corpus}, through `tokenize_for_pretraining`.
A {n_params:.2f}M-parameter Llama (hidden 256, 4 layers, sdpa, fp32, fused AdamW), about
{opts.tokens} real tokens per optimizer step. "Packed" is the default path (blocks of 512, the
last one shorter and padded: no token dropped); "padding-free" keeps documents apart.
Median (min–max) over {n} paired round(s) of {opts.steps} timed step(s) after a warm-up, the
ratio to fixed-512 taken within each round; rounds with foreign CPU load above
{opts.max_foreign} cores discarded ({discarded} were).

Machine: {machine_line()}, {threads} threads. Command: `{command}`

{table}
""",
    )


if __name__ == "__main__":
    main()
