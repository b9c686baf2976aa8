"""The cycle-training demo: does back-translation on unpaired data beat the tiny paired set alone?

Task (`cycle.demo_data`): number words (domain A, "three hundred forty two") <-> digits (domain B,
"342"). A tiny paired training set, large unpaired A and B sets built from *other* numbers, and a
held-out paired eval set (numbers never seen in training).

`run_demo(DemoRunConfig())` trains two small causal models (model A: words -> digits, model B:
digits -> words) in two phases and measures held-out exact match after each:

1. **paired** (S = `paired_steps` optimizer steps): supervised on the paired set. It runs through
   `CycleTrainer` with ``warmup_paired_steps = max_steps = S``, the same code path as the warm-up
   of a real cycle run. Evaluated: "before".
2. **cycle** (K = `cycle_steps` more steps): a new `CycleTrainer` continues the *same* models on the
   unpaired sets (model B turns real digits into synthetic words that model A learns to map back,
   and vice versa), every `paired_mix_every`-th step a paired step. Evaluated: "after".

`run_baseline(cfg)` is the equal-budget control: supervised paired-only training for S + K steps.
Every step, paired or cycle, is one optimizer step of each model (budget in optimizer steps; a
cycle step costs more wall time because it generates).

Models: `LlamaForCausalLM` built from a small config, random init. (Not this library's
`DecoderLM`: `loop_utils.loss_shifts_labels` does not recognise it as a causal LM, so
`CycleTrainer` computes its loss on unshifted labels and it learns to copy its input; see
docs/cycle-demo.md.) Tokenizer: a byte-level BPE trained on domain-A texts only, so each number word
becomes one token while digits stay single bytes (``tokenizer="words"``); ``"chars"`` keeps
every text at byte level (no merges).

Everything is seeded by `DemoRunConfig.seed` (data draw, model init, data order, sampling), so a
run repeats exactly on the same machine and thread count.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .demo_data import CycleDemoData, DemoConfig, build_demo_data

__all__ = ["DemoRunConfig", "build_models", "build_tokenizer", "format_table", "run_baseline", "run_demo"]

DIRECTIONS = ("A_to_B", "B_to_A")
"""A_to_B: words -> digits (model A); B_to_A: digits -> words (model B)."""


def _default_data() -> DemoConfig:
    return DemoConfig(n_paired_train=64, n_unpaired_A=2000, n_unpaired_B=2000, n_eval=200, max_number=9999)


@dataclass
class DemoRunConfig:
    """Everything one demo run depends on. The defaults are the settings `trainformers cycle` runs
    (a few minutes on 2 CPU cores); `docs/cycle-demo.md` says how they were chosen.

    `data.seed` is ignored: the data are drawn with `seed` (see `data_config`).
    """

    # data and tokenizer
    data: DemoConfig = field(default_factory=_default_data)
    tokenizer: str = "words"  # "words": BPE on domain-A texts (whole words, single digits); "chars": bytes only
    vocab_size: int = 400  # "words" only: upper bound, BPE stops earlier when it runs out of merges
    # model (LlamaForCausalLM from a config, one per direction, same shape)
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 128
    # budget in optimizer steps (each step updates both models once)
    paired_steps: int = 200  # S: supervised steps on the paired set (phase 1)
    cycle_steps: int = 800  # K: cycle steps on the unpaired sets (phase 2)
    paired_mix_every: int = 4  # phase 2: every N-th step is a paired step instead (0: never)
    batch_size: int = 32
    learning_rate: float = 1e-3  # 3e-3 gave a weaker paired-only baseline (docs/cycle-demo.md)
    lr_scheduler_type: str = "constant"  # constant: phase 2 and the baseline's extra steps see the same lr
    weight_decay: float = 0.0
    # how each model generates synthetic sources in phase 2 (evaluation is always greedy)
    do_sample: bool = False  # greedy: sampling at temperature 1 hurt (docs/cycle-demo.md)
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    num_beams: int = 1
    min_new_tokens: int = 1
    max_new_tokens_ratio: float | None = None
    max_new_tokens_A: int = 8  # model A writes digits (at most 4 + EOS)
    max_new_tokens_B: int = 12  # model B writes words (at most 7 word tokens with "words")
    # run
    seed: int = 0
    eval_batch_size: int = 100
    output_dir: str | None = None  # None: a temporary directory, removed afterwards

    def data_config(self) -> DemoConfig:
        return dataclasses.replace(self.data, seed=self.seed)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["data"] = {k: v for k, v in out["data"].items() if k != "seed"}
        return out


def build_tokenizer(cfg: DemoRunConfig, data: CycleDemoData) -> Any:
    """The shared tokenizer of both models (see the module doc)."""
    from ..data import train_tokenizer

    if cfg.tokenizer == "words":
        return train_tokenizer(list(data.unpaired_A["text"]) + list(data.paired_train["text_A"]), cfg.vocab_size)
    if cfg.tokenizer == "chars":
        return train_tokenizer(["0"], 259)  # 3 specials + 256 bytes: no merges
    raise ValueError(f"DemoRunConfig.tokenizer={cfg.tokenizer!r} must be 'words' or 'chars'")


def build_models(cfg: DemoRunConfig, tokenizer: Any) -> dict[str, torch.nn.Module]:
    """Model A (words -> digits) and model B (digits -> words): two randomly initialised
    `LlamaForCausalLM`s of the same small shape, built from a config (nothing is downloaded)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    def one(offset: int) -> torch.nn.Module:
        torch.manual_seed(cfg.seed * 1000 + offset)
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=cfg.hidden_size,
            num_hidden_layers=cfg.num_layers,
            num_attention_heads=cfg.num_heads,
            num_key_value_heads=cfg.num_heads,
            intermediate_size=cfg.intermediate_size,
            max_position_embeddings=128,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        return LlamaForCausalLM(config)

    return {"A": one(1), "B": one(2)}


def _args(
    cfg: DemoRunConfig, output_dir: str, *, max_steps: int, warmup_paired_steps: int, paired_mix_every: int
) -> Any:
    from .config import CycleTrainingArguments

    return CycleTrainingArguments(
        output_dir=output_dir,
        overwrite_output_dir=True,
        max_steps=max_steps,
        warmup_paired_steps=warmup_paired_steps,
        paired_mix_every=paired_mix_every,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.eval_batch_size,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler_type,
        weight_decay=cfg.weight_decay,
        seed=cfg.seed,
        logging_steps=max(max_steps, 1),
        eval_strategy="no",
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        metrics=["exact_match", "chrf"],
        max_seq_length=64,
        do_sample_A=cfg.do_sample,
        do_sample_B=cfg.do_sample,
        temperature_A=cfg.temperature,
        temperature_B=cfg.temperature,
        top_p_A=cfg.top_p,
        top_p_B=cfg.top_p,
        top_k_A=cfg.top_k,
        top_k_B=cfg.top_k,
        num_beams_A=cfg.num_beams,
        num_beams_B=cfg.num_beams,
        min_new_tokens_A=cfg.min_new_tokens,
        min_new_tokens_B=cfg.min_new_tokens,
        max_new_tokens_ratio_A=cfg.max_new_tokens_ratio,
        max_new_tokens_ratio_B=cfg.max_new_tokens_ratio,
        max_new_tokens_A=cfg.max_new_tokens_A,
        max_new_tokens_B=cfg.max_new_tokens_B,
    )


def _train_and_eval(
    cfg: DemoRunConfig, data: CycleDemoData, tokenizer: Any, models: dict, output_dir: str, **steps: int
) -> tuple[dict[str, float], float]:
    """One CycleTrainer run on `models` (trained in place), then greedy held-out metrics.
    ``max_steps=0`` trains nothing (the models are only evaluated)."""
    from ..callbacks import PrinterCallback
    from .trainer import CycleTrainer

    train = steps["max_steps"] > 0
    if not train:  # CycleTrainingArguments needs max_steps > 0; the trainer is then only evaluated
        steps = {**steps, "max_steps": 1, "warmup_paired_steps": 0, "paired_mix_every": 0}
    trainer = CycleTrainer(
        _args(cfg, output_dir, **steps),
        models=models,
        tokenizers=tokenizer,
        train_dataset_A=data.unpaired_A,
        train_dataset_B=data.unpaired_B,
        paired_dataset=data.paired_train,
        paired_eval_dataset=data.paired_eval,
    )
    trainer.remove_callback(PrinterCallback)  # the demo prints its own table
    start = time.perf_counter()
    if train:
        trainer.train()
    seconds = time.perf_counter() - start
    raw = trainer.evaluate()
    metrics = {f"{d}_{m}": float(raw[f"eval_{d}_{m}"]) for d in DIRECTIONS for m in ("exact_match", "chrf")}
    return metrics, seconds


def _prepare(cfg: DemoRunConfig) -> tuple[CycleDemoData, Any, dict[str, torch.nn.Module]]:
    data = build_demo_data(cfg.data_config())
    tokenizer = build_tokenizer(cfg, data)
    return data, tokenizer, build_models(cfg, tokenizer)


class _OutputDir:
    def __init__(self, path: str | None) -> None:
        self.given = path

    def __enter__(self) -> str:
        self.path = self.given or tempfile.mkdtemp(prefix="trainformers-cycle-demo-")
        return self.path

    def __exit__(self, *exc: object) -> None:
        if self.given is None:
            shutil.rmtree(self.path, ignore_errors=True)


def run_demo(cfg: DemoRunConfig | None = None, echo: Callable[[str], Any] | None = print) -> dict[str, Any]:
    """Phase 1 (paired, S steps) then phase 2 (cycle, K steps) on the same two models.

    Returns ``{"before": metrics, "after": metrics, "seconds": {"paired": s, "cycle": s},
    "config": cfg.to_dict()}``, where metrics has ``A_to_B_exact_match``, ``B_to_A_exact_match``,
    ``A_to_B_chrf``, ``B_to_A_chrf`` (exact match in [0, 1], chrF in [0, 100]) on the held-out set.
    `echo` (None: silent) gets a short progress line per phase and the before/after table.
    """
    cfg = cfg or DemoRunConfig()
    say = echo or (lambda _: None)
    data, tokenizer, models = _prepare(cfg)
    d = cfg.data
    say(
        f"cycle demo: number words <-> digits; {d.n_paired_train} pairs, {d.n_unpaired_A}+{d.n_unpaired_B} unpaired, "
        f"{d.n_eval} held-out pairs; seed {cfg.seed}"
    )
    with _OutputDir(cfg.output_dir) as out:
        say(f"phase 1: {cfg.paired_steps} supervised steps on the paired set ...")
        before, t_paired = _train_and_eval(
            cfg,
            data,
            tokenizer,
            models,
            str(Path(out) / "paired"),
            max_steps=cfg.paired_steps,
            warmup_paired_steps=cfg.paired_steps,
            paired_mix_every=0,
        )
        say(f"phase 2: {cfg.cycle_steps} cycle steps on the unpaired sets ...")
        after, t_cycle = _train_and_eval(
            cfg,
            data,
            tokenizer,
            models,
            str(Path(out) / "cycle"),
            max_steps=cfg.cycle_steps,
            warmup_paired_steps=0,
            paired_mix_every=cfg.paired_mix_every,
        )
    result = {
        "before": before,
        "after": after,
        "seconds": {"paired": t_paired, "cycle": t_cycle},
        "config": cfg.to_dict(),
    }
    say(format_table(result))
    return result


def run_baseline(cfg: DemoRunConfig | None = None, echo: Callable[[str], Any] | None = None) -> dict[str, Any]:
    """The equal-budget control: supervised on the paired set alone for S + K optimizer steps.

    Returns ``{"metrics": {...same keys as run_demo...}, "seconds": s, "config": cfg.to_dict()}``.
    """
    cfg = cfg or DemoRunConfig()
    say = echo or (lambda _: None)
    data, tokenizer, models = _prepare(cfg)
    steps = cfg.paired_steps + cfg.cycle_steps
    with _OutputDir(cfg.output_dir) as out:
        say(f"baseline: {steps} supervised steps on the paired set ...")
        metrics, seconds = _train_and_eval(
            cfg,
            data,
            tokenizer,
            models,
            str(Path(out) / "baseline"),
            max_steps=steps,
            warmup_paired_steps=steps,
            paired_mix_every=0,
        )
    return {"metrics": metrics, "seconds": seconds, "config": cfg.to_dict()}


def format_table(result: dict[str, Any]) -> str:
    """The before/after table of a `run_demo` result (plain text)."""
    b, a, s = result["before"], result["after"], result["seconds"]
    rows = [
        ("held-out exact match", "before (paired)", "after (+cycle)"),
        ("A->B words->digits", f"{b['A_to_B_exact_match']:.3f}", f"{a['A_to_B_exact_match']:.3f}"),
        ("B->A digits->words", f"{b['B_to_A_exact_match']:.3f}", f"{a['B_to_A_exact_match']:.3f}"),
        ("train seconds", f"{s['paired']:.0f}", f"{s['cycle']:.0f}"),
    ]
    w0, w1 = max(len(r[0]) for r in rows), max(len(r[1]) for r in rows)
    return "\n".join(f"{r[0]:<{w0}}  {r[1]:>{w1}}  {r[2]:>14}" for r in rows)
