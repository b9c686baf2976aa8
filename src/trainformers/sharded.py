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

from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import (
    DEEPSPEED_DIR,
    DEEPSPEED_MARKER,
    MODEL_SHARDS,
    OPTIMIZER_SHARDS,
    SHARD_MARKER,
    keyed,
    load_model_files,
    read_weights,
)
from .errors import CheckpointError

DEEPSPEED_TAG = "state"  # the engine's sub-folder name (DeepSpeed's default is global_step<N>)


def is_sharded(model: nn.Module) -> bool:
    """True when FSDP2 (`fully_shard`) manages `model` or one of its sub-modules."""
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(module, FSDPModule) for module in model.modules())


def unwrap_optimizer(optimizer: Any) -> torch.optim.Optimizer:
    """The optimizer inside Accelerate's wrapper (DCP needs the one holding the DTensors)."""
    inner = getattr(optimizer, "optimizer", None)
    return inner if isinstance(inner, torch.optim.Optimizer) else optimizer


class ShardedModel:
    """Save and load one FSDP2 model and its optimizers, each rank its shard; every rank calls every method.

    The interface `checkpoint.save_checkpoint`/`load_checkpoint` use for any engine that keeps
    per-rank state (see also `DeepSpeedState`).

    Args:
        model: The model after `accelerator.prepare` (its parameters are DTensors).
        shard_checkpoints: Write the model as shards (SHARDED_STATE_DICT) rather than one
            consolidated `model.safetensors` (FULL_STATE_DICT, gathered to rank 0).
    """

    collective_forward = True  # every forward gathers the shards: all ranks run it together

    def __init__(self, model: nn.Module, *, shard_checkpoints: bool) -> None:
        self.model = model
        self.shard_checkpoints = shard_checkpoints

    def required_files(self, keys: Any) -> list[str]:
        """What a checkpoint must hold to resume, relative to it (the optimizers' DCP markers)."""
        return [f"{keyed(OPTIMIZER_SHARDS, key)}/{SHARD_MARKER}" for key in keys]

    def save(self, directory: Path, optimizers: Mapping[str, Any]) -> None:
        """Each rank writes its shard of the weights (when `shard_checkpoints`) and of every optimizer."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

        if self.shard_checkpoints:
            dcp.save({"model": get_model_state_dict(self.model)}, checkpoint_id=directory / MODEL_SHARDS)
        for key, optimizer in optimizers.items():
            state = get_optimizer_state_dict(self.model, unwrap_optimizer(optimizer))
            dcp.save({"optimizer": state}, checkpoint_id=directory / keyed(OPTIMIZER_SHARDS, key))

    def load(self, directory: Path, optimizers: Mapping[str, Any]) -> None:
        """Load what `save` wrote (on any number of ranks): the weights, then every optimizer."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

        self.load_model(directory)
        for key, wrapped in optimizers.items():
            optimizer = unwrap_optimizer(wrapped)
            # the template is this rank's shapes; an optimizer that has not stepped yet is given
            # its state first (torch does it with a zero-learning-rate step)
            state = {"optimizer": get_optimizer_state_dict(self.model, optimizer)}
            dcp.load(state, checkpoint_id=directory / keyed(OPTIMIZER_SHARDS, key))
            set_optimizer_state_dict(self.model, optimizer, state["optimizer"])

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
        unexpected = sorted(set(full) - set(self.model.state_dict()))
        if unexpected:
            raise CheckpointError(
                f"weights in '{directory}' don't match the model (unexpected {unexpected[:3]}); resume with the same "
                "model configuration"
            )
        # every rank read the same file; each keeps its own shard of every tensor (a tied weight is
        # saved once, hence not strict)
        set_model_state_dict(self.model, full, options=StateDictOptions(full_state_dict=True, strict=False))


class DeepSpeedState:
    """Save and load a DeepSpeed engine's model and optimizer state, each rank its ZeRO partition.

    The engine writes both in one call (`save_checkpoint`), into `checkpoint-N/deepspeed/`. Under
    ZeRO-3 the weights are partitioned too, so the checkpoint holds no consolidated copy
    (`shard_checkpoints`); `final/` is always consolidated (`Trainer.save_model`).

    Args:
        engine: The model as `accelerator.prepare` returned it (a `deepspeed.DeepSpeedEngine`).
        stage: The ZeRO stage.
    """

    def __init__(self, engine: Any, *, stage: int) -> None:
        self.engine = engine
        self.shard_checkpoints = stage == 3
        self.collective_forward = stage == 3  # ZeRO-3 gathers each layer's partitions in the forward

    def required_files(self, keys: Any) -> list[str]:
        return [f"{DEEPSPEED_DIR}/{DEEPSPEED_MARKER}"]

    def save(self, directory: Path, optimizers: Mapping[str, Any]) -> None:
        self.engine.save_checkpoint(str(directory / DEEPSPEED_DIR), tag=DEEPSPEED_TAG, save_latest=True)

    def load(self, directory: Path, optimizers: Mapping[str, Any]) -> None:
        self._load(directory, module_only=False)

    def load_model(self, directory: Path) -> None:
        if not (directory / DEEPSPEED_DIR / DEEPSPEED_MARKER).is_file():  # saved with save_only_model (ZeRO 0-2)
            load_model_files(self.engine.module, directory)
            return
        self._load(directory, module_only=True)

    def _load(self, directory: Path, *, module_only: bool) -> None:
        # the scheduler is ours (saved as scheduler.safetensors); the engine holds none
        self.engine.load_checkpoint(
            str(directory / DEEPSPEED_DIR),
            tag=DEEPSPEED_TAG,
            load_module_only=module_only,
            load_optimizer_states=not module_only,
            load_lr_scheduler_states=False,
        )


def in_lockstep(batches: Iterable[Any], accel: Any) -> Iterator[tuple[Any, bool]]:
    """(batch, real) until every rank's batches are done, every rank stepping together.

    A sharded model's forward is a collective, so ranks whose evaluation sets split unevenly would
    wait on each other for ever. A rank that has run out runs a batch again (`real` False: its
    result is thrown away), its own last one, or the first rank's first when it had none.
    """
    from accelerate.utils import broadcast_object_list, send_to_device

    iterator, last = iter(batches), None
    while True:
        batch = next(iterator, None)
        if batch is not None:
            last = batch
        mine = torch.tensor([batch is not None, last is not None], device=accel.device)
        flags = accel.gather(mine).view(-1, 2)
        if not bool(flags[:, 0].any()):
            return
        if not bool(flags[:, 1].all()):  # a rank has nothing to run again: lend it a batch
            source = int(flags[:, 0].nonzero()[0])
            box = [last if accel.process_index == source else None]
            broadcast_object_list(box, from_process=source)
            if last is None:
                last = send_to_device(box[0], accel.device)
        yield (batch, True) if batch is not None else (last, False)
