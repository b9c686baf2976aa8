"""`TrainerCallback`: the training events every callback implements.

The event names, signatures and control semantics are those of Hugging Face's `TrainerCallback`,
so an existing HF callback works after changing its import. The callbacks that ship with the
package (`trainformers.callbacks`, `trainformers.hub`, `trainformers.report`) subclass it.
"""

from __future__ import annotations

from typing import Any

from .state import TrainerControl, TrainerState

# `args` is a TrainingArguments (or CycleTrainingArguments); typed as Any so that this layer
# does not import the config package and any object with the same attribute names works.
Args = Any


class TrainerCallback:
    """Base class: override the events you need; each does nothing by default.

    Every event is called as `event(args, state, control, **kwargs)` with:

    - `args`: the training arguments; `state`: the `TrainerState`;
    - `control`: the `TrainerControl`. Set its flags to steer the loop; return it (or nothing,
      the object is shared) — a returned `TrainerControl` replaces the loop's.

    and these keyword arguments (take the ones you need, keep `**kwargs` for the rest):

    - `model`: the model being trained;
    - `processing_class`: the tokenizer/processor, also passed as `tokenizer` for old callbacks;
    - `optimizer`, `lr_scheduler`: may be None before training starts;
    - `train_dataloader`, `eval_dataloader`: the current ones, or None;
    - `metrics`: the evaluation/prediction metrics, in `on_evaluate` and `on_predict` only;
    - `logs`: the row being logged, in `on_log` only. Don't modify it; copy it first;
    - `log_row`: a function that logs a row of the callback's own at the current step, as
      `Trainer.log` does (into `state.log_history`, log.jsonl, the printed rows and the trackers).
    """

    def on_init_end(
        self, args: Args, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl | None:
        """At the end of the trainer's `__init__`."""

    def on_train_begin(
        self, args: Args, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl | None:
        """At the start of `train()`, after the state is set up (or restored from a checkpoint)."""

    def on_train_end(
        self, args: Args, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl | None:
        """At the end of `train()`."""

    def on_epoch_begin(
        self, args: Args, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl | None:
        """At the start of an epoch."""

    def on_epoch_end(
        self, args: Args, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl | None:
        """At the end of an epoch."""

    def on_step_begin(
        self, args: Args, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl | None:
        """At the start of an optimizer step (before its first micro-batch)."""

    def on_pre_optimizer_step(
        self, args: Args, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl | None:
        """After gradient clipping, before `optimizer.step()`: gradients can be inspected."""

    def on_optimizer_step(
        self, args: Args, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl | None:
        """After `optimizer.step()`, before the gradients are zeroed."""

    def on_substep_end(
        self, args: Args, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl | None:
        """After each micro-batch of a step but the last (gradient accumulation)."""

    def on_step_end(
        self, args: Args, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl | None:
        """At the end of an optimizer step; `state.global_step` already counts it."""

    def on_evaluate(
        self, args: Args, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl | None:
        """After an evaluation; `metrics` holds its results."""

    def on_predict(
        self, args: Args, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl | None:
        """After a successful `predict()`; `metrics` holds its results."""

    def on_save(self, args: Args, state: TrainerState, control: TrainerControl, **kwargs: Any) -> TrainerControl | None:
        """After a checkpoint is saved."""

    def on_log(self, args: Args, state: TrainerState, control: TrainerControl, **kwargs: Any) -> TrainerControl | None:
        """After a row is logged; `logs` holds it."""

    def on_prediction_step(
        self, args: Args, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl | None:
        """After each batch of an evaluation or prediction loop."""

    def on_push_begin(
        self, args: Args, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl | None:
        """Before pushing the model to the Hugging Face Hub."""
