"""Launched by test_distributed.py as two torchrun "nodes" of one process each, whose output_dirs differ
as the disks of two machines would: with save_on_each_node, each node writes whole checkpoints to its
own disk, and each resumes from its own copy to the identical run."""

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from conftest import PadCollator, lm_rows, tiny_llama  # noqa: E402

from trainformers import Trainer, TrainingArguments  # noqa: E402

disk = Path(sys.argv[1]) / f"node{os.environ['GROUP_RANK']}"  # this machine's own disk


def run(output_dir: Path, resume: str | None) -> Trainer:
    args = TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=2,
        max_steps=4,
        learning_rate=1e-2,
        logging_steps=1,
        save_strategy="steps",
        save_steps=2,
        save_on_each_node=True,
        report_to="none",
        disable_tqdm=True,
        seed=0,
        optim="adamw_torch",
        ddp_backend="gloo",
        overwrite_output_dir=resume is None,
    )
    trainer = Trainer(tiny_llama(), args, data_collator=PadCollator(), train_dataset=lm_rows())
    trainer.train(resume_from_checkpoint=resume)
    return trainer


first = run(disk / "run", None)
weights = {k: v.clone() for k, v in first.accelerator.unwrap_model(first.model).state_dict().items()}
second = run(disk / "run", str(disk / "run" / "checkpoint-2"))
after = second.accelerator.unwrap_model(second.model).state_dict()
(disk / "result.json").write_text(
    json.dumps(
        {
            "rank": first.accelerator.process_index,
            "world": first.accelerator.num_processes,
            "should_save": first.args.should_save,
            "same_weights": all(bool((weights[k] == after[k]).all()) for k in weights),
        }
    )
)
second.accelerator.end_training()
sys.stdout.flush()
os._exit(0)
