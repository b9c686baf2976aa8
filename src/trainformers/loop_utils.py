"""Small helpers of the training loop: model introspection, batch accounting, metrics rows.

Kept out of `trainer.py` so the loop reads top to bottom; each is a pure function of its inputs
(except `_SinceLog`, the loop's accumulator since the last log row).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import ConfigError


@dataclass
class SinceLog:
    """What the loop accumulated since the last training log row.

    `loss` (and `seen`, non-padding tokens) stay device tensors so the hot path never syncs; they
    are read when a row is logged or a checkpoint saved.
    """

    loss: torch.Tensor
    steps: int = 0
    micro: int = 0
    tokens: int = 0
    samples: int = 0
    seen: Any = 0
    start: float = 0.0
    flops: float = 0.0  # model FLOPs of this rank's micro-batches (flops.py)
    paused: float = 0.0  # seconds spent evaluating and saving: not training time

    def elapsed(self) -> float:
        """Training seconds since the last row (evaluation and checkpoint time left out)."""
        return max(time.perf_counter() - self.start - self.paused, 1e-9)

    def take_seen(self) -> int:
        seen, self.seen = self.seen, 0
        return int(seen.item()) if torch.is_tensor(seen) else int(seen)

    def reset(self) -> None:
        self.loss.zero_()
        self.steps = self.micro = self.tokens = self.samples = 0
        self.flops = self.paused = 0.0
        self.start = time.perf_counter()


class TermMeans:
    """Running means of the extra loss terms a model reports (`outputs.loss_terms`).

    Sums stay device tensors between log rows; `pop` reads them once (averaged over ranks).
    """

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0

    def add(self, terms: Mapping[str, torch.Tensor]) -> None:
        for name, value in terms.items():
            value = value.detach().float()
            self.sums[name] = self.sums[name] + value if name in self.sums else value
        self.count += 1

    def pop(self, accel: Any) -> dict[str, float]:
        if not self.count:
            return {}
        names = sorted(self.sums)
        stacked = torch.stack([self.sums[n] for n in names]) / self.count
        if accel.num_processes > 1:
            stacked = accel.reduce(stacked, reduction="mean")
        self.sums, self.count = {}, 0
        return dict(zip(names, stacked.tolist()))


def seed_everything(args: Any) -> None:
    from transformers import enable_full_determinism, set_seed

    if args.full_determinism:
        enable_full_determinism(args.seed)
    else:
        set_seed(args.seed)


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


def after_evaluation(state: Any, args: Any, metrics: Mapping[str, float], schedulers: Iterable[Any]) -> bool:
    """What every loop does with an evaluation made during training.

    Records the best-model metric in `state`, and steps each metric-driven scheduler (plateau,
    greedy) with it; the others step every optimizer step and are left alone.

    Returns:
        True when the best metric improved (a `save_strategy="best"` save is due).
    """
    improved = update_best_metric(state, args, metrics)
    key = best_metric_key(args)
    for scheduler in schedulers:
        if key and is_plateau(scheduler):
            scheduler.step(metrics[key])
    return improved


def scalar_config(args: Any) -> dict[str, Any]:
    """Trackers (TensorBoard hparams) accept only scalars."""
    return {k: v for k, v in args.to_dict().items() if isinstance(v, (int, float, str, bool))}


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


class OptimizerStep:
    """Backward, clip, step and zero the gradients of one optimizer, past Accelerate's wrappers where they add nothing.

    Accelerate's `AcceleratedOptimizer.step`/`zero_grad` and `Accelerator.clip_grad_norm_` look up
    optional packages (`find_spec`, two per step), parse version strings and inspect signatures
    on every call: about 1 ms per step on this CPU, 7% of a small model's step
    (bench/step_overhead.py). `Accelerator.backward` rebuilds the state singletons (reading the
    environment) and divides the loss by its accumulation count, 1 here (the loop weights
    micro-batches itself): one more op in the graph, 3% of a nano model's step. Without a
    gradient scaler (fp16), and outside DeepSpeed, FSDP and XLA, they end in exactly the torch
    calls made here; in every other setting this defers to Accelerate.

    Args:
        accel: The run's `Accelerator`.
        optimizer: The optimizer as returned by `accel.prepare` (an `AcceleratedOptimizer`).
        params: The parameters to clip (all of the optimizer's, in practice the model's).
    """

    def __init__(self, accel: Any, optimizer: torch.optim.Optimizer, params: Any) -> None:
        from accelerate.utils import DistributedType

        self.accel, self.optimizer = accel, optimizer
        self.params = list(params)  # frozen ones too: a callback may unfreeze them mid-run (grads of None are skipped)
        plain = (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU)
        inner = getattr(optimizer, "optimizer", None)
        direct = accel.scaler is None and accel.distributed_type in plain and isinstance(inner, torch.optim.Optimizer)
        self.direct: torch.optim.Optimizer | None = inner if direct else None
        self.direct_backward = direct and accel.gradient_accumulation_steps == 1

    def backward(self, loss: torch.Tensor) -> None:
        """`loss.backward()`, through Accelerate only where it scales or hands the loss on."""
        if self.direct_backward:
            loss.backward()
        else:
            self.accel.backward(loss)

    def clip(self, max_norm: float) -> torch.Tensor:
        """Clip the gradient norm to `max_norm`; returns the total norm before clipping (a tensor)."""
        if self.direct is None:
            return self.accel.clip_grad_norm_(self.params, max_norm)
        return torch.nn.utils.clip_grad_norm_(self.params, max_norm)

    def step(self) -> None:
        (self.direct or self.optimizer).step()

    def zero_grad(self) -> None:
        (self.direct or self.optimizer).zero_grad(set_to_none=True)

    @property
    def skipped(self) -> bool:
        """The step was skipped (fp16 overflow); never without a scaler."""
        return self.direct is None and self.accel.optimizer_step_was_skipped
