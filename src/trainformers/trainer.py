"""`Trainer`: the Hugging Face `Trainer` API on a lean, readable loop over Accelerate.

The loop lives in one method, `Trainer._train_loop`; everything it calls is a small function
here or in a sibling module (losses, optim, checkpoint, callbacks). Code written for the HF
Trainer runs after changing the import, including `tokenizer=` and subclassed `compute_loss`.
"""

from __future__ import annotations

import inspect
import math
import time
import warnings
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.optimizer import AcceleratedOptimizer
from torch import nn
from torch.utils.data import DataLoader, IterableDataset
from transformers.trainer_utils import EvalPrediction, PredictionOutput, TrainOutput

from . import checkpoint as ckpt
from .accel import build_accelerator
from .callbacks import CallbackHandler, TrainerCallback, default_callbacks
from .config import TrainingArguments
from .errors import CheckpointError, ConfigError, DataError, TrainformersError
from .evaluation import EvalAccumulator
from .flops import Peak, model_flops, peak_tflops
from .loop_utils import (
    OptimizerStep,
    SinceLog,
    TermMeans,
    after_evaluation,
    batch_size_info,
    default_collator,
    is_plateau,
    loss_shifts_labels,
    prepare_model,
    row_lengths,
    safe_len,
    scalar_config,
    seed_everything,
    speed_metrics,
    take,
    unwrap_peft,
)
from .losses import count_label_items, lm_loss, window_share
from .optim import create_optimizer, create_scheduler
from .sampling import EpochSampler, IndexedDataset, SeededCollate, skip_first_batches
from .state import TrainerControl, TrainerState


class Trainer:
    """Train, evaluate and predict with any model whose forward returns a loss.

    The loop, in pseudocode (`_train_loop`):

        for epoch in epochs:                          # resumed runs start mid-epoch by index
            for window in batches of `gradient_accumulation_steps` micro-batches:
                n = label items in the whole window (all ranks)      # the one normaliser
                for micro in window:                   # no DDP sync until the last one
                    loss = compute_loss(micro) * share  # sum over the window == mean over n
                    backward(loss)
                clip; optimizer.step(); scheduler.step(); zero_grad
                global_step += 1
                callbacks decide: log / evaluate / save / stop

    Args mirror `transformers.Trainer`: model, args, data_collator, train_dataset,
    eval_dataset (one or a dict), processing_class (alias `tokenizer`), model_init,
    compute_loss_func, compute_metrics, callbacks, optimizers, optimizer_cls_and_kwargs,
    preprocess_logits_for_metrics.
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        args: TrainingArguments | None = None,
        data_collator: Callable | None = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        model_init: Callable[..., nn.Module] | None = None,
        compute_loss_func: Callable | None = None,
        compute_metrics: Callable[[EvalPrediction], dict] | None = None,
        callbacks: list[TrainerCallback | type[TrainerCallback]] | None = None,
        optimizers: tuple[torch.optim.Optimizer | None, Any] = (None, None),
        optimizer_cls_and_kwargs: tuple[type[torch.optim.Optimizer], dict[str, Any]] | None = None,
        preprocess_logits_for_metrics: Callable | None = None,
        tokenizer: Any = None,
        peft_config: Any = None,
    ) -> None:
        self.args = args if args is not None else TrainingArguments(output_dir="trainer_output")
        if tokenizer is not None:
            warnings.warn("Trainer(tokenizer=...) is deprecated; use processing_class=", FutureWarning, stacklevel=2)
            processing_class = processing_class if processing_class is not None else tokenizer
        seed_everything(self.args)
        if self.args.log_level != "passive":
            from transformers.utils import logging as hf_logging

            hf_logging.set_verbosity(hf_logging.get_log_levels_dict()[self.args.log_level])
        self.accelerator = build_accelerator(self.args)
        if model is None and model_init is None:
            raise ConfigError("Trainer needs a model: pass model=... or model_init=...")
        self.model_init = model_init
        self.peft_config = peft_config
        self.model = model if model is not None else self._call_model_init()
        self.model = self._maybe_apply_peft(self.model)
        self._prepare_model_once(self.model)
        self.processing_class = processing_class
        self.data_collator = data_collator if data_collator is not None else default_collator(processing_class)
        self.train_dataset, self.eval_dataset = train_dataset, eval_dataset
        self.compute_loss_func, self.compute_metrics = compute_loss_func, compute_metrics
        self.preprocess_logits_for_metrics = preprocess_logits_for_metrics
        self.optimizer, self.lr_scheduler = optimizers
        self.optimizer_cls_and_kwargs = optimizer_cls_and_kwargs
        self._loss_terms = TermMeans()
        self._stepper: OptimizerStep | None = None  # the running train()'s backward/clip/step path
        self.state = TrainerState(
            is_local_process_zero=self.is_local_process_zero(), is_world_process_zero=self.is_world_process_zero()
        )
        self.control = TrainerControl()
        self.callback_handler = CallbackHandler(
            default_callbacks(self.args, self.accelerator) + list(callbacks or []),
            self.model,
            processing_class,
            self.optimizer,
            self.lr_scheduler,
        )
        self.control = self.callback_handler.on_init_end(self.args, self.state, self.control)

    # ---- model helpers ----------------------------------------------------------------------

    def _call_model_init(self, trial: Any = None) -> nn.Module:
        params = inspect.signature(self.model_init).parameters
        model = self.model_init(trial) if len(params) == 1 else self.model_init()
        if model is None:
            raise ConfigError("model_init returned None; it must return a model")
        return model

    def _maybe_apply_peft(self, model: nn.Module) -> nn.Module:
        """Wrap the model with the adapters of `peft_config` (a peft config or the run file's dict)."""
        if not self.peft_config:
            return model
        from .models.peft import apply_peft, build_peft_config

        return apply_peft(model, build_peft_config(self.peft_config), echo=None)  # the group table shows it

    def _prepare_model_once(self, model: nn.Module) -> None:
        """Gradient checkpointing and device placement, done once per model object."""
        prepare_model(model, self.args, self.accelerator.device)
        unwrapped = unwrap_peft(model)
        self._shift_labels = loss_shifts_labels(unwrapped)
        from transformers.utils import find_labels

        self.label_names = self.args.label_names or find_labels(unwrapped.__class__) or ["labels"]
        self._flops = model_flops(unwrapped)
        self._peak: Peak | None | bool = False  # looked up at the first log row (may measure once)

    @property
    def tokenizer(self) -> Any:
        """Deprecated alias of `processing_class`."""
        return self.processing_class

    def is_world_process_zero(self) -> bool:
        return self.accelerator.is_main_process

    def is_local_process_zero(self) -> bool:
        return self.accelerator.is_local_main_process

    def add_callback(self, callback: TrainerCallback | type[TrainerCallback]) -> None:
        self.callback_handler.add_callback(callback)

    def pop_callback(self, callback: TrainerCallback | type[TrainerCallback]) -> TrainerCallback | None:
        return self.callback_handler.pop_callback(callback)

    def remove_callback(self, callback: TrainerCallback | type[TrainerCallback]) -> None:
        self.callback_handler.remove_callback(callback)

    def floating_point_ops(self, inputs: Mapping[str, Any]) -> float:
        """Model FLOPs of one forward+backward over `inputs` (6N + 12LHT per token; flops.py)."""
        ids = inputs.get("input_ids", inputs.get("inputs_embeds"))
        if ids is None or ids.dim() < 2:
            return 0.0
        return self._flops.per_batch(ids.shape[0] * ids.shape[1], ids.shape[1])

    def peak_flops(self) -> Peak | None:
        """The peak TFLOP/s of one device for this run's precision (flops.peak_tflops), looked up once."""
        if self._peak is False:
            dtype = torch.bfloat16 if self.args.bf16 else torch.float16 if self.args.fp16 else torch.float32
            if self.accelerator.mixed_precision == "no":
                dtype = torch.float32  # bf16 asked for but not available: training runs in fp32
            self._peak = peak_tflops(self.accelerator.device, dtype, self.args.peak_tflops)
        return self._peak

    # ---- data -------------------------------------------------------------------------------

    def _remove_unused_columns(self, dataset: Any, description: str) -> Any:
        if not self.args.remove_unused_columns or not hasattr(dataset, "column_names"):
            return dataset
        forward = inspect.signature(unwrap_peft(self.model).forward).parameters
        keep = set(forward) | set(self.label_names) | {"label", "label_ids", "labels"}
        columns = dataset.column_names
        if isinstance(columns, dict):  # a DatasetDict slipped through
            raise DataError(f"{description} is a DatasetDict; pass one split, e.g. dataset['{next(iter(columns))}']")
        unused = [c for c in columns if c not in keep]
        if unused and len(unused) == len(columns):
            raise DataError(
                f"{description} has no column the model's forward takes (columns {columns}); tokenize it first, "
                "or set remove_unused_columns=False with a collator that builds the inputs"
            )
        return dataset.remove_columns(unused) if unused else dataset

    def get_train_dataloader(self) -> DataLoader:
        """The training DataLoader (not yet prepared by Accelerate)."""
        if self.train_dataset is None:
            raise DataError("Trainer.train() needs a train_dataset; pass train_dataset=... to Trainer")
        dataset = self._remove_unused_columns(self.train_dataset, "train_dataset")
        sampler = None
        if not isinstance(dataset, IterableDataset):
            if len(dataset) == 0:
                raise DataError("train_dataset is empty (0 rows); check the data source and any filtering")
            lengths = None
            if self.args.group_by_length:
                lengths = row_lengths(dataset, self.args.length_column_name)
            seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
            sampler = EpochSampler(
                len(dataset),
                seed,
                shuffle=getattr(self.args, "train_sampling_strategy", "random") != "sequential",
                lengths=lengths,
                batch_size=self.args.per_device_train_batch_size * self.accelerator.num_processes,
            )
            dataset, collate = IndexedDataset(dataset), SeededCollate(self.data_collator, seed)
        else:
            collate = self.data_collator
        return self._dataloader(
            dataset, self.args.per_device_train_batch_size, sampler, self.args.dataloader_drop_last, collate
        )

    def get_eval_dataloader(self, eval_dataset: Any = None) -> DataLoader:
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if dataset is None:
            raise DataError("evaluate() needs an eval_dataset; pass eval_dataset=... to Trainer or evaluate()")
        dataset = self._remove_unused_columns(dataset, "eval_dataset")
        loader = self._dataloader(dataset, self.args.per_device_eval_batch_size, None, False)
        accel = self.accelerator
        # uneven shards: no rank evaluates padded duplicates, so sums and outputs stay exact
        even, accel.even_batches = accel.even_batches, False
        try:
            return accel.prepare(loader)
        finally:
            accel.even_batches = even

    def get_test_dataloader(self, test_dataset: Any) -> DataLoader:
        return self.get_eval_dataloader(test_dataset)

    def _dataloader(
        self, dataset: Any, batch_size: int, sampler: Any, drop_last: bool, collate: Callable | None = None
    ) -> DataLoader:
        workers = self.args.dataloader_num_workers
        generator = torch.Generator()
        generator.manual_seed(self.args.seed)  # worker seeds without drawing on the global RNG
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=collate or self.data_collator,
            drop_last=drop_last,
            num_workers=workers,
            pin_memory=self.args.dataloader_pin_memory,
            persistent_workers=self.args.dataloader_persistent_workers and workers > 0,
            prefetch_factor=self.args.dataloader_prefetch_factor if workers > 0 else None,
            generator=generator,
        )

    # ---- optimizer --------------------------------------------------------------------------

    def create_optimizer(self) -> torch.optim.Optimizer:
        if self.optimizer is None:
            self.optimizer = create_optimizer(
                self.model, self.args, self.accelerator.device, self.optimizer_cls_and_kwargs
            )
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None) -> Any:
        if self.lr_scheduler is None:
            self.lr_scheduler = create_scheduler(optimizer or self.optimizer, self.args, num_training_steps)
        return self.lr_scheduler

    def create_optimizer_and_scheduler(self, num_training_steps: int) -> None:
        self.create_optimizer()
        self.create_scheduler(num_training_steps, self.optimizer)

    # ---- loss -------------------------------------------------------------------------------

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ) -> Any:
        """The loss of one micro-batch (HF signature).

        With `num_items_in_batch` (the accumulation window's label count) the result is this
        micro-batch's share of the window mean; without it, the micro-batch mean.
        """
        labels = None
        if self.compute_loss_func is not None or self.args.label_smoothing_factor > 0:
            labels = inputs.get("labels")
        model_inputs = {k: v for k, v in inputs.items() if k != "labels"} if labels is not None else inputs
        outputs = model(**model_inputs)
        terms = outputs.get("loss_terms") if isinstance(outputs, Mapping) else None
        if terms and model.training:
            self._loss_terms.add(terms)  # e.g. MoE router losses: logged beside the loss
        if labels is not None and self.compute_loss_func is not None:
            loss = self.compute_loss_func(outputs, labels, num_items_in_batch=num_items_in_batch)
        elif labels is not None:
            logits = outputs["logits"] if isinstance(outputs, Mapping) else outputs[0]
            loss = lm_loss(
                logits,
                labels,
                shift=self._shift_labels,
                num_items_in_batch=num_items_in_batch,
                label_smoothing=self.args.label_smoothing_factor,
            )
        else:
            loss = (
                outputs.get("loss")
                if isinstance(outputs, Mapping)
                else (outputs[0] if isinstance(outputs, tuple) else None)
            )
            if loss is None:
                raise TrainformersError(
                    f"the model's forward returned no loss (got keys {list(outputs.keys()) if isinstance(outputs, Mapping) else type(outputs).__name__}); "
                    f"put labels in the batch ({', '.join(self.label_names)}) or pass compute_loss_func="
                )
            if num_items_in_batch is not None:
                loss = window_share(loss, self._micro_items(inputs), num_items_in_batch)
        return (loss, outputs) if return_outputs else loss

    def _micro_items(self, inputs: Mapping[str, Any]) -> torch.Tensor:
        return count_label_items(inputs, shift=self._shift_labels, label_names=self.label_names)

    def _compute_loss_is_overridden(self) -> bool:
        return type(self).compute_loss is not Trainer.compute_loss

    def training_step(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Forward and backward of one micro-batch; returns its detached share of the window loss."""
        if not (model.training and self.model.training):
            model.train()  # after evaluation or a callback's eval(); HF calls it every micro-step (~0.3 ms)
        with self.accelerator.autocast():
            if self._compute_loss_is_overridden():
                # a subclass returns its micro-batch mean (its num_items_in_batch may be ignored);
                # weighting it here keeps accumulation exact for seed-era overrides too.
                # Counted first: overrides often pop "labels" from inputs.
                n_micro = self._micro_items(inputs) if num_items_in_batch is not None else None
                loss = self.compute_loss(model, inputs)
                if n_micro is not None:
                    loss = window_share(loss, n_micro, num_items_in_batch)
            else:
                loss = self.compute_loss(model, inputs, num_items_in_batch=num_items_in_batch)
        # each rank holds its sum / the global count; DDP averages gradients, so undo the 1/W.
        # Without labels to count (the model's own mean loss) DDP's average is already right.
        scale = self.accelerator.num_processes if self._tokens_across_ranks and num_items_in_batch is not None else 1
        backward = self._stepper.backward if self._stepper is not None else self.accelerator.backward
        backward(loss * scale if scale != 1 else loss)
        return loss.detach()

    @property
    def _tokens_across_ranks(self) -> bool:
        return self.accelerator.num_processes > 1 and self.args.average_tokens_across_devices

    def _window_items(self, window: list[dict[str, Any]]) -> torch.Tensor | None:
        """Label items in the whole accumulation window, summed over ranks (tensor, no host sync)."""
        try:
            total = sum(self._micro_items(b) for b in window)
        except ValueError:
            return None  # no labels at all: the model (or compute_loss) must produce the loss itself
        total = torch.as_tensor(total, device=self.accelerator.device)
        if self._tokens_across_ranks:
            total = self.accelerator.reduce(total, reduction="sum")
        return total

    # ---- training ---------------------------------------------------------------------------

    def train(
        self,
        resume_from_checkpoint: str | bool | None = None,
        trial: Any = None,
        ignore_keys_for_eval: list[str] | None = None,
        **kwargs: Any,
    ) -> TrainOutput:
        """Train the model; resume from a checkpoint path, or the newest one with `True`.

        Raises:
            CheckpointError: the output_dir holds a run and neither resume nor overwrite was asked,
                or the checkpoint to resume from is missing or incomplete.
            DataError: no or an empty train_dataset.
        """
        if kwargs:
            raise ConfigError(f"Trainer.train() got unknown arguments {sorted(kwargs)}")
        if resume_from_checkpoint is None:
            resume_from_checkpoint = self.args.resume_from_checkpoint
        resume = self._resolve_resume(resume_from_checkpoint)
        output_dir = Path(self.args.output_dir)
        ckpt.check_output_dir(output_dir, resuming=resume is not None, overwrite=self.args.overwrite_output_dir)
        if self.train_dataset is None:
            raise DataError("Trainer.train() needs a train_dataset; pass train_dataset=... to Trainer")
        if hasattr(self.train_dataset, "__len__") and not isinstance(self.train_dataset, IterableDataset):
            if len(self.train_dataset) == 0:
                raise DataError("train_dataset is empty (0 rows); check the data source and any filtering")
        if self.args.eval_strategy != "no" and self.eval_dataset is None:
            raise DataError(
                f"training.eval_strategy='{self.args.eval_strategy}' but Trainer has no eval_dataset; "
                "pass eval_dataset=... or set eval_strategy='no'"
            )
        if resume is None and self.args.overwrite_output_dir and self.is_world_process_zero():
            ckpt.clear_run(output_dir)  # only after every check passed: an error destroys nothing
        if self.model_init is not None:
            # HF semantics: every train() starts from a fresh model_init() (hyperparameter trials)
            seed_everything(self.args)
            self.model = self._maybe_apply_peft(self._call_model_init(trial))
            self._prepare_model_once(self.model)
            self.callback_handler.model = self.model
            self.optimizer = self.lr_scheduler = None
        self._ignore_keys_for_eval = ignore_keys_for_eval
        if self.args.learning_rate == "auto":
            self._auto_learning_rate()
        if self.args.auto_find_batch_size:
            from accelerate.utils import find_executable_batch_size

            def attempt(batch_size: int) -> TrainOutput:
                self.args.per_device_train_batch_size = batch_size
                self.optimizer = self.lr_scheduler = None
                return self._train_loop(resume)

            return find_executable_batch_size(attempt, starting_batch_size=self.args.per_device_train_batch_size)()
        return self._train_loop(resume)

    def _auto_learning_rate(self) -> None:
        """`learning_rate: auto`: run the LR range test, then train with its suggestion."""
        from .lr_finder import find_lr

        if self.optimizer is not None:
            raise ConfigError("training.learning_rate='auto' can't be used with optimizers=(...) given; set a number")
        self.args.learning_rate = 1.0  # a placeholder: the range test scales every group by the same factor
        plot = Path(self.args.output_dir) / "lr_find.png"
        if self.is_world_process_zero():
            plot.parent.mkdir(parents=True, exist_ok=True)
        result = find_lr(self, plot_path=plot if self.is_world_process_zero() else None)
        self.args.learning_rate = float(result.suggestion)
        self.optimizer = None  # rebuilt with the suggested learning rate (its state was never changed)
        if self.is_world_process_zero():
            print(f"learning_rate: auto -> {result.suggestion:.3g} (LR range test, plot in {plot})")

    def _resolve_resume(self, value: str | bool | None) -> Path | None:
        return ckpt.resolve_resume(value, self.args.output_dir)

    def _train_loop(self, resume: Path | None) -> TrainOutput:
        args, accel = self.args, self.accelerator
        dataloader = self.get_train_dataloader()
        sampler = dataloader.sampler if isinstance(dataloader.sampler, EpochSampler) else None
        model = self.model
        # a second train() reuses the optimizer (HF semantics); never wrap Accelerate's wrapper twice
        if isinstance(self.optimizer, AcceleratedOptimizer):
            self.optimizer = self.optimizer.optimizer
        if self.optimizer is None:
            self.create_optimizer()
            if self.is_world_process_zero():  # the effective groups: pattern, tensors, parameters, lr, decay
                from .optim import describe_param_groups

                print(describe_param_groups(self.optimizer.param_groups, model))
        model, self.optimizer, dataloader = accel.prepare(model, self.optimizer, dataloader)
        self.model_wrapped = model
        ga = args.gradient_accumulation_steps
        micro_per_epoch = safe_len(dataloader)
        steps_per_epoch = math.ceil(micro_per_epoch / ga) if micro_per_epoch else None
        if args.max_steps > 0:
            max_steps = args.max_steps
            num_epochs = math.ceil(max_steps / steps_per_epoch) if steps_per_epoch else 1 << 30
        elif steps_per_epoch:
            max_steps = math.ceil(args.num_train_epochs * steps_per_epoch)
            num_epochs = math.ceil(args.num_train_epochs)
        else:
            raise ConfigError("training.max_steps must be set (> 0) for a dataset without a length (streaming)")
        # on the torch optimizer: OptimizerStep may step it past Accelerate's wrapper, and the
        # scheduler must see those steps (torch tracks them through the optimizer it was given)
        self.create_scheduler(max_steps, getattr(self.optimizer, "optimizer", self.optimizer))

        state = self.state = TrainerState(
            is_local_process_zero=self.is_local_process_zero(), is_world_process_zero=self.is_world_process_zero()
        )
        state.max_steps, state.num_train_epochs = max_steps, num_epochs
        state.train_batch_size = args.per_device_train_batch_size
        state.logging_steps = args.resolve_steps(args.logging_steps, max_steps)
        state.eval_steps = args.resolve_steps(args.eval_steps or args.logging_steps, max_steps)
        state.save_steps = args.resolve_steps(args.save_steps, max_steps)
        if resume is not None:
            self._load_checkpoint(resume)
            state = self.state
        since = SinceLog(torch.tensor(state.pending_loss, device=accel.device), state.pending_loss_steps)
        start_epoch = state.global_step // steps_per_epoch if steps_per_epoch else 0
        if micro_per_epoch and state.epoch_step >= micro_per_epoch:
            state.epoch_step = 0  # saved at the end of an epoch: the next one starts from its beginning
        handler = self.callback_handler
        handler.model, handler.optimizer, handler.lr_scheduler = self.model, self.optimizer, self.lr_scheduler
        handler.train_dataloader = dataloader
        if state.global_step == 0 and accel.trackers == [] and args.report_to:
            accel.init_trackers(args.run_name or "trainformers", config=scalar_config(args))
        if args.push_to_hub and self.is_world_process_zero():
            self._hub_pusher()  # creates the repository before the first step: a bad token fails now
        self.control = handler.on_train_begin(args, state, self.control)
        if args.eval_on_start and state.global_step == 0:
            self._evaluate_during_training()
        start_time = since.start = time.perf_counter()
        self._paused, flops_at_start, run_tokens = 0.0, state.total_flos, 0
        grad_norm: torch.Tensor | None = None
        start_step = state.global_step
        skip = state.epoch_step if not args.ignore_data_skip else 0
        opt_step = self._stepper = OptimizerStep(accel, self.optimizer, model.parameters())
        step_scheduler = not is_plateau(self.lr_scheduler)
        # a window of one micro-batch on one rank: its mean is the window's mean, nothing to count
        # (tensor ops and a graph node per step, 2% of a nano model's step; bench/step_overhead.py)
        always_count = self._tokens_across_ranks or self.compute_loss_func is not None

        for epoch in range(start_epoch, num_epochs):
            # Accelerate's loader re-applies its own epoch counter to the sampler on every iter();
            # set it there (it forwards to our sampler, and a skipping copy inherits it)
            if hasattr(dataloader, "set_epoch"):
                dataloader.set_epoch(epoch)
            elif sampler is not None:
                sampler.set_epoch(epoch)
            batches = skip_first_batches(accel, dataloader, skip) if skip else dataloader  # jumps there
            if not skip:
                state.epoch_step = 0
            skip = 0
            self.control = handler.on_epoch_begin(args, state, self.control)
            iterator = iter(batches)
            while state.global_step < max_steps:
                window = take(iterator, ga - (state.epoch_step % ga))
                if not window:
                    break
                num_items = self._window_items(window) if always_count or len(window) > 1 else None
                self.control = handler.on_step_begin(args, state, self.control)
                for i, batch in enumerate(window):
                    last = i == len(window) - 1
                    with accel.no_sync(model) if not last else nullcontext():
                        step_loss = self.training_step(model, batch, num_items)
                    share = step_loss if num_items is not None or len(window) == 1 else step_loss / len(window)
                    if num_items is None and self._tokens_across_ranks:
                        share = share / accel.num_processes  # rank means: the log sums ranks
                    if args.logging_nan_inf_filter:
                        # a NaN/inf micro-step is logged as the window's running average (HF semantics), on device
                        share = torch.where(torch.isfinite(share), share, since.loss / max(since.micro, 1))
                    since.loss += share
                    since.micro += 1
                    tokens, samples, seq_len = batch_size_info(batch)
                    since.tokens += tokens
                    run_tokens += tokens
                    since.samples += samples
                    flops = self._flops.per_batch(tokens, seq_len)
                    since.flops += flops
                    state.total_flos += flops
                    if args.include_num_input_tokens_seen == "non_padding" and "attention_mask" in batch:
                        since.seen = since.seen + batch["attention_mask"].sum()  # device tensor, read when logging
                    elif args.include_num_input_tokens_seen:
                        state.num_input_tokens_seen += tokens
                    state.micro_step += 1
                    state.epoch_step += 1
                    if not last:
                        self.control = handler.on_substep_end(args, state, self.control)
                if args.max_grad_norm and args.max_grad_norm > 0:
                    grad_norm = opt_step.clip(args.max_grad_norm)
                self.control = handler.on_pre_optimizer_step(args, state, self.control)
                opt_step.step()
                self.control = handler.on_optimizer_step(args, state, self.control)
                if not opt_step.skipped and step_scheduler:
                    self.lr_scheduler.step()
                opt_step.zero_grad()
                state.global_step += 1
                since.steps += 1
                state.epoch = epoch + state.epoch_step / micro_per_epoch if micro_per_epoch else float(epoch)
                self.control = handler.on_step_end(args, state, self.control)
                if self.control.should_log:
                    self._log_training(since, grad_norm)
                self._maybe_evaluate_and_save(since)
                if self.control.should_epoch_stop or self.control.should_training_stop:
                    break
            self.control = handler.on_epoch_end(args, state, self.control)
            if self.control.should_log and since.steps:
                self._log_training(since, grad_norm)
            self._maybe_evaluate_and_save(since)
            if self.control.should_training_stop or state.global_step >= max_steps:
                break

        runtime = time.perf_counter() - start_time
        if args.load_best_model_at_end and state.best_model_checkpoint is not None:
            ckpt.load_model_files(accel.unwrap_model(model), state.best_model_checkpoint)
        losses = [row["loss"] for row in state.log_history if "loss" in row]
        if not losses and since.steps:
            losses = [since.loss.item() / since.steps]
        done = state.global_step - start_step
        metrics = {
            "train_runtime": round(runtime, 4),
            "train_samples_per_second": round(
                done * ga * args.per_device_train_batch_size * accel.num_processes / max(runtime, 1e-9), 3
            ),
            "train_steps_per_second": round(done / max(runtime, 1e-9), 3),
            "total_flos": state.total_flos,
            "train_tokens_per_second": round(run_tokens * accel.num_processes / max(runtime - self._paused, 1e-9), 2),
            **self._flops_row(state.total_flos - flops_at_start, max(runtime - self._paused, 1e-9), "train_"),
            "train_loss": float(np.mean(losses)) if losses else float("nan"),
            "epoch": state.epoch,
        }
        self.log(metrics)
        if getattr(self, "_hub", None) is not None:
            self._hub.wait()  # the last checkpoint's background upload ends before train() returns
        self.control = handler.on_train_end(args, state, self.control)
        if args.report_at_end:
            from .report import report_at_end

            report_at_end(self)  # report.png + report.md; a failed plot only warns
        return TrainOutput(state.global_step, metrics["train_loss"], metrics)

    def _log_training(self, since: SinceLog, grad_norm: torch.Tensor | None) -> None:
        """Build and emit a training log row: the only place the loop syncs with the host."""
        accel, world = self.accelerator, self.accelerator.num_processes
        loss = accel.reduce(since.loss.clone(), reduction="sum") if world > 1 else since.loss
        if world > 1 and not self._tokens_across_ranks:
            loss = loss / world
        logs: dict[str, float] = {"loss": loss.item() / max(since.steps, 1)}
        if grad_norm is not None:
            logs["grad_norm"] = float(grad_norm)
        logs["learning_rate"] = self.optimizer.param_groups[0]["lr"]
        elapsed = since.elapsed()
        logs["tokens_per_second"] = round(since.tokens * world / elapsed, 2)
        logs["samples_per_second"] = round(since.samples * world / elapsed, 3)
        logs.update(self._flops_row(since.flops, elapsed))
        if self.args.include_num_input_tokens_seen:
            self.state.num_input_tokens_seen += since.take_seen()
            logs["num_input_tokens_seen"] = self.state.num_input_tokens_seen * world
        logs.update(self._loss_terms.pop(accel))
        since.reset()
        self.log(logs)

    def _flops_row(self, flops: float, seconds: float, prefix: str = "") -> dict[str, float]:
        """Achieved model TFLOP/s (all ranks) and MFU (per device) of `flops` done by this rank in `seconds`."""
        if not flops:
            return {}
        achieved = flops / seconds / 1e12
        row = {f"{prefix}tflops": float(f"{achieved * self.accelerator.num_processes:.4g}")}
        peak = self.peak_flops()
        if peak is not None:
            row[f"{prefix}mfu"] = float(f"{achieved / peak.tflops:.4g}")
        return row

    def _maybe_evaluate_and_save(self, since: SinceLog) -> None:
        if not (self.control.should_evaluate or self.control.should_save):
            return
        start = time.perf_counter()
        self._evaluate_and_save(since)
        pause = time.perf_counter() - start
        since.paused += pause
        self._paused += pause

    def _evaluate_and_save(self, since: SinceLog) -> None:
        if self.control.should_evaluate:
            self._evaluate_during_training()
        if self.control.should_save:
            self.state.pending_loss = float(since.loss.item())
            self.state.pending_loss_steps = since.steps
            self.state.num_input_tokens_seen += since.take_seen()
            self._save_checkpoint()
            self.control = self.callback_handler.on_save(self.args, self.state, self.control)
            self.control.should_save = False

    def _evaluate_during_training(self) -> dict[str, float]:
        metrics = self.evaluate(ignore_keys=getattr(self, "_ignore_keys_for_eval", None))
        if after_evaluation(self.state, self.args, metrics, [self.lr_scheduler]) and self.args.save_strategy == "best":
            self.control.should_save = True
        self.control.should_evaluate = False
        return metrics

    # ---- checkpoints --------------------------------------------------------------------

    def _save_checkpoint(self) -> Path:
        state, accel = self.state, self.accelerator
        final = ckpt.checkpoint_dir(self.args.output_dir, state.global_step)
        if state.best_global_step == state.global_step:
            state.best_model_checkpoint = str(final)
        state.stateful_callbacks = ckpt.callback_states(self.callback_handler.callbacks)
        main = self.is_world_process_zero()
        with ckpt.atomic_checkpoint(final, is_main=main, barrier=accel.wait_for_everyone) as tmp:
            self._save(tmp, _internal_call=True)
            if not self.args.save_only_model:
                ckpt.save_state(ckpt.rng_state(), tmp / f"rng_state_{accel.process_index}.pth")
                if main:
                    ckpt.save_state(self.optimizer.state_dict(), tmp / ckpt.OPTIMIZER_NAME)
                    ckpt.save_state(self.lr_scheduler.state_dict(), tmp / ckpt.SCHEDULER_NAME)
                    if accel.scaler is not None:
                        ckpt.save_state(accel.scaler.state_dict(), tmp / ckpt.SCALER_NAME)
            if main:
                ckpt.write_json(self.args.to_dict(), tmp / ckpt.ARGS_NAME)
                state.save_to_json(tmp / ckpt.STATE_NAME)  # written last: the completion marker inside
        if main:
            if self.args.push_to_hub and self.args.hub_strategy != "end":
                # before rotation; the pusher snapshots the checkpoint (hard links) and uploads in the background
                self.callback_handler.on_push_begin(self.args, state, self.control)
                self._hub_pusher().on_checkpoint(final, f"Training in progress, step {state.global_step}")
            ckpt.rotate_checkpoints(self.args.output_dir, self.args.save_total_limit, state.best_model_checkpoint)
        return final

    def _load_checkpoint(self, path: Path) -> None:
        """Restore everything `_save_checkpoint` wrote, so the run continues bit for bit."""
        if not (path / ckpt.OPTIMIZER_NAME).is_file():
            raise CheckpointError(
                f"checkpoint '{path}' holds no optimizer state (saved with save_only_model=True?); it can be loaded "
                "as a model but not resumed"
            )
        accel = self.accelerator
        ckpt.load_model_files(accel.unwrap_model(self.model_wrapped), path)
        self.optimizer.load_state_dict(ckpt.load_state(path / ckpt.OPTIMIZER_NAME))
        self.lr_scheduler.load_state_dict(ckpt.load_state(path / ckpt.SCHEDULER_NAME))
        if accel.scaler is not None and (path / ckpt.SCALER_NAME).is_file():
            accel.scaler.load_state_dict(ckpt.load_state(path / ckpt.SCALER_NAME))
        self.state = ckpt.restore_trainer_state(path, self.state, self.callback_handler.callbacks)
        ckpt.restore_rng(path, accel.process_index, accel.num_processes)

    # ---- experiments: search, model card (trainformers.search, trainformers.modelcard) -----

    def hyperparameter_search(
        self,
        hp_space: Callable[[Any], dict[str, Any]] | None = None,
        compute_objective: Callable[[dict[str, float]], float] | None = None,
        n_trials: int = 20,
        direction: str | list[str] = "minimize",
        backend: str | None = None,
        hp_name: Callable[[Any], str] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Search hyperparameters with optuna (HF semantics); needs `model_init`. See `trainformers.search`."""
        from .search import run_hyperparameter_search

        return run_hyperparameter_search(
            self,
            hp_space=hp_space,
            compute_objective=compute_objective,
            n_trials=n_trials,
            direction=direction,
            backend=backend,
            hp_name=hp_name,
            **kwargs,
        )

    def create_model_card(
        self,
        language: str | None = None,
        license: str | None = None,
        tags: str | list[str] | None = None,
        model_name: str | None = None,
        finetuned_from: str | None = None,
        tasks: str | list[str] | None = None,
        dataset_tags: str | list[str] | None = None,
        dataset: str | list[str] | None = None,
        dataset_args: str | list[str] | None = None,
    ) -> Path:
        """Write README.md (a model card) into args.output_dir. See `trainformers.modelcard`."""
        from .modelcard import create_model_card

        return create_model_card(
            self,
            language=language,
            license=license,
            tags=tags,
            model_name=model_name,
            finetuned_from=finetuned_from,
            tasks=tasks,
            dataset_tags=dataset_tags,
            dataset=dataset,
            dataset_args=dataset_args,
        )

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Save the model (and tokenizer) in HF format to `output_dir` (default: args.output_dir)."""
        folder = Path(output_dir or self.args.output_dir)
        self._save(folder, _internal_call=_internal_call)
        if self.args.push_to_hub and not _internal_call and self.is_world_process_zero():
            self._push_to_hub(folder, "Model save")

    def _save(self, output_dir: Path, _internal_call: bool = False) -> None:
        accel = self.accelerator
        model = getattr(self, "model_wrapped", self.model)
        state_dict = accel.get_state_dict(model) if accel.num_processes > 1 else None
        main = self.is_world_process_zero()
        if main:
            output_dir.mkdir(parents=True, exist_ok=True)
        ckpt.save_model_files(accel.unwrap_model(model), output_dir, state_dict=state_dict, is_main=main)
        if main and self.processing_class is not None and hasattr(self.processing_class, "save_pretrained"):
            self.processing_class.save_pretrained(output_dir)
        if main and not _internal_call:
            ckpt.write_json(self.args.to_dict(), output_dir / ckpt.ARGS_NAME)

    # ---- Hub (trainformers.hub; the real upload is not exercised in CI, only a fake) ---------

    def push_to_hub(self, commit_message: str = "End of training", blocking: bool = True, **kwargs: Any) -> Any:
        """Save the model to args.output_dir and upload that folder (with its model card) to the Hub.

        Waits for the background checkpoint uploads first. Checkpoint folders, `*.tmp` and `_*` are
        not uploaded. The repository is args.hub_model_id or the output_dir's name, the branch
        args.hub_revision. Works with args.push_to_hub=False too (HF semantics).

        Args:
            commit_message: the Hub commit message.
            blocking: wait for the upload; False returns a Future (a failure is then logged, not raised).
            **kwargs: passed to `create_model_card` (e.g. `tags`, `language`, `dataset`).

        Returns:
            upload_folder's CommitInfo, a Future of it when `blocking=False`, None off the main process.

        Raises:
            ConfigError: `token`, `revision` or `private` given (set the hub_* arguments instead).
        """
        unsupported = sorted(set(kwargs) & {"token", "revision", "private"})
        if unsupported:
            raise ConfigError(f"push_to_hub({', '.join(unsupported)}=...) is not supported; set args.hub_* instead")
        output_dir = Path(self.args.output_dir)
        self._save(output_dir)  # every process: a sharded model gathers its weights
        if not self.is_world_process_zero():
            return None
        return self._push_to_hub(output_dir, commit_message, blocking, **kwargs)

    def _push_to_hub(self, folder: Path, commit_message: str, blocking: bool = True, **card_kwargs: Any) -> Any:
        """Write the model card (when `folder` is the output_dir) and upload `folder` to the repository root."""
        self.callback_handler.on_push_begin(self.args, self.state, self.control)
        make_card = getattr(self, "create_model_card", None)
        if make_card is not None and folder.resolve() == Path(self.args.output_dir).resolve():
            try:
                make_card(**card_kwargs)
            except Exception as exc:  # noqa: BLE001 - an optional extra: the model goes up without it
                warnings.warn(f"model card not written ({type(exc).__name__}: {exc}); pushing without it", stacklevel=3)
        return self._hub_pusher().on_save_model(folder, commit_message, blocking)

    def _hub_pusher(self) -> Any:
        """The `HubPusher` of this trainer, created with its repository on first use (main process only)."""
        if getattr(self, "_hub", None) is None:
            from .hub import HubPusher

            self._hub = HubPusher.from_args(self.args)
            self._hub.create_repo()
        return self._hub

    # ---- logging ------------------------------------------------------------------------

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Record a row in `state.log_history` and hand it to the callbacks (progress, JSONL, trackers)."""
        self.control = self.callback_handler.log(self.args, self.state, self.control, logs)

    # ---- evaluation ---------------------------------------------------------------------

    def evaluate(
        self, eval_dataset: Any = None, ignore_keys: list[str] | None = None, metric_key_prefix: str = "eval"
    ) -> dict[str, float]:
        """Evaluate on `eval_dataset` (or the Trainer's); a dict of sets is evaluated set by set."""
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if isinstance(dataset, dict):
            metrics: dict[str, float] = {}
            for name, subset in dataset.items():
                metrics.update(self.evaluate(subset, ignore_keys, f"{metric_key_prefix}_{name}"))
            return metrics
        dataloader = self.get_eval_dataloader(dataset)
        start = time.perf_counter()
        output = self.evaluation_loop(dataloader, "Evaluation", None, ignore_keys, metric_key_prefix)
        output.metrics.update(speed_metrics(metric_key_prefix, start, output.num_samples, safe_len(dataloader)))
        if self.state.epoch is not None:
            output.metrics["epoch"] = self.state.epoch  # HF returns it with the metrics
        self.log(output.metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics=output.metrics)
        return output.metrics

    def predict(
        self, test_dataset: Any, ignore_keys: list[str] | None = None, metric_key_prefix: str = "test"
    ) -> PredictionOutput:
        """Predictions (and metrics when labels are present) over `test_dataset`."""
        dataloader = self.get_test_dataloader(test_dataset)
        start = time.perf_counter()
        output = self.evaluation_loop(dataloader, "Prediction", False, ignore_keys, metric_key_prefix)
        output.metrics.update(speed_metrics(metric_key_prefix, start, output.num_samples, safe_len(dataloader)))
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
        keep_outputs = not prediction_loss_only and (self.compute_metrics is not None or description == "Prediction")
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
        )
        self.callback_handler.eval_dataloader = dataloader
        for inputs in dataloader:
            loss, logits, labels = self.prediction_step(model, inputs, not keep_outputs, ignore_keys)
            n_items = None
            if loss is not None:
                try:
                    n_items = self._micro_items(inputs)
                except ValueError:
                    n_items = None
            if logits is not None and self.preprocess_logits_for_metrics is not None:
                logits = self.preprocess_logits_for_metrics(logits, labels)
            acc.add(inputs, loss, n_items, logits, labels)
            self.control = self.callback_handler.on_prediction_step(args, self.state, self.control)
        return acc.finish(accel, self.compute_metrics, metric_key_prefix)

    def prediction_step(
        self, model: nn.Module, inputs: dict[str, Any], prediction_loss_only: bool, ignore_keys: list[str] | None = None
    ) -> tuple[torch.Tensor | None, Any, Any]:
        """(loss, logits, labels) for one batch, without gradients (HF semantics)."""
        has_labels = all(inputs.get(name) is not None for name in self.label_names)
        if ignore_keys is None:
            ignore_keys = getattr(getattr(unwrap_peft(self.model), "config", None), "keys_to_ignore_at_inference", [])
        with torch.no_grad(), self.accelerator.autocast():
            if has_labels:
                loss, outputs = self.compute_loss(model, inputs, return_outputs=True)
                loss = loss.detach().float()
            else:
                loss, outputs = None, model(**inputs)
        if prediction_loss_only:
            return loss, None, None
        if isinstance(outputs, Mapping):
            logits = tuple(v for k, v in outputs.items() if k not in set(ignore_keys) | {"loss"} and torch.is_tensor(v))
        else:
            logits = tuple(outputs[1:] if has_labels else outputs)
        logits = logits[0] if len(logits) == 1 else logits
        labels = tuple(inputs.get(name) for name in self.label_names) if has_labels else None
        if labels is not None and len(labels) == 1:
            labels = labels[0]
        return loss, logits, labels
