"""Launched by test_distributed.py: train the tiny LM with a given per-device batch, save weights and losses."""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from conftest import PadCollator, lm_rows, tiny_llama  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from trainformers import Trainer, TrainingArguments  # noqa: E402

out, batch, accum = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
args = TrainingArguments(
    output_dir=str(out / "run"),
    per_device_train_batch_size=batch,
    gradient_accumulation_steps=accum,
    max_steps=5,
    learning_rate=1e-2,
    logging_steps=1,
    save_strategy="steps",
    save_steps=5,
    report_to="none",
    disable_tqdm=True,
    seed=0,
    optim="adamw_torch",
    ddp_backend="gloo",
)
trainer = Trainer(tiny_llama(), args, data_collator=PadCollator(), train_dataset=lm_rows())
trainer.train()
metrics = trainer.evaluate(lm_rows(10, seed=5))
pred = trainer.predict(lm_rows(10, seed=5))
if trainer.is_world_process_zero():
    state = {k: v.contiguous() for k, v in trainer.accelerator.unwrap_model(trainer.model).state_dict().items()}
    save_file(
        {k: v for k, v in state.items() if k != "lm_head.weight" or "model.embed_tokens.weight" not in state},
        str(out / "weights.safetensors"),
    )
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    (out / "result.json").write_text(
        json.dumps(
            {
                "losses": losses,
                "eval_loss": metrics["eval_loss"],
                "world": trainer.accelerator.num_processes,
                "label_ids": pred.label_ids.tolist(),
                "argmax": pred.predictions.argmax(-1).tolist(),
            }
        )
    )
trainer.accelerator.end_training()  # trackers finished, process group destroyed
sys.stdout.flush()
os._exit(0)  # skip interpreter teardown: gloo's threads sometimes abort there ("terminate called ...")
