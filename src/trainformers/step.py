"""The step kernel: one optimizer step over a window of micro-batches, the same for every loop.

`Trainer`, each direction of `CycleTrainer` and the LR range test call `StepKernel.run`. It is the
only place that counts label items over the window (and the ranks), skips the gradient all-reduce
on every micro-batch but the last, scales the backward, clips, steps the optimizer and the
scheduler (a plateau scheduler on evaluations, `step_on_metric`) and zeroes the gradients.

The arithmetic, for a window of k micro-batches on W ranks whose gradients DDP averages:

- With a label count n (`count_items`), each micro-batch's loss is its token-sum / n
  (`losses.window_share`, or `lm_loss(num_items_in_batch=n)`), so a rank's k losses sum to its
  part of the window mean. When n counts every rank's items, those parts sum to the mean over all
  ranks, and the backward is multiplied by W to undo DDP's average.
- Without a count (no labels: the model's own mean loss), each micro-batch weighs 1/k, and DDP's
  average over ranks is the right one.

Under DeepSpeed the engine accumulates: it divides every backward by its configured accumulation
count g (so the kernel multiplies by g, not k), averages over ranks as DDP does, and clips, steps
and zeroes inside the backward that ends a window. The kernel marks that backward
(`accel.sync_gradients`), reads the engine's gradient norm, and steps only the scheduler.

`WindowStep.loss` is always this rank's part of the window's mean loss: summed over the ranks
(`accelerator.reduce(..., "sum")`) it is the mean a log row shows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from .loop_utils import is_plateau

Batch = Any  # one micro-batch, as the loop's micro-step function takes it
MicroStep = Callable[[Batch, "torch.Tensor | None"], torch.Tensor]  # (batch, window items) -> detached loss
CountItems = Callable[[Batch], torch.Tensor]  # label items of one micro-batch; ValueError: no labels


@dataclass
class WindowStep:
    """What one `StepKernel.run` did.

    Attributes:
        loss: This rank's part of the window's mean loss (detached); None when the window was skipped.
        grad_norm: The gradient norm before clipping (a tensor), or None without clipping.
        finite: False when `check_finite` found a non-finite loss or gradient on some rank; the
            optimizer did not step (except under DeepSpeed, whose engine steps inside the backward).
    """

    loss: torch.Tensor | None
    grad_norm: torch.Tensor | None
    finite: bool = True


class NonFiniteGuard:
    """What a loop does with a window whose loss or gradient is not finite (`nan_policy`).

    `stop` raises `NonFiniteLossError` before the optimizer step, so the weights (and every
    checkpoint written later) are those of the last good step; `skip_step` drops the window's
    update and counts it, raising after `limit` skipped steps in a row; `ignore` steps anyway.
    """

    def __init__(self, policy: str, limit: int) -> None:
        self.policy, self.limit = policy, limit
        self.in_a_row = 0

    @property
    def checks(self) -> bool:
        return self.policy != "ignore"

    def stepped(self, done: WindowStep, step: int) -> bool:
        """True when `done` updated the model; raises under `stop`, or after too many skips."""
        from .errors import NonFiniteLossError

        if done.finite:
            self.in_a_row = 0
            return True
        what = f"loss {_value(done.loss)}, gradient norm {_value(done.grad_norm)}"
        if self.policy == "stop":
            raise NonFiniteLossError(
                f"optimizer step {step}: the {what} is not finite; stopped before the update, so the weights and "
                "checkpoints are those of the last good step; lower learning_rate, check the data, or set "
                "nan_policy: skip_step"
            )
        self.in_a_row += 1
        if self.in_a_row >= self.limit:
            raise NonFiniteLossError(
                f"optimizer step {step}: {self.in_a_row} steps in a row had a non-finite loss or gradient ({what}; "
                f"nan_skip_limit={self.limit}); stopped with the weights of the last good step; lower "
                "learning_rate or check the data"
            )
        return False


def _value(x: torch.Tensor | None) -> str:
    return "not computed" if x is None else f"{float(x):.4g}"


class StepKernel:
    """Backward, clip, step and zero the gradients of one optimizer, for windows of micro-batches.

    The micro-step function given to `run` does the forward and calls `kernel.backward(loss)`, which
    applies this window's scale; `Trainer.training_step` is one such function, so a subclass that
    overrides it keeps exact accumulation.

    Where Accelerate's wrappers add nothing (no fp16 scaler; no DeepSpeed, FSDP or XLA), the kernel
    makes the torch calls they would end in: `AcceleratedOptimizer.step`/`zero_grad` and
    `Accelerator.clip_grad_norm_` look up optional packages, parse versions and inspect signatures
    on every call (about 1 ms per step on this CPU, 7% of a small model's step), and
    `Accelerator.backward` reads the environment and divides by its accumulation count, 1 here
    (bench/step_overhead.py). In every other setting it defers to Accelerate.

    Args:
        accel: The run's `Accelerator`.
        optimizer: The optimizer (as `accel.prepare` returned it, or a plain torch optimizer).
        scheduler: The LR scheduler stepped after each optimizer step; a plateau scheduler steps
            only on `step_on_metric`. None for none.
        params: The parameters to clip (frozen ones too: a callback may unfreeze them mid-run).
        max_grad_norm: Clip the gradient norm to this; None or <= 0 for no clipping.
        ranks: Processes whose gradients the model wrapper averages (1 when each rank steps alone).
        items_across_ranks: Sum the label count over the ranks (`average_tokens_across_devices`).
        always_count: Count label items even for a window of one micro-batch on one rank (whose
            mean needs no count), e.g. because a `compute_loss_func` wants `num_items_in_batch`.
        check_finite: Before the optimizer step, check that the window's loss and gradient norm are
            finite on every rank (one host sync, and one all-reduce of a flag across ranks); a window
            that is not skips the step and comes back with `finite=False` (`NonFiniteGuard`).
    """

    def __init__(
        self,
        accel: Any,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        params: Iterable[torch.nn.Parameter],
        *,
        max_grad_norm: float | None,
        ranks: int,
        items_across_ranks: bool,
        always_count: bool = False,
        check_finite: bool = False,
    ) -> None:
        from accelerate.utils import DistributedType

        self.accel, self.optimizer, self.scheduler = accel, optimizer, scheduler
        self.params = list(params)
        self.max_grad_norm = max_grad_norm if max_grad_norm and max_grad_norm > 0 else None
        self.ranks = ranks
        self.items_across_ranks = items_across_ranks and ranks > 1
        self.always_count = always_count or self.items_across_ranks
        inner = getattr(optimizer, "optimizer", None)
        # a torch optimizer with a scaler that Accelerate does not manage (the LR range test under fp16)
        self.scaler = accel.scaler if inner is None else None
        plain = (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU)
        if inner is None:
            self.direct: torch.optim.Optimizer | None = optimizer if self.scaler is None else None
        else:
            direct = (
                accel.scaler is None and accel.distributed_type in plain and isinstance(inner, torch.optim.Optimizer)
            )
            self.direct = inner if direct else None
        self.direct_backward = self.direct is not None and accel.gradient_accumulation_steps == 1
        # DeepSpeed's engine divides each backward by its accumulation count and steps itself
        self.engine_accumulation = (
            int(accel.state.deepspeed_plugin.deepspeed_config["gradient_accumulation_steps"])
            if accel.distributed_type == DistributedType.DEEPSPEED
            else None
        )
        self.check_finite = check_finite
        self.scale = 1.0  # the current window's backward multiplier (see the module docstring)
        self.learning_rate: Any = None  # the first group's rate in the last step taken (what a log row shows)
        self.skipped = False  # the last step was skipped (fp16 overflow); never without a scaler

    # ---- the window -------------------------------------------------------------------------

    def count_items(self, window: Sequence[Batch], count: CountItems) -> torch.Tensor | None:
        """Label items in the whole window, summed over the ranks when asked (a tensor, no host sync).

        Returns None when the batches hold no labels (the model or `compute_loss` makes the loss).
        """
        try:
            total = sum(count(batch) for batch in window)
        except ValueError:
            return None
        total = torch.as_tensor(total, device=self.accel.device)
        if self.items_across_ranks:
            total = self.accel.reduce(total, reduction="sum")
        return total

    def run(
        self,
        model: torch.nn.Module,
        window: Sequence[Batch],
        micro_step: MicroStep,
        count: CountItems,
        *,
        on_micro: Callable[[Batch, torch.Tensor, bool], None] | None = None,
        before_step: Callable[[], None] | None = None,
        after_step: Callable[[], None] | None = None,
        skip_empty: bool = False,
    ) -> WindowStep:
        """One optimizer step over `window`: forward/backward each micro-batch, clip, step, schedule, zero.

        Args:
            model: The (wrapped) model: `no_sync(model)` skips the all-reduce of non-final micro-batches.
            window: The micro-batches of this optimizer step, on this rank.
            micro_step: `fn(batch, num_items) -> detached loss`: the forward, then `self.backward(loss)`.
            count: Label items of one micro-batch (`losses.count_label_items`).
            on_micro: Called after each micro-batch with (batch, its share of the logged loss, last).
            before_step / after_step: Called around the optimizer step (callback events).
            skip_empty: Take no step when the window has no label item on any rank (one host sync).
        """
        k = len(window)
        items = self.count_items(window, count) if self.always_count or k > 1 or skip_empty else None
        if skip_empty and items is not None and int(items) == 0:
            return WindowStep(None, None)
        global_count = items is not None and self.items_across_ranks
        self.scale = float(self.ranks) if global_count else (1.0 / k if items is None and k > 1 else 1.0)
        if self.engine_accumulation is not None:
            self.scale *= self.engine_accumulation  # undo the engine's own division
        share = (1.0 if global_count or self.ranks == 1 else 1.0 / self.ranks) * (1.0 / k if items is None else 1.0)
        total: torch.Tensor | None = None
        for i, batch in enumerate(window):
            last = i == k - 1
            if self.engine_accumulation is not None:
                self.accel.sync_gradients = last  # the engine steps inside the backward that ends the window
            with self.accel.no_sync(model) if not last else nullcontext():
                loss = micro_step(batch, items)
            part = loss * share if share != 1.0 else loss
            total = part if total is None else total + part
            if on_micro is not None:
                on_micro(batch, part, last)
        grad_norm = self.clip() if self.max_grad_norm is not None else None
        if self.check_finite and not self.finite(total, grad_norm):
            if self.engine_accumulation is None:
                self.zero_grad()  # the update never happens: the weights stay those of the last good step
                return WindowStep(total, grad_norm, finite=False)
            # DeepSpeed's engine stepped inside the last backward; the loop still stops before any save
            if self.scheduler is not None and not is_plateau(self.scheduler):
                self.scheduler.step()
            return WindowStep(total, grad_norm, finite=False)
        if before_step is not None:
            before_step()
        self.step()
        if after_step is not None:
            after_step()
        self.zero_grad()
        return WindowStep(total, grad_norm)

    # ---- the pieces -------------------------------------------------------------------------

    def backward(self, loss: torch.Tensor) -> None:
        """`loss.backward()` with this window's scale, through Accelerate only where it scales or hands on."""
        if self.scale != 1.0:
            loss = loss * self.scale
        if self.direct_backward:
            loss.backward()
        elif self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            self.accel.backward(loss)

    def clip(self) -> torch.Tensor:
        """Clip the gradient norm to `max_grad_norm`; returns the total norm before clipping (a tensor)."""
        max_norm = self.max_grad_norm or 0.0  # run() only clips when it is set
        if self.engine_accumulation is not None:
            # the engine clipped to its gradient_clipping (= max_grad_norm) in the last backward;
            # Accelerate hands back that step's norm before clipping, as a float
            return torch.as_tensor(float(self.accel.clip_grad_norm_(self.params, max_norm) or 0.0))
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if self.direct is None and self.scaler is None:
            return self.accel.clip_grad_norm_(self.params, max_norm)
        return torch.nn.utils.clip_grad_norm_(self.params, max_norm)

    def finite(self, loss: torch.Tensor | None, grad_norm: torch.Tensor | None) -> bool:
        """Whether the window's loss and gradient norm are finite on every rank.

        Under an fp16 grad scaler only the loss is checked: an overflowing gradient is the scaler's
        business (it skips that step and lowers its scale).
        """
        checks = [] if loss is None else [torch.isfinite(loss).all()]
        if self.scaler is None and self.engine_accumulation is None:
            if grad_norm is None:  # no clipping: the norm is computed here, once per step
                grads = [p.grad for p in self.params if p.grad is not None]
                grad_norm = torch.nn.utils.get_total_norm(grads) if grads else None
            if grad_norm is not None:
                checks.append(torch.isfinite(grad_norm).all())
        elif grad_norm is not None and self.engine_accumulation is not None:
            checks.append(torch.isfinite(torch.as_tensor(grad_norm)).all())
        if not checks:
            return True
        ok = torch.stack([c.to(self.accel.device) for c in checks]).all()
        if self.ranks > 1 or self.accel.num_processes > 1:
            bad = self.accel.reduce((~ok).to(torch.float32).reshape(1), reduction="sum")
            return not bool(bad.item() > 0)
        return bool(ok)

    def step(self) -> None:
        """The optimizer step, then the scheduler's (unless the step was skipped or it is a plateau one)."""
        self.learning_rate = self.optimizer.param_groups[0]["lr"]  # before the scheduler moves it on
        if self.scaler is not None:
            scale = self.scaler.get_scale()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.skipped = self.scaler.get_scale() < scale
        else:
            (self.direct or self.optimizer).step()
            self.skipped = self.direct is None and self.accel.optimizer_step_was_skipped
        if self.scheduler is not None and not self.skipped and not is_plateau(self.scheduler):
            self.scheduler.step()

    def zero_grad(self) -> None:
        (self.direct or self.optimizer).zero_grad(set_to_none=True)

    def step_on_metric(self, value: float) -> None:
        """Step a plateau (metric-driven) scheduler with an evaluation result; others ignore it."""
        if self.scheduler is not None and is_plateau(self.scheduler):
            self.scheduler.step(value)
