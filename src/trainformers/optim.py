"""Optimizers and learning-rate schedules.

Parameter groups follow the usual rule (no weight decay on biases and norm weights, i.e. on
tensors with fewer than two dimensions); frozen parameters never reach the optimizer. Schedules
come from `transformers.get_scheduler`, so every scheduler it offers is available by name.
"""

from __future__ import annotations

import importlib.util
from typing import Any

import torch
from torch import nn

from .errors import ConfigError

_BNB_OPTIMIZERS = {
    "adamw_8bit": "AdamW8bit",
    "adamw_bnb_8bit": "AdamW8bit",
    "paged_adamw_8bit": "PagedAdamW8bit",
    "paged_adamw_32bit": "PagedAdamW32bit",
    "lion_8bit": "Lion8bit",
    "paged_lion_8bit": "PagedLion8bit",
}


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Split trainable parameters into a decayed and a non-decayed group.

    Matrices (embeddings, linear weights) decay; biases and norm weights (ndim < 2) don't.
    Empty groups are dropped so optimizers that dislike them are not upset.
    """
    decay, no_decay = [], []
    for param in model.parameters():
        if not param.requires_grad:
            continue
        (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return [g for g in groups if g["params"]]


def optimizer_cls_and_kwargs(args: Any, device: torch.device) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    """Map `args.optim` (+ `optim_args`) to an optimizer class and its keyword arguments.

    Raises:
        ConfigError: bitsandbytes optimizers asked for without bitsandbytes or a GPU.
    """
    name = args.optim
    adam = {"lr": args.learning_rate, "betas": (args.adam_beta1, args.adam_beta2), "eps": args.adam_epsilon}
    extra = args.optim_args_dict() if hasattr(args, "optim_args_dict") else dict(args.optim_args or {})
    if name in ("adamw_torch_fused", "adamw"):
        # fused AdamW is several times faster than the per-tensor default, on CPU too (PERF-NOTES)
        return torch.optim.AdamW, {**adam, "fused": True, **extra}
    if name == "adamw_torch":
        return torch.optim.AdamW, {**adam, **extra}
    if name == "sgd":
        return torch.optim.SGD, {"lr": args.learning_rate, **extra}
    if name == "adagrad":
        return torch.optim.Adagrad, {"lr": args.learning_rate, "eps": args.adam_epsilon, **extra}
    if name == "rmsprop":
        return torch.optim.RMSprop, {"lr": args.learning_rate, "eps": args.adam_epsilon, **extra}
    if name == "adafactor":
        from transformers.optimization import Adafactor

        # an explicit learning rate, as HF's Trainer does: the relative-step mode fights the scheduler
        return Adafactor, {"lr": args.learning_rate, "scale_parameter": False, "relative_step": False, **extra}
    if name in _BNB_OPTIMIZERS:
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ConfigError(
                f"training.optim '{name}' needs bitsandbytes; install it (pip install trainformers[bitsandbytes]) "
                "or use optim: adamw_torch_fused"
            )
        if device.type != "cuda":
            raise ConfigError(f"training.optim '{name}' needs a CUDA GPU (bitsandbytes); on CPU use adamw_torch_fused")
        import bitsandbytes.optim as bnb_optim

        kwargs = {**adam, **extra}
        if "lion" in name:
            kwargs.pop("eps")
        return getattr(bnb_optim, _BNB_OPTIMIZERS[name]), kwargs
    raise ConfigError(f"training.optim '{name}' is not an optimizer trainformers knows")


def create_optimizer(
    model: nn.Module,
    args: Any,
    device: torch.device,
    cls_and_kwargs: tuple[type[torch.optim.Optimizer], dict[str, Any]] | None = None,
) -> torch.optim.Optimizer:
    """Build the optimizer over the trainable parameters of `model`."""
    groups = param_groups(model, args.weight_decay)
    if not groups:
        raise ConfigError("the model has no trainable parameters (every requires_grad is False); unfreeze some")
    cls, kwargs = cls_and_kwargs or optimizer_cls_and_kwargs(args, device)
    if kwargs.get("fused") and not all(p.is_floating_point() for g in groups for p in g["params"]):
        kwargs = {k: v for k, v in kwargs.items() if k != "fused"}
    return cls(groups, **kwargs)


def create_scheduler(
    optimizer: torch.optim.Optimizer, args: Any, num_training_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """`transformers.get_scheduler` with the warm-up resolved from `args.warmup_steps`."""
    from transformers import get_scheduler

    warmup = args.get_warmup_steps(num_training_steps)
    kwargs = dict(args.lr_scheduler_kwargs or {})
    try:
        return get_scheduler(
            args.lr_scheduler_type,
            optimizer=optimizer,
            num_warmup_steps=warmup,
            num_training_steps=num_training_steps,
            scheduler_specific_kwargs=kwargs,
        )
    except (TypeError, ValueError) as err:
        raise ConfigError(
            f"training.lr_scheduler_type '{args.lr_scheduler_type}' with lr_scheduler_kwargs {kwargs} failed: {err}; "
            "fix lr_scheduler_kwargs"
        ) from None
