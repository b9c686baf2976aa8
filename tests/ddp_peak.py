"""Launched by test_memory_line.py: rank 1 holds 600 MiB more than rank 0; every rank's logged peak
must be the larger one (`memory.peak_memory_mb_of_ranks`)."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import torch  # noqa: E402
from conftest import PadCollator, lm_rows, make_args, tiny_llama  # noqa: E402

from trainformers import Trainer  # noqa: E402
from trainformers.memory import peak_memory_mb  # noqa: E402

out = Path(sys.argv[1])
trainer = Trainer(
    model=tiny_llama(),
    args=make_args(out, max_steps=2, ddp_backend="gloo", save_strategy="no"),
    train_dataset=lm_rows(16),
    data_collator=PadCollator(),
)
rank = trainer.accelerator.process_index
if rank == 1:
    ballast = torch.ones(600 * 2**20 // 4)  # touched: resident, and in this rank's peak from now on
result = trainer.train()
rows = [r["peak_memory_mb"] for r in trainer.state.log_history if "peak_memory_mb" in r]
(out / f"rank{rank}.json").write_text(
    json.dumps(
        {"own": peak_memory_mb(torch.device("cpu")), "rows": rows, "train": result.metrics["train_peak_memory_mb"]}
    )
)
