"""What Hugging Face's example scripts ask `TrainingArguments` about the process they run in.

`should_log`, `process_index`, `main_process_first()`, ... as in `transformers.TrainingArguments`,
read from the launcher's environment (`RANK`, `LOCAL_RANK`, `WORLD_SIZE`, as torchrun and
`accelerate launch` set them) or from torch.distributed once it is up. This module never starts
the distributed state itself: the trainer's Accelerator does (`accel.build_accelerator`), with the
settings of the run.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import torch


def _distributed() -> Any:
    dist = torch.distributed
    return dist if dist.is_available() and dist.is_initialized() else None


class ProcessInfo:
    """The process properties of HF's `TrainingArguments` (mixed into ours)."""

    use_cpu: bool
    local_rank: int
    log_level: str
    log_level_replica: str
    log_on_each_node: bool
    save_on_each_node: bool
    ddp_backend: str | None
    ddp_timeout: int

    @property
    def process_index(self) -> int:
        """This process's rank among all processes (0 without a launcher)."""
        dist = _distributed()
        return dist.get_rank() if dist is not None else int(os.environ.get("RANK", 0))

    @property
    def local_process_index(self) -> int:
        """This process's rank on its machine."""
        fallback = self.local_rank if self.local_rank != -1 else 0
        return int(os.environ.get("LOCAL_RANK", fallback))

    @property
    def world_size(self) -> int:
        """The number of processes training together."""
        dist = _distributed()
        return dist.get_world_size() if dist is not None else int(os.environ.get("WORLD_SIZE", 1))

    @property
    def device(self) -> torch.device:
        """The device this process trains on: its GPU, else the CPU (`use_cpu` forces the CPU)."""
        if self.use_cpu or not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", self.local_process_index % torch.cuda.device_count())

    @property
    def n_gpu(self) -> int:
        """GPUs used by this process: 1 or 0 (one process per GPU; no `DataParallel` here)."""
        return int(self.device.type == "cuda")

    @property
    def parallel_mode(self) -> Any:
        """`transformers.training_args.ParallelMode`: DISTRIBUTED with several processes, else NOT_PARALLEL."""
        from transformers.training_args import ParallelMode

        return ParallelMode.DISTRIBUTED if self.world_size > 1 else ParallelMode.NOT_PARALLEL

    @property
    def should_log(self) -> bool:
        """Whether this process logs: the main process of each machine (`log_on_each_node`), or only rank 0."""
        return self.local_process_index == 0 if self.log_on_each_node else self.process_index == 0

    @property
    def should_save(self) -> bool:
        """Whether this process writes checkpoints and models: the main process of each machine
        (`save_on_each_node`, for machines that share no disk), or only rank 0."""
        return self.local_process_index == 0 if self.save_on_each_node else self.process_index == 0

    def get_process_log_level(self) -> int:
        """The `logging` level for this process: `log_level` where `should_log`, else `log_level_replica`
        ("passive" keeps transformers' current verbosity)."""
        from transformers.utils import logging as hf_logging

        levels = hf_logging.get_log_levels_dict()
        name = self.log_level if self.should_log else self.log_level_replica
        return hf_logging.get_verbosity() if name == "passive" else levels[name]

    @contextlib.contextmanager
    def main_process_first(self, local: bool = True, desc: str = "work") -> Iterator[None]:
        """Run the block on the main process (of each machine with `local`) first, then on the others:
        e.g. `datasets.map`, which the others then read from its cache."""
        if self.world_size == 1:
            yield
            return
        from accelerate import PartialState

        # The process group this starts is the one the trainer's Accelerator finds later, so it gets the
        # run's device choice, backend and timeout (PartialState(cpu=False) without CUDA would not
        # join the launched group at all: every process would run alone).
        group: dict[str, Any] = {"timeout": timedelta(seconds=self.ddp_timeout)}
        if self.ddp_backend:
            group["backend"] = self.ddp_backend
        state = PartialState(cpu=self.device.type == "cpu", **group)
        first = state.local_main_process_first if local else state.main_process_first
        with first():
            yield
