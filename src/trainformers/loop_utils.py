"""Small helpers of the training loops: model introspection, batch accounting, run length, metrics rows.

Kept out of the trainers so their loops read top to bottom; each is a pure function of its inputs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import ConfigError
from .state import TrainerState


def seed_everything(args: Any) -> None:
    from transformers import enable_full_determinism, set_seed

    if args.full_determinism:
        enable_full_determinism(args.seed)
    else:
        set_seed(args.seed)


def apply_log_level(args: Any) -> None:
    """Set the transformers log verbosity of this process: `log_level` where `args.should_log`,
    `log_level_replica` elsewhere ("passive" leaves it as it is)."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity(args.get_process_log_level())


def default_collator(processing_class: Any) -> Callable:
    from transformers import DataCollatorWithPadding, default_data_collator

    if processing_class is not None and hasattr(processing_class, "pad"):
        return DataCollatorWithPadding(processing_class)
    return default_data_collator


def unwrap_peft(model: nn.Module) -> nn.Module:
    base = getattr(model, "get_base_model", None)
    return base() if callable(base) else model


def loss_shifts_labels(model: nn.Module) -> bool:
    """True when the model's loss predicts labels[..., 1:] (decoder-only causal LMs)."""
    config = getattr(model, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return False
    try:
        from transformers.loss.loss_utils import LOSS_MAPPING, ForCausalLMLoss

        if LOSS_MAPPING.get(getattr(model, "loss_type", None)) is ForCausalLMLoss:
            return True
    except ImportError:  # transformers without the loss registry
        pass
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return type(model).__name__ in set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())


def row_lengths(dataset: Any, column: str) -> list[int]:
    if hasattr(dataset, "column_names") and column in dataset.column_names:
        return list(dataset[column])
    if hasattr(dataset, "column_names") and "input_ids" in dataset.column_names:
        return [len(ids) for ids in dataset["input_ids"]]
    return [len(dataset[i]["input_ids"]) for i in range(len(dataset))]


def safe_len(dataloader: Any) -> int | None:
    try:
        return len(dataloader)
    except TypeError:
        return None


def take(iterator: Any, n: int) -> list[Any]:
    out = []
    for _ in range(n):
        try:
            out.append(next(iterator))
        except StopIteration:
            break
    return out


def batch_size_info(batch: Mapping[str, Any]) -> tuple[int, int, int]:
    """(tokens, samples, sequence length) of a micro-batch from tensor shapes: host-side, no sync."""
    ids = batch.get("input_ids")
    if ids is None:
        first = next((v for v in batch.values() if torch.is_tensor(v) and v.dim() >= 1), None)
        return (0, first.shape[0], 0) if first is not None else (0, 0, 0)
    return ids.numel(), ids.shape[0], ids.shape[-1] if ids.dim() >= 2 else ids.numel()


def is_plateau(scheduler: Any) -> bool:
    """Schedulers that step on an evaluation metric instead of every optimizer step."""
    kinds: tuple[type, ...] = (torch.optim.lr_scheduler.ReduceLROnPlateau,)
    try:
        from transformers.optimization import GreedyLR

        kinds += (GreedyLR,)
    except ImportError:  # older transformers
        pass
    return isinstance(scheduler, kinds)


def speed_metrics(prefix: str, start: float, num_samples: int, num_steps: int | None) -> dict[str, float]:
    runtime = time.perf_counter() - start
    out = {
        f"{prefix}_runtime": round(runtime, 4),
        f"{prefix}_samples_per_second": round(num_samples / max(runtime, 1e-9), 3),
    }
    if num_steps:
        out[f"{prefix}_steps_per_second"] = round(num_steps / max(runtime, 1e-9), 3)
    return out


def best_metric_key(args: Any) -> str | None:
    """The logged key of `args.metric_for_best_model` ("loss" -> "eval_loss"), or None."""
    metric = args.metric_for_best_model
    if not metric:
        return None
    return metric if metric.startswith("eval_") else f"eval_{metric}"


def update_best_metric(state: Any, args: Any, metrics: Mapping[str, float]) -> bool:
    """Record the best-model metric of `metrics` in `state` when it beats the best so far.

    Returns:
        True when `state.best_metric` (and `best_global_step`) changed.
    """
    key = best_metric_key(args)
    if key is None or key not in metrics:
        return False
    value = metrics[key]
    better = np.greater if args.greater_is_better else np.less
    if state.best_metric is None or better(value, state.best_metric):
        state.best_metric, state.best_global_step = value, state.global_step
        return True
    return False


def after_evaluation(state: Any, args: Any, metrics: Mapping[str, float], kernels: Iterable[Any]) -> bool:
    """What every loop does with an evaluation made during training.

    Records the best-model metric in `state`, and hands it to each step kernel
    (`StepKernel.step_on_metric`: a plateau or greedy scheduler steps on it, the others ignore it).

    Returns:
        True when the best metric improved (a `save_strategy="best"` save is due).
    """
    improved = update_best_metric(state, args, metrics)
    key = best_metric_key(args)
    if key and key in metrics:
        for kernel in kernels:
            if kernel is not None:
                kernel.step_on_metric(metrics[key])
    return improved


def training_length(args: Any, micro_batches_per_epoch: int | None) -> tuple[int, int]:
    """(optimizer steps, epochs) of a run: `max_steps` when set, else `num_train_epochs` epochs.

    Args:
        args: The training arguments.
        micro_batches_per_epoch: This rank's micro-batches per epoch (None for a stream without a length).

    Raises:
        ConfigError: a stream without `max_steps`.
    """
    micro = micro_batches_per_epoch
    per_epoch = math.ceil(micro / args.gradient_accumulation_steps) if micro else None
    if args.max_steps > 0:
        return args.max_steps, (math.ceil(args.max_steps / per_epoch) if per_epoch else 1 << 30)
    if per_epoch:
        return math.ceil(args.num_train_epochs * per_epoch), math.ceil(args.num_train_epochs)
    raise ConfigError("training.max_steps must be set (> 0) for a dataset without a length (streaming)")


def new_state(args: Any, max_steps: int, num_epochs: int, accel: Any) -> TrainerState:
    """A fresh `TrainerState` for a run of `max_steps` steps, with its logging/eval/save intervals resolved."""
    state = TrainerState(is_local_process_zero=accel.is_local_main_process, is_world_process_zero=accel.is_main_process)
    state.max_steps, state.num_train_epochs = max_steps, num_epochs
    state.train_batch_size = args.per_device_train_batch_size
    state.logging_steps = args.resolve_steps(args.logging_steps, max_steps)
    state.eval_steps = args.resolve_steps(args.eval_steps or args.logging_steps, max_steps)
    state.save_steps = args.resolve_steps(args.save_steps, max_steps)
    return state


def prepare_model(model: nn.Module, args: Any, device: torch.device) -> None:
    """Gradient checkpointing (`args.gradient_checkpointing`), `use_cache` and device placement.

    Raises:
        ConfigError: gradient checkpointing asked for a model that does not support it.
    """
    if args.gradient_checkpointing:
        # transformers 5.23 renamed it; older releases only have the gradient_ name
        enable = getattr(model, "activation_checkpointing_enable", None) or getattr(
            model, "gradient_checkpointing_enable", None
        )
        if enable is None:
            raise ConfigError(
                f"training.gradient_checkpointing=True but {type(model).__name__} does not support it; drop it"
            )
        kwargs = args.gradient_checkpointing_kwargs
        if enable.__name__ == "activation_checkpointing_enable":
            enable(activation_checkpointing_kwargs=kwargs) if kwargs else enable()
        else:
            enable(gradient_checkpointing_kwargs=kwargs)
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()  # frozen embeddings + checkpointing: no grads otherwise
    config = getattr(unwrap_peft(model), "config", None)
    if config is not None and hasattr(config, "use_cache"):
        config.use_cache = args.use_cache  # HF semantics; generate() keeps its own cache setting
    if getattr(model, "hf_device_map", None) is None and not getattr(model, "is_quantized", False):
        model.to(device)
