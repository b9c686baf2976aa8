"""Launched by test_distributed.py: cycle-train a causal + seq2seq pair, save losses and weights."""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
from cycle_helpers import DeterministicCycleTrainer, cycle_args, demo, tiny_causal, tiny_t5, tokenizer  # noqa: E402
from datasets import Dataset  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from trainformers import CycleTrainer  # noqa: E402

out, batch, accum, kind = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
args = cycle_args(
    out,
    output_dir=str(out / "run"),
    per_device_train_batch_size=batch,
    gradient_accumulation_steps=accum,
    max_steps=3,
    learning_rate=1e-2,
    save_strategy="steps",
    save_steps=3,
    ddp_backend="gloo",
    per_device_eval_batch_size=3,
)
cls = DeterministicCycleTrainer if kind == "deterministic" else CycleTrainer
# the comparison of weights runs in float64: see test_cycle_two_processes_match_one
dtype = torch.float64 if kind == "deterministic" else torch.float32
d = demo()
trainer = cls(
    args,
    models={"A": tiny_causal(0).to(dtype), "B": tiny_t5(1).to(dtype)},
    tokenizers=tokenizer(),
    train_dataset_A=d.unpaired_A,
    train_dataset_B=d.unpaired_B,
    eval_dataset_A=Dataset.from_dict({"text": list(d.paired_eval["text_A"])}),
)
trainer.train()
metrics = trainer.evaluate()
if trainer.is_world_process_zero():
    weights = {}
    for side in "AB":
        model = trainer.models[side]
        for k, v in model.state_dict().items():
            if k not in ("lm_head.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight"):
                weights[f"{side}.{k}"] = v.contiguous()
    save_file(weights, str(out / "weights.safetensors"))
    rows = trainer.state.log_history
    (out / "result.json").write_text(
        json.dumps(
            {
                "loss_A": [r["loss_A"] for r in rows if "loss_A" in r],
                "loss_B": [r["loss_B"] for r in rows if "loss_B" in r],
                "eval_loss": metrics["eval_loss"],
                "world": trainer.accelerator.num_processes,
                "step": trainer.state.global_step,
            }
        )
    )
trainer.accelerator.end_training()
sys.stdout.flush()
os._exit(0)  # skip interpreter teardown: gloo's threads sometimes abort there
