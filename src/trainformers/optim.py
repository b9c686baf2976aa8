"""Optimizers and learning-rate schedules.

Parameter groups follow the usual rule (no weight decay on biases and norm weights, i.e. on
tensors with fewer than two dimensions); frozen parameters never reach the optimizer. Schedules
come from `transformers.get_scheduler`, so every scheduler it offers is available by name.
"""

from __future__ import annotations

import importlib.util
import inspect
import math
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .errors import ConfigError, did_you_mean

_BNB_OPTIMIZERS = {
    "adamw_8bit": "AdamW8bit",
    "adamw_bnb_8bit": "AdamW8bit",
    "paged_adamw_8bit": "PagedAdamW8bit",
    "paged_adamw_32bit": "PagedAdamW32bit",
    "lion_8bit": "Lion8bit",
    "paged_lion_8bit": "PagedLion8bit",
}


def param_groups(
    model: nn.Module,
    args: Any = None,
    *,
    learning_rate: float | None = None,
    weight_decay: float | None = None,
    groups: Sequence[Mapping[str, Any]] | None = None,
    loraplus_lr_ratio: float | None = None,
) -> list[dict[str, Any]]:
    """Sort the trainable parameters of `model` into optimizer groups, each with its own lr and decay.

    Rules, applied to every parameter with `requires_grad` (frozen ones never reach the optimizer):

    1. Its full name (as in `model.named_parameters()`) is matched with `re.search` against each
       `groups` entry's `pattern` in order; the first match wins. Its `lr` and `weight_decay`
       replace `learning_rate` and `weight_decay`; a key left out keeps the default. Unmatched
       parameters use the defaults.
    2. Biases and norm weights (tensors with ndim < 2) never decay, in a pattern group too: a
       group's `weight_decay` means what the global one does, the decay of its matrices.
    3. LoRA+ (`loraplus_lr_ratio`): LoRA B matrices (`lora_B`, `lora_embedding_B` in the name)
       train at ratio x the lr they would otherwise get, pattern lr included; A matrices keep it.
       Weight decay is unchanged (as in peft's `create_loraplus_optimizer`).

    Each group is a dict with `params`, `lr`, `weight_decay`, `name` (e.g. "decay", "no_decay",
    "lora_B (loraplus)", "pattern:lora_ (decay)") and `pattern` (None for the defaults); torch
    optimizers keep the extra keys. Empty groups are never made. The default groups come first,
    so `param_groups[0]` (the lr the trainer logs) has the base lr unless every trainable
    parameter other than a LoRA B matrix matches a pattern.

    Args:
        model: The model whose trainable parameters are grouped.
        args: A `TrainingArguments` (or anything with `learning_rate`, `weight_decay`,
            `param_groups`, `loraplus_lr_ratio`); None when every setting comes as a keyword.
        learning_rate: The default lr; None takes `args.learning_rate`.
        weight_decay: The default decay of matrices; None takes `args.weight_decay`, else 0.
        groups: `[{pattern, lr?, weight_decay?}, ...]`; None takes `args.param_groups`.
        loraplus_lr_ratio: The LoRA+ ratio; None takes `args.loraplus_lr_ratio` (None: off).

    Returns:
        The optimizer parameter groups; [] when nothing is trainable.

    Raises:
        ConfigError: no learning rate, a value that is not a number >= 0, a pattern that matches no
            trainable parameter or only ones an earlier pattern took, or a LoRA+ ratio on a model
            without LoRA B matrices.
    """
    lr = _number("learning_rate", _setting(learning_rate, args, "learning_rate", None))
    decay = _number("weight_decay", _setting(weight_decay, args, "weight_decay", 0.0))
    ratio = _setting(loraplus_lr_ratio, args, "loraplus_lr_ratio", None)
    ratio = None if ratio is None else _number("loraplus_lr_ratio", ratio)
    if ratio == 0:
        raise ConfigError("training.loraplus_lr_ratio=0 would stop the LoRA B matrices; use e.g. 16, or None for off")
    entries = _setting(groups, args, "param_groups", None) or []
    rules = [ParamGroupRule.parse(i, entry) for i, entry in enumerate(entries)]

    named = list(model.named_parameters())
    if not any(p.requires_grad for _, p in named):
        return []  # create_optimizer says so; pattern errors would only hide the real problem
    built: dict[tuple[int, bool, bool], dict[str, Any]] = {}  # (rule index, -1 default; is B; no decay)
    won: set[int] = set()
    lost_to: dict[int, int] = {}  # a rule that matched trainable parameters -> the rule that took them
    frozen_hits: set[int] = set()
    frozen_b = False
    for name, param in named:
        hits = [rule for rule in rules if rule.regex.search(name)]
        is_b = ratio is not None and _is_lora_b(name)
        if not param.requires_grad:
            frozen_hits.update(rule.index for rule in hits)
            frozen_b = frozen_b or is_b
            continue
        rule = hits[0] if hits else None
        for other in hits[1:]:
            lost_to.setdefault(other.index, hits[0].index)
        decays = param.ndim >= 2
        key = (rule.index if rule else -1, is_b, not decays)
        if key not in built:
            group_lr = rule.lr if rule and rule.lr is not None else lr
            group_decay = rule.weight_decay if rule and rule.weight_decay is not None else decay
            built[key] = {
                "name": _group_name(rule.pattern if rule else None, decays, is_b),
                "pattern": rule.pattern if rule else None,
                "lr": group_lr * ratio if is_b else group_lr,
                "weight_decay": group_decay if decays else 0.0,
                "params": [],
            }
            if rule:
                won.add(rule.index)
        built[key]["params"].append(param)

    _check_rules(rules, won, lost_to, frozen_hits, named)
    if ratio is not None and not any(is_b for _, is_b, _ in built):
        where = "only frozen ones" if frozen_b else "none"
        message = (
            f"training.loraplus_lr_ratio={ratio:g} but the model has {where} of the LoRA B matrices it scales "
            "(names with 'lora_B' or 'lora_embedding_B'); apply a LoRA adapter or remove loraplus_lr_ratio"
        )
        if not frozen_b:
            raise ConfigError(message)
        warnings.warn(message, stacklevel=2)
    return [built[key] for key in sorted(built)]


def describe_param_groups(groups: Sequence[Mapping[str, Any]], model: nn.Module | None = None) -> str:
    """An aligned text table of optimizer groups: name, pattern, tensors, parameters, lr, decay.

    Works on `param_groups(...)` and on `optimizer.param_groups` (where a scheduler has run, the
    peak `initial_lr` is shown). With `model`, a last line counts the trainable share of it.
    """
    header = ("group", "pattern", "tensors", "parameters", "lr", "weight_decay")
    rows = [header]
    total_tensors = total_params = 0
    for i, group in enumerate(groups):
        params = list(group["params"])
        numel = sum(p.numel() for p in params)
        total_tensors, total_params = total_tensors + len(params), total_params + numel
        lr = group.get("initial_lr", group.get("lr"))
        rows.append(
            (
                str(group.get("name", f"group {i}")),
                "-" if group.get("pattern") is None else str(group["pattern"]),
                str(len(params)),
                f"{numel:,}",
                "-" if lr is None else f"{float(lr):.4g}",
                f"{float(group.get('weight_decay', 0.0)):.4g}",
            )
        )
    widths = [max(len(row[c]) for row in rows) for c in range(len(header))]
    numeric = {2, 3, 4, 5}
    lines = [
        "  ".join(cell.rjust(w) if c in numeric else cell.ljust(w) for c, (cell, w) in enumerate(zip(row, widths)))
        for row in rows
    ]
    lines = [line.rstrip() for line in lines]
    if model is not None:
        everything = sum(p.numel() for p in model.parameters())
        share = 100.0 * total_params / everything if everything else 0.0
        lines.append(
            f"trainable: {total_params:,} of {everything:,} parameters ({share:.2f}%) in {total_tensors} tensors"
        )
    return "\n".join(lines)


@dataclass(frozen=True)
class ParamGroupRule:
    """One `param_groups` entry, checked: `parse` is what config validation can call too."""

    index: int
    pattern: str
    regex: re.Pattern[str]
    lr: float | None
    weight_decay: float | None

    @classmethod
    def parse(cls, index: int, entry: Mapping[str, Any]) -> ParamGroupRule:
        """Check entry `index` of `param_groups` (keys, regex, numbers >= 0) and compile it.

        Raises:
            ConfigError: one line naming the entry, the bad value and the fix.
        """
        where = f"param_groups[{index}]"
        if not isinstance(entry, Mapping) or "pattern" not in entry:
            raise ConfigError(f"training.{where}={entry!r} must be a mapping with a 'pattern' (and lr, weight_decay)")
        unknown = set(entry) - {"pattern", "lr", "weight_decay"}
        if unknown:
            raise ConfigError(
                f"training.{where} has unknown keys {sorted(unknown)}; allowed: pattern, lr, weight_decay"
            )
        pattern = str(entry["pattern"])
        try:
            regex = re.compile(pattern)
        except re.error as err:
            raise ConfigError(f"training.{where}.pattern {pattern!r} is not a valid regex: {err}") from None
        lr, decay = entry.get("lr"), entry.get("weight_decay")
        return cls(
            index,
            pattern,
            regex,
            None if lr is None else _number(f"{where}.lr", lr),
            None if decay is None else _number(f"{where}.weight_decay", decay),
        )


def _check_rules(
    rules: list[ParamGroupRule],
    won: set[int],
    lost_to: dict[int, int],
    frozen_hits: set[int],
    named: list[tuple[str, nn.Parameter]],
) -> None:
    """A pattern that gives no parameter its settings is a typo or shadowed: say so, don't ignore it."""
    for rule in rules:
        if rule.index in won:
            continue
        where = f"training.param_groups[{rule.index}].pattern {rule.pattern!r}"
        if rule.index in lost_to:
            first = rules[lost_to[rule.index]]
            raise ConfigError(
                f"{where} matches only parameters that param_groups[{first.index}] ({first.pattern!r}) already "
                "takes (the first match wins); move it before that entry or remove it"
            )
        if rule.index in frozen_hits:
            warnings.warn(
                f"{where} matches only frozen parameters (requires_grad=False); it changes nothing", stacklevel=3
            )
            continue
        parts = {part for name, _ in named for part in name.split(".")}
        example = next(name for name, p in named if p.requires_grad)
        raise ConfigError(
            f"{where} matches no parameter name{did_you_mean(rule.pattern, parts)}; names look like {example!r}, "
            "fix the pattern or remove the entry"
        )


def _setting(value: Any, args: Any, field: str, default: Any) -> Any:
    """An explicit keyword, else the field of `args`, else the default."""
    if value is not None:
        return value
    return getattr(args, field, default) if args is not None else default


def _number(field: str, value: Any) -> float:
    """`value` as a float >= 0, or a one-line ConfigError naming `field`."""
    if value is None:
        raise ConfigError(f"training.{field} is not set; give a number (e.g. 1e-4)")
    if isinstance(value, str) and value != "auto":
        try:
            value = float(value)  # YAML 1.1 reads 1e-4 (no dot) as a string
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        hint = "; 'auto' must be replaced by the LR finder before the optimizer is built" if value == "auto" else ""
        raise ConfigError(f"training.{field}={value!r} must be a number >= 0{hint}")
    return float(value)


def _is_lora_b(name: str) -> bool:
    """LoRA's B (up-projection) matrices, named as peft names them."""
    return "lora_B" in name or "lora_embedding_B" in name


def _group_name(pattern: str | None, decays: bool, is_b: bool) -> str:
    tag = "decay" if decays else "no_decay"
    if is_b:
        tag = "loraplus" if decays else "loraplus, no_decay"
        return f"lora_B ({tag})" if pattern is None else f"pattern:{pattern} (lora_B {tag})"
    return tag if pattern is None else f"pattern:{pattern} ({tag})"


def optimizer_cls_and_kwargs(args: Any, device: torch.device) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    """Map `args.optim` (+ `optim_args`) to an optimizer class and its keyword arguments.

    Raises:
        ConfigError: bitsandbytes optimizers asked for without bitsandbytes or a GPU, or an `optim_args`
            key the optimizer class does not take.
    """
    name = args.optim
    adam = {"lr": args.learning_rate, "betas": (args.adam_beta1, args.adam_beta2), "eps": args.adam_epsilon}
    extra = args.optim_args_dict() if hasattr(args, "optim_args_dict") else dict(args.optim_args or {})
    cls: type[torch.optim.Optimizer]
    if name in ("adamw_torch_fused", "adamw"):
        # fused AdamW is several times faster than the per-tensor default, on CPU too (docs/perf-notes.md)
        cls, kwargs = torch.optim.AdamW, {**adam, "fused": True}
    elif name == "adamw_torch":
        cls, kwargs = torch.optim.AdamW, adam
    elif name == "sgd":
        cls, kwargs = torch.optim.SGD, {"lr": args.learning_rate}
    elif name == "adagrad":
        cls, kwargs = torch.optim.Adagrad, {"lr": args.learning_rate, "eps": args.adam_epsilon}
    elif name == "rmsprop":
        cls, kwargs = torch.optim.RMSprop, {"lr": args.learning_rate, "eps": args.adam_epsilon}
    elif name == "adafactor":
        from transformers.optimization import Adafactor

        # an explicit learning rate, as HF's Trainer does: the relative-step mode fights the scheduler
        cls, kwargs = Adafactor, {"lr": args.learning_rate, "scale_parameter": False, "relative_step": False}
    elif name in _BNB_OPTIMIZERS:
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ConfigError(
                f"training.optim '{name}' needs bitsandbytes; install it (pip install trainformers[bitsandbytes]) "
                "or use optim: adamw_torch_fused"
            )
        if device.type != "cuda":
            raise ConfigError(f"training.optim '{name}' needs a CUDA GPU (bitsandbytes); on CPU use adamw_torch_fused")
        import bitsandbytes.optim as bnb_optim

        cls = getattr(bnb_optim, _BNB_OPTIMIZERS[name])
        kwargs = {k: v for k, v in adam.items() if k != "eps"} if "lion" in name else adam
    else:
        raise ConfigError(f"training.optim '{name}' is not an optimizer trainformers knows")
    _check_optim_args(name, cls, extra)
    return cls, {**kwargs, **extra}


def _check_optim_args(name: str, cls: type, extra: Mapping[str, Any]) -> None:
    """Each `optim_args` key must be a keyword of the optimizer class (any is, when it takes **kwargs)."""
    parameters = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    accepted = [key for key in parameters if key not in ("self", "params")]
    for key in extra:
        if key not in accepted:
            raise ConfigError(
                f"training.optim_args key '{key}' is not an argument of {cls.__name__} (optim '{name}')"
                f"{did_you_mean(key, accepted)}; it takes {', '.join(accepted)}"
            )


def create_optimizer(
    model: nn.Module,
    args: Any,
    device: torch.device,
    cls_and_kwargs: tuple[type[torch.optim.Optimizer], dict[str, Any]] | None = None,
) -> torch.optim.Optimizer:
    """Build the optimizer over the trainable parameters of `model`, grouped by `param_groups`.

    The base learning rate is the `lr` of `cls_and_kwargs` when the caller gives one (HF
    semantics: those kwargs reach the optimizer as given), else `args.learning_rate`.

    Raises:
        ConfigError: nothing is trainable, or a setting `param_groups` or the optimizer rejects.
    """
    cls, kwargs = cls_and_kwargs or optimizer_cls_and_kwargs(args, device)
    base_lr = kwargs.get("lr") if kwargs.get("lr") is not None else args.learning_rate
    groups = param_groups(model, args, learning_rate=base_lr)
    if not groups:
        raise ConfigError("the model has no trainable parameters (every requires_grad is False); unfreeze some")
    if kwargs.get("fused") and not all(p.is_floating_point() for g in groups for p in g["params"]):
        kwargs = {k: v for k, v in kwargs.items() if k != "fused"}
    try:
        return cls(groups, **kwargs)
    except (TypeError, ValueError) as err:  # e.g. torch's "Invalid momentum value: x"
        raise ConfigError(
            f"{cls.__name__} refused its settings {kwargs} ({' '.join(str(err).split())}); fix training.optim_args "
            "(or the Trainer's optimizer_cls_and_kwargs)"
        ) from None


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
