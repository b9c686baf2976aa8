"""Launched by test_fsdp.py and test_deepspeed.py: train the tiny LM for 6 steps (checkpoints at 3 and 6), then resume a copy of
the run from checkpoint-3 in a second Trainer; write both runs' losses, weights and what the engine did."""

import json
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from conftest import PadCollator, lm_rows, tiny_llama  # noqa: E402

from trainformers import Trainer, TrainingArguments  # noqa: E402

out, batch, accum = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
extra = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}


def run(output_dir: Path, resume: str | None) -> Trainer:
    args = TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accum,
        max_steps=6,
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="steps",
        save_steps=3,
        report_to="none",
        disable_tqdm=True,
        seed=0,
        optim="adamw_torch",
        ddp_backend="gloo",
        accelerator_config={"even_batches": False},
        max_grad_norm=0.5,  # binding: the engines' clipping is compared too
        **extra,
    )
    trainer = Trainer(tiny_llama(), args, data_collator=PadCollator(), train_dataset=lm_rows())
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_model(str(output_dir / "final"))  # consolidated, whatever the engine
    return trainer


first = run(out / "run", None)
param = first.model.model.layers[0].mlp.up_proj.weight
local = param.to_local() if hasattr(param, "to_local") else param
sharding = {
    "type": type(first.model_wrapped).__name__,
    "layer_type": type(first.model.model.layers[0]).__name__,
    "local_rows": local.shape[0],
    "rows": param.shape[0],
    "zero_stage": getattr(first.model_wrapped, "zero_optimization_stage", lambda: None)(),
    "engine_steps": getattr(first.model_wrapped, "global_steps", None),
}
distributed_type = str(first.accelerator.distributed_type)  # Accelerate's state is the process's: read it now
first.accelerator.wait_for_everyone()
if first.is_world_process_zero():
    shutil.copytree(out / "run", out / "resumed", ignore=shutil.ignore_patterns("checkpoint-6", "final"))
first.accelerator.wait_for_everyone()
second = run(out / "resumed", str(out / "resumed" / "checkpoint-3"))
metrics = second.evaluate(lm_rows(10, seed=5))
# 5 batches of 2 rows: 3 on rank 0, 2 on rank 1 (even_batches=False: Accelerate does not pad them
# out); a sharded model's forward is collective, so the ranks must still step together
second.args.per_device_eval_batch_size = 2
uneven = second.evaluate(lm_rows(10, seed=5))
# a Trainer without the engine, built after it in the same process, gets none of it
plain = Trainer(tiny_llama(), TrainingArguments(output_dir=str(out / "plain"), report_to="none", ddp_backend="gloo"))
leaked = {"distributed_type": str(plain.accelerator.distributed_type)}
leaked.update({name: os.environ.get(name) for name in ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED")})
if first.is_world_process_zero():
    (out / "result.json").write_text(
        json.dumps(
            {
                "world": first.accelerator.num_processes,
                "distributed_type": distributed_type,
                "sharding": sharding,
                "losses": [r["loss"] for r in first.state.log_history if "loss" in r],
                "resumed_losses": [r["loss"] for r in second.state.log_history if "loss" in r],
                "eval_loss": metrics["eval_loss"],
                "uneven_eval_loss": uneven["eval_loss"],
                "after": leaked,
            }
        )
    )
second.accelerator.end_training()
sys.stdout.flush()
os._exit(0)  # skip interpreter teardown: gloo's threads sometimes abort there
