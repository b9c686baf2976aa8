"""Evaluation memory: peak RSS and time of `Trainer.evaluate()` for an eval set of N and 4N rows.

A Llama-shaped causal LM from config (random init, fp32, hidden 64, 2 layers, vocab 4,096 by
default), eval rows of random length between seq/2 and seq tokens (ragged batches of 8, so the
kept outputs need padding), four settings:

- `loss_only`: `prediction_loss_only=True` (compute_metrics set, not called): only the two loss
  sums are kept; the peak must not grow with the set;
- `argmax`: compute_metrics with `preprocess_logits_for_metrics=argmax`, as HF recommends for
  causal LMs: the kept outputs are token ids (rows x seq x 8 bytes), and so is the growth;
- `full`: compute_metrics on the full logits (rows x seq x vocab x 4 bytes): grows linearly;
- `full_fold`: `full` with the concatenation as it was before (fold `nested_concat` over the
  batches, then `nested_numpify`), patched in, for the before/after comparison.

Each (setting, rows) runs in a fresh subprocess, so peaks don't mix: it builds the model and data,
evaluates 8 rows once (warm-up), resets the peak (`/proc/self/clear_refs`), then times
`evaluate()` and reads VmHWM - VmRSS-before ("peak growth"). "stored" is the size of the outputs
the settings must keep (the predictions and the labels), computed, not measured. The concatenation
alone is timed too, in the parent, on synthetic per-batch logits of the `full` shape: the fold
against `trainformers.evaluation.concat_outputs` (one allocation). Median (min–max) over
`--repeats` subprocesses; "load" is the CPU other processes used meanwhile (timings with load
above ~0.25 cores are unreliable; memory is not affected).

The children run with `MALLOC_MMAP_THRESHOLD_=131072` (glibc's initial value, pinned): with
glibc's default dynamic threshold, freed 16 MB logits blocks raise the threshold and later ones
come from a heap that is not returned, a one-off growth of ~12 MB between 32 and 128 rows that
then stays flat (512 rows: the same) - an allocator effect, not kept outputs.
`--glibc-defaults` measures without the pin.

    .venv/bin/python bench/eval_memory.py                        # about 3 minutes on 2 quiet cores
    .venv/bin/python bench/eval_memory.py --rows 32 --repeats 1  # a smoke test
    .venv/bin/python bench/eval_memory.py --markdown /tmp/eval_memory.md
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from functools import reduce

import numpy as np
import torch
from _machine import (  # bench/_machine.py
    Load,
    command_line,
    machine_line,
    spread,
    vm_mb,
    write_fragment,
)

SETTINGS = ("loss_only", "argmax", "full", "full_fold")
BATCH = 8


def eval_rows(n: int, seq: int, vocab: int) -> list[dict[str, list[int]]]:
    g = torch.Generator().manual_seed(n)
    lengths = torch.randint(seq // 2, seq + 1, (n,), generator=g).tolist()
    return [{"input_ids": (ids := torch.randint(3, vocab, (k,), generator=g).tolist()), "labels": ids} for k in lengths]


def fold(parts: list) -> object:
    """The concatenation before: `nested_concat` batch by batch (copies all kept so far each time)."""
    from transformers.trainer_pt_utils import nested_concat, nested_numpify

    joined = reduce(lambda a, b: nested_concat(a, b, padding_index=-100), parts)
    parts.clear()
    return nested_numpify(joined)


def child(setting: str, rows: int, seq: int, vocab: int) -> dict:
    """One measurement, in its own process."""
    import tempfile

    from transformers import LlamaConfig, LlamaForCausalLM

    import trainformers
    from trainformers import evaluation

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=seq,
        tie_word_embeddings=True,
        use_cache=False,
        attn_implementation="sdpa",
        pad_token_id=0,
    )
    model = LlamaForCausalLM(config)
    if setting == "full_fold":
        evaluation.concat_outputs = lambda parts, padding_index=-100, to_numpy=True: fold(parts)

    def metrics(pred):  # touches every kept value, as a real metric would
        return {"mean_pred": float(np.mean(pred.predictions)), "n_labels": int((pred.label_ids != -100).sum())}

    out = tempfile.mkdtemp(prefix="eval_memory_")  # the JSONL log goes there
    args = trainformers.TrainingArguments(
        output_dir=out,
        per_device_eval_batch_size=BATCH,
        report_to="none",
        disable_tqdm=True,
        prediction_loss_only=setting == "loss_only",
        report_at_end=False,
    )
    trainer = trainformers.Trainer(
        model,
        args,
        data_collator=_pad,
        compute_metrics=metrics,
        preprocess_logits_for_metrics=(lambda logits, labels: logits.argmax(-1)) if setting == "argmax" else None,
    )
    data = eval_rows(rows, seq, vocab)
    trainer.evaluate(eval_rows(BATCH, seq, vocab))  # warm-up: first-call allocations out of the peak
    before = vm_mb("VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM := VmRSS now
        reset = True
    except OSError:
        reset = False
    load = Load()
    start = time.perf_counter()
    result = trainer.evaluate(data)
    seconds = time.perf_counter() - start
    peak = vm_mb("VmHWM")
    shutil.rmtree(out, ignore_errors=True)
    positions = sum(len(r["input_ids"]) for r in data)
    widest = max(len(r["input_ids"]) for r in data)
    stored = {"loss_only": 0, "argmax": rows * widest * 8 * 2}.get(setting, rows * widest * (vocab * 4 + 8))
    return {
        "growth_mb": peak - before,
        "peak_reset": reset,
        "seconds": seconds,
        "load": load.foreign(),
        "stored_mb": stored / 2**20,
        "positions": positions,
        "eval_loss": result["eval_loss"],
    }


def _pad(features: list[dict]) -> dict[str, torch.Tensor]:
    """Right-pad input_ids with 0 and labels with -100."""
    width = max(len(f["input_ids"]) for f in features)
    ids = [f["input_ids"] + [0] * (width - len(f["input_ids"])) for f in features]
    labels = [f["labels"] + [-100] * (width - len(f["labels"])) for f in features]
    mask = [[1] * len(f["input_ids"]) + [0] * (width - len(f["input_ids"])) for f in features]
    return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask), "labels": torch.tensor(labels)}


def concat_times(rows: int, seq: int, vocab: int) -> tuple[float, float]:
    """Seconds to join `rows` rows of per-batch full logits: the fold, then the single allocation."""
    from trainformers.evaluation import concat_outputs

    data = eval_rows(rows, seq, vocab)
    widths = [max(len(r["input_ids"]) for r in data[i : i + BATCH]) for i in range(0, rows, BATCH)]
    g = torch.Generator().manual_seed(0)
    times = []
    for join in (fold, concat_outputs):
        parts = [torch.randn(min(BATCH, rows - i * BATCH), w, vocab, generator=g) for i, w in enumerate(widths)]
        start = time.perf_counter()
        joined = join(parts)
        times.append(time.perf_counter() - start)
        del joined
    return times[0], times[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=64, help="N: the small eval set; the large one is 4N")
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS)
    parser.add_argument("--glibc-defaults", action="store_true", help="don't pin the mmap threshold in the children")
    parser.add_argument("--markdown", help="write the docs/benchmarks.md fragment here")
    parser.add_argument("--child", nargs=2, metavar=("SETTING", "ROWS"), help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.child:
        from transformers.utils import logging

        logging.set_verbosity_error()
        print(json.dumps(child(opts.child[0], int(opts.child[1]), opts.seq, opts.vocab)))
        return

    env = dict(os.environ)
    if not opts.glibc_defaults:
        env["MALLOC_MMAP_THRESHOLD_"] = "131072"
    malloc = "glibc defaults" if opts.glibc_defaults else "MALLOC_MMAP_THRESHOLD_=131072 (pinned)"
    print(f"machine: {machine_line()}; {torch.get_num_threads()} threads; malloc: {malloc}", flush=True)
    sizes = (opts.rows, 4 * opts.rows)
    results: dict[tuple[str, int], list[dict]] = {}
    for repeat in range(opts.repeats):
        for setting in opts.settings:
            for rows in sizes:
                cmd = [
                    sys.executable,
                    __file__,
                    "--child",
                    setting,
                    str(rows),
                    "--seq",
                    str(opts.seq),
                    "--vocab",
                    str(opts.vocab),
                ]
                done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
                if done.returncode != 0:
                    sys.exit(f"{setting} {rows}: child failed\n{done.stderr[-3000:]}")
                r = json.loads(done.stdout.strip().splitlines()[-1])
                results.setdefault((setting, rows), []).append(r)
                print(
                    f"  {repeat + 1}/{opts.repeats} {setting:9s} {rows:5d} rows: peak +{r['growth_mb']:.1f} MB, "
                    f"{r['seconds']:.2f} s, stored {r['stored_mb']:.1f} MB, load {r['load']:.2f}",
                    flush=True,
                )
    if not all(r["peak_reset"] for rs in results.values() for r in rs):
        print("note: /proc/self/clear_refs was not writable; growth is measured against the start-up peak")

    lines = [
        "| setting | rows | stored outputs, MB | peak RSS growth, MB | growth 4N / N | evaluate(), s | load, cores |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for setting in opts.settings:
        small = [r["growth_mb"] for r in results[(setting, sizes[0])]]
        for rows in sizes:
            rs = results[(setting, rows)]
            growth = [r["growth_mb"] for r in rs]
            ratio = spread([g / max(s, 1.0) for g, s in zip(growth, small)], "{:.1f}") if rows == sizes[1] else ""
            lines.append(
                f"| {setting} | {rows} | {rs[0]['stored_mb']:.1f} | {spread(growth, '{:.1f}')} | {ratio} "
                f"| {spread([r['seconds'] for r in rs], '{:.2f}')} | {spread([r['load'] for r in rs], '{:.2f}')} |"
            )
    table = "\n".join(lines)
    concat_lines = ["| rows (full logits) | fold of nested_concat, s | one allocation, s |", "|---:|---:|---:|"]
    for rows in sizes:
        pairs = [concat_times(rows, opts.seq, opts.vocab) for _ in range(opts.repeats)]
        concat_lines.append(
            f"| {rows} | {spread([p[0] for p in pairs], '{:.3f}')} | {spread([p[1] for p in pairs], '{:.3f}')} |"
        )
    concat_table = "\n".join(concat_lines)
    print(table, concat_table, sep="\n\n")
    command = command_line(opts.markdown)
    write_fragment(
        opts.markdown,
        f"""### Evaluation memory (`bench/eval_memory.py`)

Peak RSS growth and time of `Trainer.evaluate()` on eval sets of N and 4N rows (Llama from config,
hidden 64, 2 layers, vocab {opts.vocab}, rows of {opts.seq // 2}–{opts.seq} tokens, eval batch {BATCH}), each
run in a fresh process with the peak reset after a warm-up; median (min–max) over {opts.repeats} run(s).
`loss_only`: `prediction_loss_only=True`; `argmax`: compute_metrics with
`preprocess_logits_for_metrics=argmax`; `full`: compute_metrics on the full logits; `full_fold`:
`full` with the concatenation of before (a fold of `nested_concat`) patched in. "stored outputs"
is the computed size of what the setting must keep (predictions and labels). The second table
times the concatenation alone on the same shapes. Malloc in the children: {malloc}.

Machine: {machine_line()}, {torch.get_num_threads()} threads. Command: `{command}`

{table}

{concat_table}
""",
    )


if __name__ == "__main__":
    main()
