"""bf16 weights on a CPU: the three matmuls of a linear layer in training, bf16 against fp32.

A model loaded in bfloat16 (a frozen MACCT base, `from_pretrained(..., dtype=torch.bfloat16)`) runs
every matmul with its weights in bf16, autocast or not. Where the CPU has native bf16 (AVX512-BF16,
AMX, Arm BF16) that is fast; where it has not, oneDNN or torch emulate it. This times, for the
linear layers of SmolLM2-360M (hidden 960, MLP 2560, vocabulary 49,152) at 96 tokens (batch 2 x 48,
`bench/macct_memory.py`'s shapes):

- forward `x @ W.T`;
- the gradient of the inputs `g @ W` (needed even when W is frozen);
- the gradient of the weight `g.T @ x` (only when W trains);

each the median of `--reps` timed calls after a warm-up, fp32 and bf16 interleaved, and the ratio
bf16 / fp32 per matmul. `trainformers.accel.emulated_bf16_notice` quotes the range it finds.

    .venv/bin/python bench/cpu_bf16_matmul.py
    .venv/bin/python bench/cpu_bf16_matmul.py --markdown /tmp/cpu_bf16_matmul.md
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from _machine import command_line, machine_line, write_fragment  # bench/_machine.py

SHAPES = {  # name: (out features, in features)
    "attention q/o (960 x 960)": (960, 960),
    "MLP up (2560 x 960)": (2560, 960),
    "MLP down (960 x 2560)": (960, 2560),
    "LM head (49152 x 960)": (49152, 960),
}


def timed(fn, reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=96)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--markdown", help="write the docs/benchmarks.md fragment here")
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)
    from trainformers.accel import cpu_has_native_bf16

    native = cpu_has_native_bf16()
    rows, ratios = [], []
    for name, (out_f, in_f) in SHAPES.items():
        cells = {}
        for label, fn_of in (
            ("forward x @ W.T", lambda x, w, g: lambda: x @ w.t()),
            ("input grad g @ W", lambda x, w, g: lambda: g @ w),
            ("weight grad g.T @ x", lambda x, w, g: lambda: g.t() @ x),
        ):
            ms = {}
            for dtype in (torch.float32, torch.bfloat16):
                torch.manual_seed(0)
                x = torch.randn(opts.tokens, in_f, dtype=dtype)
                w = torch.randn(out_f, in_f, dtype=dtype)
                g = torch.randn(opts.tokens, out_f, dtype=dtype)
                reps = 1 if (dtype is torch.bfloat16 and out_f > 10000) else opts.reps
                ms[dtype] = timed(fn_of(x, w, g), reps)
            cells[label] = ms
            ratios.append(ms[torch.bfloat16] / ms[torch.float32])
            print(
                f"# {name} {label}: fp32 {ms[torch.float32]:.2f} ms, bf16 {ms[torch.bfloat16]:.2f} ms", file=sys.stderr
            )
        rows.append(
            f"| {name} | "
            + " | ".join(
                f"{m[torch.float32]:.2f} / {m[torch.bfloat16]:.2f} ({m[torch.bfloat16] / m[torch.float32]:.1f}×)"
                for m in cells.values()
            )
            + " |"
        )
    text = f"""### bf16 weights on this CPU (`bench/cpu_bf16_matmul.py`)

The matmuls of one linear layer in training at {opts.tokens} tokens, fp32 / bf16 ms (bf16 ÷ fp32),
median of {opts.reps} calls (1 for the bf16 LM head). Native bf16 matmul on this CPU:
**{"yes" if native else "no"}** (`trainformers.accel.cpu_has_native_bf16`). Without it every bf16
matmul is emulated: **{min(ratios):.0f}–{max(ratios):.0f}× slower** than fp32 here, the input
gradient (non-transposed weight) worst, which is why a bf16 MACCT base trains ~10× slower than an
fp32 one on this machine; both trainers say so in one line when the model holds bf16 weights.

Machine: {machine_line()}, {opts.threads} torch threads. Command: `{command_line(opts.markdown)}`

| layer | forward x @ W.T | input grad g @ W | weight grad g.T @ x |
|---|---|---|---|
{chr(10).join(rows)}
"""
    print(text)
    write_fragment(opts.markdown, text)


if __name__ == "__main__":
    main()
