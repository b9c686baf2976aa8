"""Tiny random-init models and datasets shared by the tests (CPU, no network)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from datasets import Dataset

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# MFU needs a peak; measuring it (tests/test_flops.py does) would write ~/.cache from every worker
os.environ.setdefault("TRAINFORMERS_PEAK_TFLOPS", "0.1")
torch.set_num_threads(1)  # tests run two at a time (xdist) on two cores

VOCAB = 64


@pytest.fixture(scope="session", autouse=True)
def _trackio_stays_in_tmp(tmp_path_factory):
    """trackio keeps runs under TRACKIO_DIR (else HF_HOME/trackio), read once when first imported."""
    os.environ.setdefault("TRACKIO_DIR", str(tmp_path_factory.mktemp("trackio")))


def tiny_llama(seed: int = 0, vocab: int = VOCAB):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    return LlamaForCausalLM(config)


def lm_rows(n: int = 32, seed: int = 0, min_len: int = 4, max_len: int = 12, vocab: int = VOCAB) -> Dataset:
    """Variable-length token rows: label counts differ per micro-batch, which is what accumulation must get right."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        length = int(torch.randint(min_len, max_len + 1, (1,), generator=g))
        ids = torch.randint(3, vocab, (length,), generator=g).tolist()
        rows.append({"input_ids": ids, "attention_mask": [1] * length, "labels": ids})
    return Dataset.from_list(rows)


class PadCollator:
    """Right-pad input_ids/attention_mask with 0 and labels with -100 (no RNG, no tokenizer)."""

    def __call__(self, features):
        width = max(len(f["input_ids"]) for f in features)
        out = {"input_ids": [], "attention_mask": [], "labels": []}
        for f in features:
            pad = width - len(f["input_ids"])
            out["input_ids"].append(list(f["input_ids"]) + [0] * pad)
            out["attention_mask"].append(list(f["attention_mask"]) + [0] * pad)
            out["labels"].append(list(f["labels"]) + [-100] * pad)
        return {k: torch.tensor(v) for k, v in out.items()}


@pytest.fixture
def collator():
    return PadCollator()


def make_args(tmp_path, **overrides):
    from trainformers import TrainingArguments

    defaults = dict(
        output_dir=str(tmp_path / "run"),
        per_device_train_batch_size=4,
        per_device_eval_batch_size=4,
        learning_rate=1e-2,
        max_steps=6,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        report_at_end=False,  # rendering a PNG per train() would add ~1 min to the suite
        seed=0,
        optim="adamw_torch",
    )
    defaults.update(overrides)
    return TrainingArguments(**defaults)


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def read_losses(run_dir) -> list[tuple[int, float]]:
    import json
    from pathlib import Path

    rows = [json.loads(line) for line in (Path(run_dir) / "log.jsonl").read_text().splitlines() if line.strip()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


def accelerate_launch(script, *args, processes: int = 2, flags=()) -> None:
    """Run `script args...` under `accelerate launch` with `processes` CPU processes; fail with its stderr.

    On a machine without GPUs, --multi_gpu is accelerate's torchrun launcher; each process then
    finds no CUDA and joins a gloo group on the CPU (plain --cpu would need mpirun). `flags` go to
    accelerate launch; an engine flag (--use_fsdp) picks the torchrun launcher itself.
    """
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(Path(__file__).parents[1] / "src"),
    }
    mode = [] if any(f.startswith("--use_") for f in flags) else ["--multi_gpu" if processes > 1 else "--cpu"]
    launcher = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        *mode,
        *flags,
        "--num_processes",
        str(processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        "0",
    ]
    done = subprocess.run(
        [*launcher, str(script), *map(str, args)], check=False, capture_output=True, text=True, timeout=300, env=env
    )
    assert done.returncode == 0, done.stderr[-4000:]
