"""A small run that kills itself with SIGKILL at a chosen write, for tests/test_faults.py.

    python tests/kill_run.py OUTPUT_DIR KILL_AT [--resume]

KILL_AT: `none`; `save:N` (kill -9 in the middle of writing checkpoint-N: after its model, while its
optimizer state is written); `renamed:N` (right after checkpoint-N was renamed into place);
`final` (while final/ is written, after the model, before the tokenizer). The weights the run ends
with go to OUTPUT_DIR/end.safetensors; its log rows are OUTPUT_DIR/log.jsonl.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from conftest import PadCollator, lm_rows, make_args, tiny_llama  # noqa: E402


def main() -> None:
    out, kill_at = Path(sys.argv[1]), sys.argv[2]
    resume = "--resume" in sys.argv
    from safetensors.torch import save_file

    from trainformers import Trainer
    from trainformers import checkpoint as ckpt

    def die() -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    if kill_at.startswith("save:"):
        real_save = ckpt.save_state

        def save_state(obj, path):
            if f"checkpoint-{kill_at[5:]}.tmp" in str(path) and Path(path).name.startswith("optimizer"):
                Path(path).write_bytes(b"half an optimizer")  # torn, as a kill mid-write leaves it
                die()
            real_save(obj, path)

        ckpt.save_state = save_state
    elif kill_at.startswith("renamed:"):
        real_rotate = ckpt.rotate_checkpoints

        def rotate(output_dir, limit, keep=None):
            if (Path(output_dir) / f"checkpoint-{kill_at[8:]}").is_dir():
                die()
            return real_rotate(output_dir, limit, keep)

        ckpt.rotate_checkpoints = rotate
    args = make_args(out.parent, output_dir=str(out), max_steps=8, save_strategy="steps", save_steps=2)
    trainer = Trainer(model=tiny_llama(), args=args, train_dataset=lm_rows(48), data_collator=PadCollator())
    trainer.train(resume_from_checkpoint=True if resume else None)
    if kill_at == "final":
        from trainformers.checkpoint import atomic_checkpoint

        with atomic_checkpoint(out / "final") as tmp:
            trainer.save_model(str(tmp))
            die()
    save_file({k: v.contiguous() for k, v in trainer.model.state_dict().items()}, str(out / "end.safetensors"))


if __name__ == "__main__":
    main()
