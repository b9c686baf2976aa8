"""Checkpoint state of a model that FSDP2 shards over the ranks: each rank writes and reads its own
shard through `torch.distributed.checkpoint` (DCP).

`checkpoint.save_checkpoint` calls this on every rank, inside the same atomic directory as the rest
of a checkpoint: DCP writes one file per rank and, on rank 0, a `.metadata` file after every rank's
data is in; the directory is renamed only after that, so a torn save never looks complete.

    checkpoint-N/
      model_shards/           __<rank>_0.distcp and .metadata (state_dict_type SHARDED_STATE_DICT)
      model.safetensors       instead, consolidated by rank 0 (FULL_STATE_DICT)
      config.json
      optimizer_shards/       always sharded: an optimizer's state is as large as its shard of the model

The DCP state dicts are keyed by parameter name, not by rank layout, so a checkpoint loads on a
different number of ranks too (DCP reshards on load).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import MODEL_SHARDS, SHARD_MARKER, read_weights


def is_sharded(model: nn.Module) -> bool:
    """True when FSDP2 (`fully_shard`) manages `model` or one of its sub-modules."""
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(module, FSDPModule) for module in model.modules())


class ShardedModel:
    """Save and load one FSDP2 model and its optimizers, each rank its shard; every rank calls every method.

    Args:
        model: The model after `accelerator.prepare` (its parameters are DTensors).
        shard_checkpoints: Write the model as shards (SHARDED_STATE_DICT) rather than one
            consolidated `model.safetensors` (FULL_STATE_DICT, gathered to rank 0).
    """

    def __init__(self, model: nn.Module, *, shard_checkpoints: bool) -> None:
        self.model = model
        self.shard_checkpoints = shard_checkpoints

    # ---- model ----------------------------------------------------------------------------

    def save_model_shards(self, directory: Path) -> None:
        """Each rank writes its shard of the weights under `directory/model_shards/`."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        dcp.save({"model": get_model_state_dict(self.model)}, checkpoint_id=directory / MODEL_SHARDS)

    def load_model(self, directory: Path) -> None:
        """Load the weights of checkpoint `directory`: from its shards, or from a consolidated `model.safetensors`."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            set_model_state_dict,
        )

        if (directory / MODEL_SHARDS / SHARD_MARKER).is_file():
            import torch.distributed.checkpoint as dcp

            state = {"model": get_model_state_dict(self.model)}
            dcp.load(state, checkpoint_id=directory / MODEL_SHARDS)
            set_model_state_dict(self.model, state["model"])
            return
        full: dict[str, Any] = dict(read_weights(directory))
        # every rank read the same file; each keeps its own shard of every tensor
        set_model_state_dict(self.model, full, options=StateDictOptions(full_state_dict=True, strict=False))

    # ---- optimizer ------------------------------------------------------------------------

    def save_optimizer(self, optimizer: torch.optim.Optimizer, directory: Path) -> None:
        """Each rank writes its shard of the optimizer state into `directory` (a DCP folder)."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        dcp.save({"optimizer": get_optimizer_state_dict(self.model, optimizer)}, checkpoint_id=directory)

    def load_optimizer(self, optimizer: torch.optim.Optimizer, directory: Path) -> None:
        """Load what `save_optimizer` wrote (on any number of ranks)."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

        # the template: this rank's shapes; an optimizer that has not stepped yet is given its
        # state first (torch does it with a zero-learning-rate step)
        state = {"optimizer": get_optimizer_state_dict(self.model, optimizer)}
        dcp.load(state, checkpoint_id=directory)
        set_optimizer_state_dict(self.model, optimizer, state["optimizer"])


def unwrap_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside Accelerate's wrapper (DCP needs the one holding the DTensors)."""
    inner = getattr(optimizer, "optimizer", None)
    return inner if isinstance(inner, torch.optim.Optimizer) else optimizer
