"""The learning-rate range test (Smith, "Cyclical Learning Rates", 2015; fastai's `lr_find`).

`find_lr` trains for a few steps while the learning rate grows exponentially, records the loss
and suggests a learning rate. It uses the trainer's own data, accumulation, clipping and loss on
the trainer's model and optimizer, then puts every bit back (weights, optimizer state and
learning rates, RNG, train/eval modes), so a `train()` afterwards is the run it would have been.
"""

from __future__ import annotations

import copy
import itertools
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from accelerate.optimizer import AcceleratedOptimizer
from accelerate.utils import DistributedType, broadcast_object_list, send_to_device

from . import checkpoint as ckpt
from .errors import ConfigError, DataError, TrainformersError
from .step import StepKernel

if TYPE_CHECKING:
    from .trainer import Trainer

__all__ = ["LRFinderResult", "find_lr", "suggest_lrs"]


@dataclass
class LRFinderResult:
    """What `find_lr` measured and what it suggests.

    Attributes:
        lrs: The first param group's learning rate at each optimizer step (the first with a
            nonzero base rate), exponentially spaced; fewer than `num_steps` when the test
            stopped early, the last being where it stopped.
        losses: The raw training loss of each step (mean over the accumulation window), measured
            by that step's forward pass, i.e. after the updates made with the earlier rates.
        smoothed: `losses` through a bias-corrected exponential moving average.
        suggestion: The learning rate to train with: `steepest`, or `min_div_10` where that is
            undefined. In the units of `lrs` (the first param group's rate).
        steepest: The rate where the smoothed loss falls fastest per decade of learning rate,
            or None when it never falls.
        min_div_10: The rate at the lowest smoothed loss, divided by 10.
        diverged: True when the test stopped early because the smoothed loss exceeded
            `diverge_factor` times its best value, or became NaN or infinite.
        plot_path: The PNG written, or None.
    """

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion: float
    steepest: float | None
    min_div_10: float
    diverged: bool
    plot_path: Path | None = None


def find_lr(
    trainer: Trainer,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_steps: int = 100,
    *,
    smooth_beta: float = 0.98,
    diverge_factor: float = 4.0,
    plot_path: str | os.PathLike | None = None,
) -> LRFinderResult:
    """Run the learning-rate range test on `trainer` and suggest a learning rate.

    Step `i` sets the first param group's rate to `start_lr * (end_lr / start_lr) ** (i / (num_steps - 1))`
    and every other group to the same multiple of its own base rate (`initial_lr` when a
    scheduler set one), so ratios between groups (LoRA+, per-group rates) are kept. Each step is
    a training step as `train()` makes it: the trainer's train dataloader (started again when it
    runs out), `gradient_accumulation_steps` micro-batches through `training_step` (its
    `compute_loss`, autocast and backward), clipping to `max_grad_norm`, `optimizer.step()`. No
    scheduler, callbacks, logging or checkpoints. The test stops early when the smoothed loss
    diverges. In a distributed run every rank runs the whole global batch by itself (no
    communication) and all take rank 0's curve. FSDP and DeepSpeed are not supported.

    Afterwards the model (trainable parameters, buffers, gradients, train/eval mode of every
    module), the optimizer (state, param groups, attributes), the Python/NumPy/torch RNGs and the
    gradient scaler are exactly as before, also when the test raises. An optimizer that
    `find_lr` had to create is dropped again (`trainer.optimizer` stays None), so one built
    after changing `args.learning_rate` starts from the new rate.

    Suggestion: `steepest`, the rate with the most negative slope of the smoothed loss against
    log10(rate), among the points before the minimum (the first and last 10% left out): where
    raising the rate buys the most progress, well short of divergence. Where the loss never
    falls, `min_div_10`: a decade below the minimum, which itself sits at the edge of divergence.
    Both lag behind the raw loss by the moving average's memory (about 1 / (1 - smooth_beta)
    steps); with few steps, lower `smooth_beta`.

    Args:
        trainer: A `Trainer` with a `train_dataset`.
        start_lr: First learning rate (> 0).
        end_lr: Last learning rate (> start_lr).
        num_steps: Optimizer steps, at least 2.
        smooth_beta: Weight of the past in the moving average, in [0, 1).
        diverge_factor: Stop when the smoothed loss exceeds this multiple (> 1) of its best.
        plot_path: Write a PNG of the loss against the learning rate here.

    Returns:
        The curve and the suggestions.

    Raises:
        ConfigError: an argument is out of range, or the trainer uses FSDP or DeepSpeed.
        DataError: no train_dataset, or its dataloader yields no batch.
        TrainformersError: the very first loss is NaN or infinite.
    """
    _check_arguments(start_lr, end_lr, num_steps, smooth_beta, diverge_factor)
    accel = trainer.accelerator
    if accel.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED, DistributedType.MEGATRON_LM):
        raise ConfigError(
            f"the LR range test does not run under {accel.distributed_type.value}; find the learning rate "
            "without FSDP/DeepSpeed (one process is enough) and set training.learning_rate to it"
        )
    lrs = np.geomspace(start_lr, end_lr, num_steps).tolist()
    with _restored_afterwards(trainer) as optimizer:
        curve = _range_test(trainer, optimizer, lrs, smooth_beta, diverge_factor)
    if accel.num_processes > 1:
        # GPU kernels can differ in the last bits between ranks; one curve means one learning rate
        curve = broadcast_object_list([curve], from_process=0)[0]

    # the point that diverged is evidence for `diverged`, not part of the curve to read
    usable = len(curve.smoothed) - 1 if curve.diverged else len(curve.smoothed)
    steepest, min_div_10 = suggest_lrs(curve.lrs[:usable], curve.smoothed[:usable])
    if min_div_10 is None:
        raise TrainformersError(
            f"LR range test: the loss was {curve.losses[0]} at the first step (lr {curve.lrs[0]:.3g}); "
            "check the model and the data (train with a fixed learning rate to see)"
        )
    result = LRFinderResult(
        lrs=curve.lrs,
        losses=curve.losses,
        smoothed=curve.smoothed,
        suggestion=steepest if steepest is not None else min_div_10,
        steepest=steepest,
        min_div_10=min_div_10,
        diverged=curve.diverged,
    )
    if plot_path is not None:
        result.plot_path = _plot(result, Path(plot_path))
    return result


def suggest_lrs(lrs: list[float], smoothed: list[float]) -> tuple[float | None, float | None]:
    """Read `(steepest, min_div_10)` off a smoothed range-test curve.

    Only the points before the first non-finite loss count. `steepest` is the rate with the
    most negative `np.gradient` of the loss against log10(rate); the first and last 10% of the
    points (the moving average's noisy start, the turn towards divergence) and the points past
    the minimum are not candidates. None when fewer than 3 points or the loss never falls there.
    `min_div_10` is the rate at the minimum divided by 10; None without a finite point.
    """
    rates, losses = np.asarray(lrs, dtype=float), np.asarray(smoothed, dtype=float)
    finite = np.isfinite(losses)
    n = len(losses) if finite.all() else int(np.argmin(finite))
    if n == 0:
        return None, None
    rates, losses = rates[:n], losses[:n]
    lowest = int(np.argmin(losses))
    min_div_10 = float(rates[lowest] / 10)
    if n < 3:
        return None, min_div_10
    slopes = np.gradient(losses, np.log10(rates))
    trim = n // 10
    first, stop = trim, min(n - trim, lowest + 1)
    if stop - first < 1:  # the minimum comes early: search all the way down to it
        first, stop = 0, lowest + 1
    best = first + int(np.argmin(slopes[first:stop]))
    steepest = float(rates[best]) if slopes[best] < 0 else None
    return steepest, min_div_10


def _check_arguments(start_lr: float, end_lr: float, num_steps: int, smooth_beta: float, diverge_factor: float) -> None:
    if not (math.isfinite(start_lr) and start_lr > 0):
        raise ConfigError(f"find_lr: start_lr={start_lr} must be a positive number (the rates are log-spaced)")
    if not (math.isfinite(end_lr) and end_lr > start_lr):
        raise ConfigError(f"find_lr: end_lr={end_lr} must be above start_lr={start_lr}; widen the range")
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 2:
        raise ConfigError(f"find_lr: num_steps={num_steps!r} must be an integer of at least 2 (100 is usual)")
    if not 0 <= smooth_beta < 1:
        raise ConfigError(f"find_lr: smooth_beta={smooth_beta} must be in [0, 1) (0 means no smoothing; 0.98 is usual)")
    if not (math.isfinite(diverge_factor) and diverge_factor > 1):
        raise ConfigError(f"find_lr: diverge_factor={diverge_factor} must be a number above 1 (4 is usual)")


# ---- the test -----------------------------------------------------------------------------------


class _Curve:
    """The recorded curve; `add` smooths each loss and says when the test should stop."""

    def __init__(self, beta: float, diverge_factor: float) -> None:
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self.smoothed: list[float] = []
        self.diverged = False
        self._beta, self._factor = beta, diverge_factor
        self._average, self._best = 0.0, math.inf

    def add(self, lr: float, loss: float) -> bool:
        """Record one step; True when the smoothed loss diverged (the test should stop)."""
        self._average = self._beta * self._average + (1 - self._beta) * loss
        # bias correction: the average starts at 0, which would pull the first values down
        smooth = self._average / (1 - self._beta ** (len(self.losses) + 1))
        self.lrs.append(lr)
        self.losses.append(loss)
        self.smoothed.append(smooth)
        # the multiple of the best only means "blew up" for a positive loss
        if not math.isfinite(smooth) or (self._best > 0 and smooth > self._factor * self._best):
            self.diverged = True
        self._best = min(self._best, smooth)
        return self.diverged


def _range_test(
    trainer: Trainer, optimizer: torch.optim.Optimizer, lrs: list[float], beta: float, diverge_factor: float
) -> _Curve:
    args, accel, model = trainer.args, trainer.accelerator, trainer.model
    # every rank runs the whole global window itself: the batch (and its gradient noise) of a
    # real step, and no collective that ranks stopping at different steps could hang in; so the
    # kernel sees one rank (no count over ranks, no DDP average to undo)
    micro_per_step = args.gradient_accumulation_steps * accel.num_processes
    bases = [float(group.get("initial_lr", group["lr"])) for group in optimizer.param_groups]
    reference = next((base for base in bases if base > 0), None)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    kernel = StepKernel(
        accel,
        optimizer,
        None,
        params,
        max_grad_norm=args.max_grad_norm,
        ranks=1,
        items_across_ranks=False,
        always_count=trainer.compute_loss_func is not None,
    )
    curve = _Curve(beta, diverge_factor)
    batches = _endless(trainer.get_train_dataloader(), accel.device)
    optimizer.zero_grad(set_to_none=True)  # gradients left from before are not the test's to apply
    running, trainer.step_kernel = trainer.step_kernel, kernel  # training_step's backward goes through it
    try:
        for lr in lrs:
            for group, base in zip(optimizer.param_groups, bases):
                _set_lr(group, lr * base / reference if reference else lr)
            window = [next(batches) for _ in range(micro_per_step)]
            step = kernel.run(model, window, lambda b, n: trainer.training_step(model, b, n), trainer.count_items)
            if curve.add(lr, float(step.loss)):
                break
    finally:
        trainer.step_kernel = running
        batches.close()
    return curve


def _endless(dataloader: Any, device: torch.device) -> Iterator[Any]:
    """The dataloader's batches on `device`, epoch after epoch (each reshuffled as in training)."""
    sampler = getattr(dataloader, "sampler", None)
    for epoch in itertools.count():
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        empty = True
        for batch in dataloader:
            empty = False
            yield send_to_device(batch, device)
        if empty:
            raise DataError(
                "the LR range test got no batch from the train dataloader; is the train_dataset smaller than "
                "one batch, with dataloader_drop_last=True?"
            )


def _set_lr(group: dict[str, Any], value: float) -> None:
    if torch.is_tensor(group["lr"]):
        group["lr"].fill_(value)  # a tensor rate (capturable optimizers) stays a tensor
    else:
        group["lr"] = value


# ---- putting everything back --------------------------------------------------------------------


@contextmanager
def _restored_afterwards(trainer: Trainer) -> Iterator[torch.optim.Optimizer]:
    """Yield the trainer's bare optimizer (created if missing); on exit restore what training changes.

    Restored bit for bit: trainable parameters and buffers, gradients, every module's train/eval
    mode, the optimizer's state, param groups and attributes, the RNGs, the gradient scaler and
    the trainer's pending loss terms. An optimizer created here is dropped again.
    """
    created = trainer.optimizer is None
    optimizer = trainer.create_optimizer()
    if isinstance(optimizer, AcceleratedOptimizer):  # after a train(): step the optimizer itself
        optimizer = optimizer.optimizer
    try:
        snapshot = _Snapshot(trainer, optimizer)
        try:
            yield optimizer
        finally:
            snapshot.restore()
    finally:
        if created:
            trainer.optimizer = None


class _Snapshot:
    """Copies of what a training step changes; tensors go to the CPU, leaving the device its memory.

    Frozen parameters are not copied: no step changes them (and quantized ones may not copy).
    """

    def __init__(self, trainer: Trainer, optimizer: torch.optim.Optimizer) -> None:
        model = trainer.model
        self.trainer, self.optimizer = trainer, optimizer
        in_optimizer = [p for group in optimizer.param_groups for p in group["params"]]
        trainable = [p for p in model.parameters() if p.requires_grad]
        params = list({id(p): p for p in [*in_optimizer, *trainable]}.values())
        self.tensors = [(t, _cpu_copy(t)) for t in [*params, *model.buffers()]]
        self.grads = [(p, None if p.grad is None else _cpu_copy(p.grad)) for p in params]
        self.modes = [(module, module.training) for module in model.modules()]
        self.state = {p: {k: _stash(v) for k, v in s.items()} for p, s in optimizer.state.items()}
        self.groups = [
            {k: (v, list(v)) if k == "params" else _stash(v) for k, v in group.items()}
            for group in optimizer.param_groups
        ]
        self.attributes = {k: v for k, v in vars(optimizer).items() if k not in ("state", "param_groups")}
        self.rng = ckpt.rng_state()
        self.meter = copy.deepcopy(trainer.meter)
        scaler = trainer.accelerator.scaler
        self.scaler = copy.deepcopy(scaler.state_dict()) if scaler is not None else None

    @torch.no_grad()
    def restore(self) -> None:
        for tensor, saved in self.tensors:
            tensor.copy_(saved)
        for param, grad in self.grads:
            param.grad = None if grad is None else grad.to(param.device)
        for module, training in self.modes:
            module.training = training  # not .train(mode): that would recurse over the children
        optimizer = self.optimizer
        optimizer.state.clear()  # entries the test created go; the kept ones get their tensors back
        optimizer.state.update({p: {k: _unstash(v) for k, v in s.items()} for p, s in self.state.items()})
        for group, saved in zip(optimizer.param_groups, self.groups):
            params, members = saved["params"]
            params[:] = members
            group.clear()
            group.update({k: params if k == "params" else _unstash(v) for k, v in saved.items()})
        for name in [k for k in vars(optimizer) if k not in ("state", "param_groups")]:
            delattr(optimizer, name)  # e.g. `_opt_called`, which the scheduler's step wrapper sets
        for name, value in self.attributes.items():
            setattr(optimizer, name, value)
        ckpt.set_rng_state(self.rng)
        self.trainer.meter = self.meter
        if self.scaler:  # a disabled scaler's state is {} and can't be loaded
            self.trainer.accelerator.scaler.load_state_dict(self.scaler)


def _cpu_copy(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to("cpu", copy=True)


def _stash(value: Any) -> tuple[Any, Any]:
    """(the object, a copy of its value): tensors are put back in place, other values as copied."""
    return (value, _cpu_copy(value)) if torch.is_tensor(value) else (value, copy.deepcopy(value))


def _unstash(stashed: tuple[Any, Any]) -> Any:
    original, saved = stashed
    if torch.is_tensor(original):
        return original.copy_(saved)
    return saved


# ---- plot ---------------------------------------------------------------------------------------


def _plot(result: LRFinderResult, path: Path) -> Path:
    """Loss against learning rate (log axis), smoothed over raw, both suggestions marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .report import save_png

    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    ax.plot(result.lrs, result.losses, color="C0", alpha=0.25, linewidth=1, label="loss")
    ax.plot(result.lrs, result.smoothed, color="C0", label="smoothed")
    marks = [("steepest", result.steepest, "C1"), ("min / 10", result.min_div_10, "C2")]
    for name, lr, color in marks:
        if lr is not None:
            ax.axvline(lr, color=color, linestyle="--", label=f"{name}: {lr:.3g}")
    ax.set_xscale("log")
    # the y range of the curve before divergence (the blow-up would flatten the rest); above,
    # the smoothed curve and the first loss: raw spikes there are noise
    usable = len(result.lrs) - 1 if result.diverged and len(result.lrs) > 1 else len(result.lrs)
    low = [v for v in result.losses[:usable] + result.smoothed[:usable] if math.isfinite(v)]
    high = [v for v in result.smoothed[:usable] + result.losses[:1] if math.isfinite(v)]
    if low and high and max(high) > min(low):
        pad = 0.05 * (max(high) - min(low))
        ax.set_ylim(min(low) - pad, max(high) + pad)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title(f"LR range test: suggestion {result.suggestion:.3g}" + (" (diverged)" if result.diverged else ""))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()

    return save_png(fig, path)


def use_suggested_learning_rate(trainer: Trainer) -> float:
    """`learning_rate: auto`: run the range test on `trainer`, then set its suggestion as args.learning_rate.

    Raises:
        ConfigError: the trainer was given an optimizer (its learning rates are fixed).
    """
    if trainer.optimizer is not None:
        raise ConfigError("training.learning_rate='auto' can't be used with optimizers=(...) given; set a number")
    main = trainer.is_world_process_zero()
    trainer.args.learning_rate = 1.0  # a placeholder: the range test scales every group by the same factor
    plot = Path(trainer.args.output_dir) / "lr_find.png"
    if main:
        plot.parent.mkdir(parents=True, exist_ok=True)
    result = find_lr(trainer, plot_path=plot if main else None)
    trainer.args.learning_rate = float(result.suggestion)
    trainer.optimizer = None  # rebuilt with the suggested learning rate (its state was never changed)
    if main:
        print(f"learning_rate: auto -> {result.suggestion:.3g} (LR range test, plot in {plot})")
    return trainer.args.learning_rate
