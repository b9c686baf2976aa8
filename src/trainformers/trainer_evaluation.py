"""`evaluate`, `predict` and their parts: the evaluation half of the HF `Trainer` API.

`Trainer` inherits these methods (a subclass overrides them as in transformers: the QA example's
`evaluate`/`predict`, a custom `prediction_step`). They use the trainer's `args`, `accelerator`,
`model`, `compute_loss`, `count_items`, `label_names`, `compute_metrics`, callbacks and state.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from transformers.trainer_utils import PredictionOutput

from .dataloaders import make_dataloader, named_eval_set
from .evaluation import EvalAccumulator, prediction_outputs
from .loop_utils import safe_len, speed_metrics, unwrap_peft
from .sharded import in_lockstep


class EvaluationMethods:
    """The evaluation methods of `Trainer` (see the module docstring for what they rely on)."""

    args: Any
    accelerator: Any
    model: nn.Module
    state: Any
    control: Any
    callback_handler: Any
    eval_dataset: Any
    data_collator: Callable
    compute_metrics: Callable | None
    preprocess_logits_for_metrics: Callable | None
    label_names: list[str]
    can_return_loss: bool
    _eval_dataloaders: dict[str, DataLoader]
    _memory: Any  # memory.MemoryTracker
    # methods of Trainer these call
    _remove_unused_columns: Callable[[Any, str], Any]
    log: Callable[..., None]
    count_items: Callable[[Any], torch.Tensor]
    compute_loss: Callable[..., Any]

    def get_eval_dataloader(self, eval_dataset: Any = None) -> DataLoader:
        """The evaluation DataLoader of a dataset, of one of the Trainer's eval sets by name, or (None) of
        the Trainer's; with `dataloader_persistent_workers` its workers live on between evaluations."""
        key = eval_dataset if isinstance(eval_dataset, str) else "eval" if eval_dataset is None else None
        if key in self._eval_dataloaders:
            return self._eval_dataloaders[key]
        dataset = named_eval_set(self.eval_dataset, eval_dataset)
        dataset = self._remove_unused_columns(dataset, "eval_dataset")
        args, accel = self.args, self.accelerator
        loader = make_dataloader(
            dataset, args, args.per_device_eval_batch_size, self.data_collator, drop_last=args.dataloader_drop_last
        )
        # uneven shards: no rank evaluates padded duplicates, so sums and outputs stay exact
        even, accel.even_batches = accel.even_batches, False
        try:
            prepared = accel.prepare(loader)
        finally:
            accel.even_batches = even
        if key is not None and args.dataloader_persistent_workers and args.dataloader_num_workers > 0:
            self._eval_dataloaders[key] = prepared
        return prepared

    def get_test_dataloader(self, test_dataset: Any) -> DataLoader:
        return self.get_eval_dataloader(test_dataset)

    # ---- evaluation ---------------------------------------------------------------------

    def evaluate(
        self, eval_dataset: Any = None, ignore_keys: list[str] | None = None, metric_key_prefix: str = "eval"
    ) -> dict[str, float]:
        """Evaluate on `eval_dataset` (a dataset, or the name of one of the Trainer's eval sets) or the
        Trainer's; a dict of sets is evaluated set by set, each prefixed with its name."""
        given = eval_dataset is not None
        sets = eval_dataset if given else self.eval_dataset
        if isinstance(sets, dict):
            metrics: dict[str, float] = {}
            for name, subset in sets.items():
                metrics.update(self.evaluate(subset if given else name, ignore_keys, f"{metric_key_prefix}_{name}"))
            return metrics
        tracking = self._memory.start("eval")
        dataloader = self.get_eval_dataloader(eval_dataset)
        start = time.perf_counter()
        loss_only = True if self.compute_metrics is None else None  # no logits kept that nothing reads
        output = self.evaluation_loop(dataloader, "Evaluation", loss_only, ignore_keys, metric_key_prefix)
        output.metrics.update(speed_metrics(metric_key_prefix, start, output.num_samples, safe_len(dataloader)))
        if self.state.epoch is not None:
            output.metrics["epoch"] = self.state.epoch  # HF returns it with the metrics
        if tracking:
            output.metrics.update(self._memory.stop("eval"))
        self.log(output.metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics=output.metrics)
        return output.metrics

    def predict(
        self, test_dataset: Any, ignore_keys: list[str] | None = None, metric_key_prefix: str = "test"
    ) -> PredictionOutput:
        """Predictions (and metrics when labels are present) over `test_dataset`."""
        tracking = self._memory.start("test")
        dataloader = self.get_test_dataloader(test_dataset)
        start = time.perf_counter()
        output = self.evaluation_loop(dataloader, "Prediction", False, ignore_keys, metric_key_prefix)
        output.metrics.update(speed_metrics(metric_key_prefix, start, output.num_samples, safe_len(dataloader)))
        if tracking:
            output.metrics.update(self._memory.stop("test"))
        self.control = self.callback_handler.on_predict(self.args, self.state, self.control, metrics=output.metrics)
        return PredictionOutput(predictions=output.predictions, label_ids=output.label_ids, metrics=output.metrics)

    def evaluation_loop(
        self,
        dataloader: DataLoader,
        description: str,
        prediction_loss_only: bool | None = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ) -> Any:
        """Run `prediction_step` over a dataloader; keep logits only when something will use them."""
        args, accel = self.args, self.accelerator
        if prediction_loss_only is None:
            prediction_loss_only = args.prediction_loss_only
        keep_outputs = not prediction_loss_only  # evaluate() passes True when nothing will read them
        # the bare model: ranks may run different numbers of batches, and a DDP forward would
        # wait on the others (buffer broadcast); evaluation needs no gradient sync
        model = accel.unwrap_model(getattr(self, "model_wrapped", self.model), keep_torch_compile=True)
        model.eval()
        if (args.bf16_full_eval or args.fp16_full_eval) and not args.do_train and not hasattr(self, "model_wrapped"):
            # as in HF: a one-way cast, only for evaluation-only use (it would cost a trained
            # model its fp32 bits)
            model = model.to(torch.bfloat16 if args.bf16_full_eval else torch.float16)
        acc = EvalAccumulator(
            world_size=accel.num_processes,
            keep_outputs=keep_outputs,
            include_inputs="inputs" in args.include_for_metrics,
            include_losses="loss" in args.include_for_metrics,
            batch_metrics=self.compute_metrics if args.batch_eval_metrics else None,
            accumulation_steps=args.eval_accumulation_steps,
            concat_batches=args.eval_do_concat_batches,
            return_outputs=description == "Prediction",
        )
        self.callback_handler.eval_dataloader = dataloader
        shards = getattr(self, "_shards", None)
        lockstep = shards is not None and shards.collective_forward and accel.num_processes > 1
        for inputs, real in in_lockstep(dataloader, accel) if lockstep else ((b, True) for b in dataloader):
            if not real:  # a sharded model's forward for the other ranks; nothing of it is kept
                self.prediction_step(model, inputs, True, ignore_keys)
                continue
            try:  # counted first: a compute_loss override may pop the labels
                n_items = self.count_items(inputs)
            except ValueError:
                n_items = None
            loss, logits, labels = self.prediction_step(model, inputs, not keep_outputs, ignore_keys)
            if logits is not None and self.preprocess_logits_for_metrics is not None:
                logits = self.preprocess_logits_for_metrics(logits, labels)
            acc.add(inputs, loss, n_items, logits, labels)
            self.control = self.callback_handler.on_prediction_step(args, self.state, self.control)
        return acc.finish(accel, self.compute_metrics, metric_key_prefix)

    def prediction_step(
        self, model: nn.Module, inputs: dict[str, Any], prediction_loss_only: bool, ignore_keys: list[str] | None = None
    ) -> tuple[torch.Tensor | None, Any, Any]:
        """(loss, logits, labels) for one batch, without gradients (HF semantics).

        The labels are read before the loss is computed (a `compute_loss` override may pop them); a model
        that makes its loss without labels (`return_loss`, e.g. CLIP) gets one too."""
        has_labels = bool(self.label_names) and all(inputs.get(name) is not None for name in self.label_names)
        labels = tuple(inputs.get(name) for name in self.label_names) if has_labels else None
        return_loss = inputs.get("return_loss", self.can_return_loss)
        with_loss = has_labels or bool(return_loss)
        if ignore_keys is None:
            ignore_keys = getattr(getattr(unwrap_peft(self.model), "config", None), "keys_to_ignore_at_inference", [])
        with torch.no_grad(), self.accelerator.autocast():
            if with_loss:
                loss, outputs = self.compute_loss(model, inputs, return_outputs=True)
                loss = loss.detach().float()
            else:
                loss, outputs = None, model(**inputs)
        if prediction_loss_only:
            return loss, None, None
        return loss, *prediction_outputs(outputs, labels, with_loss, ignore_keys)
