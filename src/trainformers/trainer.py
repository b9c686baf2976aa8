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
from pathlib import Path
from typing import Any

import torch
from accelerate.optimizer import AcceleratedOptimizer
from accelerate.utils import DistributedType
from torch import nn
from torch.utils.data import DataLoader
from transformers.trainer_utils import EvalPrediction, TrainOutput

from . import checkpoint as ckpt
from .accel import build_accelerator, configure_deepspeed, start_notices
from .callbacks import CallbackHandler, TrainerCallback, default_callbacks
from .chunked_loss import choose_chunked_head, chunked_lm_loss, worth_chunking
from .config import TrainingArguments
from .dataloaders import check_train_inputs, check_trainer_arguments, remove_unused_columns, train_dataloader
from .errors import ConfigError, DataError
from .flops import Peak, flops_row, model_flops, peak_tflops
from .loop_utils import (
    after_evaluation,
    apply_log_level,
    batch_size_info,
    default_collator,
    loss_shifts_labels,
    new_state,
    prepare_model,
    safe_len,
    seed_everything,
    take,
    training_length,
    unwrap_peft,
)
from .losses import count_label_items, lm_loss, model_output_loss, router_loss, window_share
from .memory import MemoryTracker, peak_memory_mb_of_ranks
from .meter import Meter, add_loss_terms, loss_term_means
from .neftune import neftune_noise
from .optim import create_optimizer, create_scheduler, describe_param_groups
from .preemption import SigtermCheckpoint
from .run_lock import RunLock
from .sampling import EpochSampler, skip_first_batches
from .sharded import DeepSpeedState, ShardedModel, is_sharded
from .state import TrainerControl, TrainerState
from .step import NonFiniteGuard, StepKernel
from .trackers import start_trackers
from .trainer_evaluation import EvaluationMethods
from .trainer_publishing import PublishingMethods


class Trainer(EvaluationMethods, PublishingMethods):
    """Train, evaluate and predict with any model whose forward returns a loss.

    The loop, in pseudocode (`_train_loop`):

        for epoch in epochs:                          # resumed runs start mid-epoch by index
            for micro_batches in groups of `gradient_accumulation_steps`:
                step_kernel.run(micro_batches, training_step)  # trainformers.step: count label
                    # items (all ranks), forward/backward each (no DDP sync until the last),
                    # clip, optimizer.step(), scheduler.step(), zero_grad
                global_step += 1
                callbacks decide: log / evaluate / save / stop (meter -> log row; checkpoint.save_checkpoint)

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
        check_trainer_arguments(model, train_dataset, eval_dataset, optimizers, data_collator)
        self.args = args if args is not None else TrainingArguments(output_dir="trainer_output")
        self._memory = MemoryTracker(not self.args.skip_memory_metrics)
        self._memory.start("init")
        if tokenizer is not None:
            warnings.warn("Trainer(tokenizer=...) is deprecated; use processing_class=", FutureWarning, stacklevel=2)
            processing_class = processing_class if processing_class is not None else tokenizer
        seed_everything(self.args)
        apply_log_level(self.args)
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
        self.meter = Meter(self.accelerator.device)  # what the running train() accumulates between log rows
        self.run_meter = Meter(self.accelerator.device)  # what it accumulates over the whole run
        # every section's settings for the trackers (the CLI sets its run file's); a Trainer knows only `args`
        self.tracker_sections: dict[str, Any] | None = None
        self._shards: ShardedModel | DeepSpeedState | None = None  # set by train(): FSDP/DeepSpeed state
        self.step_kernel: StepKernel | None = None  # the running train()'s backward/clip/step path
        self._sigterm = SigtermCheckpoint(self.args.enable_jit_checkpoint)
        self._eval_dataloaders: dict[str, DataLoader] = {}  # kept only with persistent workers
        self._own_checkpoints: set[str] = set()  # written by this trainer: not another run's
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
        self._init_memory = self._memory.stop("init")  # reported with the first train() metrics, as in HF

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
        if self.args.use_liger_kernel:  # build_accelerator checked the package and the GPU
            from liger_kernel.transformers import _apply_liger_kernel_to_instance

            _apply_liger_kernel_to_instance(model=unwrapped)  # as transformers' Trainer does
        self._shift_labels = loss_shifts_labels(unwrapped)
        self._chunked_head: nn.Linear | None = None  # chosen when train() prepares the model
        from transformers.utils import can_return_loss, find_labels

        self.label_names = self.args.label_names or find_labels(unwrapped.__class__) or ["labels"]
        self.can_return_loss = can_return_loss(unwrapped.__class__)  # forward(return_loss=True), e.g. CLIP
        self._flops = model_flops(unwrapped)
        self._peak: Peak | None = None  # looked up at the first log row (may measure once)
        self._peak_looked_up = False

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
        if not self._peak_looked_up:
            dtype = torch.bfloat16 if self.args.bf16 else torch.float16 if self.args.fp16 else torch.float32
            if self.accelerator.mixed_precision == "no":
                dtype = torch.float32  # bf16 asked for but not available: training runs in fp32
            self._peak = peak_tflops(self.accelerator.device, dtype, self.args.peak_tflops)
            self._peak_looked_up = True
        return self._peak

    # ---- data -------------------------------------------------------------------------------

    def _remove_unused_columns(self, dataset: Any, description: str) -> Any:
        if not self.args.remove_unused_columns:
            return dataset
        forward = inspect.signature(unwrap_peft(self.model).forward).parameters
        return remove_unused_columns(dataset, description, set(forward) | set(self.label_names))

    def get_train_dataloader(self) -> DataLoader:
        """The training DataLoader (not yet prepared by Accelerate)."""
        if self.train_dataset is None:
            raise DataError("Trainer.train() needs a train_dataset; pass train_dataset=... to Trainer")
        dataset = self._remove_unused_columns(self.train_dataset, "train_dataset")
        return train_dataloader(dataset, self.args, self.data_collator, self.accelerator.num_processes)

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
        head = self._chunked_head if model.training and self.compute_loss_func is None else None
        # logits that fit in one chunk take the plain path: the model's own loss, as before
        chunked = head is not None and inputs.get("labels") is not None and worth_chunking(head, inputs["labels"])
        if chunked or self.compute_loss_func is not None or self.args.label_smoothing_factor > 0:
            labels = inputs.get("labels")
        model_inputs = {k: v for k, v in inputs.items() if k != "labels"} if labels is not None else inputs
        if chunked and labels is not None:
            return self._chunked_loss(model, model_inputs, labels, inputs, return_outputs, num_items_in_batch)
        outputs = model(**model_inputs)
        terms = outputs.get("loss_terms") if isinstance(outputs, Mapping) else None
        if terms and model.training:
            add_loss_terms(self.meter, terms)  # e.g. MoE router losses: logged beside the loss
        if labels is not None and self.compute_loss_func is not None:
            loss = self.compute_loss_func(outputs, labels, num_items_in_batch=num_items_in_batch)
        elif labels is not None:
            logits = outputs["logits"] if isinstance(outputs, Mapping) else outputs[0]
            # the labels never reached the model, so it added no router loss: add it here (HF's label
            # smoother drops it); with one, the window share is taken of the sum, as the model's own loss
            aux = router_loss(getattr(self.accelerator.unwrap_model(model), "config", None), outputs)
            smoothing, shift = self.args.label_smoothing_factor, self._shift_labels
            if aux is None:
                loss = lm_loss(
                    logits, labels, shift=shift, num_items_in_batch=num_items_in_batch, label_smoothing=smoothing
                )
            else:
                loss = lm_loss(logits, labels, shift=shift, label_smoothing=smoothing) + aux
                if num_items_in_batch is not None:
                    loss = window_share(loss, self.count_items(inputs), num_items_in_batch)
        else:
            loss = model_output_loss(outputs, self.label_names)
            if num_items_in_batch is not None:
                loss = window_share(loss, self.count_items(inputs), num_items_in_batch)
        return (loss, outputs) if return_outputs else loss

    def _chunked_loss(
        self,
        model: nn.Module,
        model_inputs: dict[str, Any],
        labels: torch.Tensor,
        inputs: Mapping[str, Any],
        return_outputs: bool,
        num_items_in_batch: torch.Tensor | int | None,
    ) -> Any:
        """`compute_loss` of a causal LM without its logits (`chunked_loss.chunked_lm_loss`): the plain
        path's loss term for term, router losses included, as its share of the window."""
        assert self._chunked_head is not None
        token_loss, loss, outputs = chunked_lm_loss(
            model, self._chunked_head, model_inputs, labels, self.args.label_smoothing_factor
        )
        terms = outputs.get("loss_terms") if isinstance(outputs, Mapping) else None
        if terms:
            add_loss_terms(self.meter, {**terms, "lm_loss": token_loss.detach()})
        if num_items_in_batch is not None:
            loss = window_share(loss, self.count_items(inputs), num_items_in_batch)
        return (loss, outputs) if return_outputs else loss

    def _choose_chunked_head(self, model: nn.Module) -> nn.Linear | None:
        """The head `_chunked_loss` stands in for, or None (with one line saying why, when it is not by choice)."""
        if not self._shift_labels or self.compute_loss_func is not None:
            return None
        engine = self.accelerator.distributed_type.value
        head, reason = choose_chunked_head(self.accelerator.unwrap_model(model), self.args, engine)
        if head is None and reason and self.is_world_process_zero():
            print(f"chunked_cross_entropy: off ({reason}); this run materialises the full logits")
        return head

    def count_items(self, inputs: Mapping[str, Any]) -> torch.Tensor:
        """The label items of one micro-batch: what its mean loss averages over (`losses.count_label_items`)."""
        return count_label_items(inputs, shift=self._shift_labels, label_names=self.label_names)

    def _compute_loss_is_overridden(self) -> bool:
        return type(self).compute_loss is not Trainer.compute_loss

    def training_step(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Forward and backward of one micro-batch; returns its detached loss (a share of the window
        loss when `num_items_in_batch` is given, its mean otherwise). The running step kernel
        scales the backward (`trainformers.step`)."""
        if not (model.training and self.model.training):
            model.train()  # after evaluation or a callback's eval(); HF calls it every micro-step (~0.3 ms)
        with self.accelerator.autocast():
            if self._compute_loss_is_overridden():
                # a subclass returns its micro-batch mean (its num_items_in_batch may be ignored);
                # weighting it here keeps accumulation exact for seed-era overrides too.
                # Counted first: overrides often pop "labels" from inputs.
                n_micro = self.count_items(inputs) if num_items_in_batch is not None else None
                loss = self.compute_loss(model, inputs)
                if n_micro is not None:
                    loss = window_share(loss, n_micro, num_items_in_batch)
            else:
                loss = self.compute_loss(model, inputs, num_items_in_batch=num_items_in_batch)
        if self.step_kernel is not None:
            self.step_kernel.backward(loss)
        else:  # called outside train()
            self.accelerator.backward(loss)
        return loss.detach()

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
        said = start_notices(self.args.cpu_malloc, [self.model], self.accelerator.device)
        if said and self.is_world_process_zero():
            print(said)
        self._memory.start("train")
        if resume_from_checkpoint is None:
            resume_from_checkpoint = self.args.resume_from_checkpoint
        shapes = None if self.model is None else {k: tuple(v.shape) for k, v in self.model.state_dict().items()}
        resume = ckpt.resume_point(resume_from_checkpoint, self.args, main=self.is_world_process_zero(), shapes=shapes)
        output_dir = Path(self.args.output_dir)
        ckpt.check_foreign_checkpoints(
            output_dir,
            self._own_checkpoints,
            resuming=resume is not None,
            overwrite=self.args.overwrite_output_dir,
            saving=self.args.save_strategy != "no",
        )
        check_train_inputs(self.args, self.train_dataset, self.eval_dataset)
        if self.model_init is not None:
            # HF semantics: every train() starts from a fresh model_init() (hyperparameter trials)
            seed_everything(self.args)
            self.model = self._maybe_apply_peft(self._call_model_init(trial))
            self._prepare_model_once(self.model)
            self.callback_handler.model = self.model
            self.optimizer = self.lr_scheduler = None
        self._ignore_keys_for_eval = ignore_keys_for_eval
        if self.args.learning_rate == "auto":
            from .lr_finder import use_suggested_learning_rate

            use_suggested_learning_rate(self)
        self._lock = RunLock(output_dir, enabled=self.args.should_save)  # taken by `_start_run`
        try:
            with neftune_noise([self.model], self.args.neftune_noise_alpha), self._sigterm:
                if self.args.auto_find_batch_size:
                    from accelerate.utils import find_executable_batch_size

                    def attempt(batch_size: int) -> TrainOutput:
                        self.args.per_device_train_batch_size = batch_size
                        self.optimizer = self.lr_scheduler = None
                        return self._train_loop(resume)

                    start = self.args.per_device_train_batch_size
                    return find_executable_batch_size(attempt, starting_batch_size=start)()
                return self._train_loop(resume)
        except OSError as err:  # a log row, a report or a tracker file (checkpoints say it themselves)
            if ckpt.out_of_space(err, output_dir):
                raise ckpt.no_space_error(Path(err.filename or output_dir), 0) from None
            raise
        finally:
            self._lock.release()

    def _train_loop(self, resume: Path | None) -> TrainOutput:
        args, handler = self.args, self.callback_handler
        model, dataloader, micro_per_epoch = self._start_run(resume)
        state, meter, kernel = self.state, self.meter, self.step_kernel
        ga = args.gradient_accumulation_steps
        steps_per_epoch = math.ceil(micro_per_epoch / ga) if micro_per_epoch else None
        # a stream has no length: its pass is the one saved (set_epoch may reorder each pass, as
        # interleaved or shuffled streams do)
        start_epoch = state.global_step // steps_per_epoch if steps_per_epoch else int(state.epoch)
        skip = state.epoch_step if not args.ignore_data_skip else 0
        self.control = handler.on_train_begin(args, state, self.control)
        if args.eval_on_start and state.global_step == 0:
            self._evaluate_during_training()
        start_time = time.perf_counter()
        meter.start_clock()  # set-up and the first evaluation are not training time
        self._paused, flops_at_start, self._run_tokens, start_step = 0.0, state.total_flos, 0, state.global_step

        def micro_step(batch: dict[str, Any], num_items: torch.Tensor | None) -> torch.Tensor:
            return self.training_step(model, batch, num_items)

        def before_step() -> None:
            self.control = handler.on_pre_optimizer_step(args, state, self.control)

        def after_step() -> None:
            self.control = handler.on_optimizer_step(args, state, self.control)

        for epoch in range(start_epoch, state.num_train_epochs):
            iterator = iter(self._epoch_batches(dataloader, epoch, skip))
            skip = 0
            self.control = handler.on_epoch_begin(args, state, self.control)
            while state.global_step < state.max_steps:
                micro_batches = take(iterator, ga - (state.epoch_step % ga))
                if not micro_batches:
                    break
                self.control = handler.on_step_begin(args, state, self.control)
                done = kernel.run(
                    model,
                    micro_batches,
                    micro_step,
                    self.count_items,
                    on_micro=self._record_micro_batch,
                    before_step=before_step,
                    after_step=after_step,
                )
                if done.grad_norm is not None:
                    meter.set("grad_norm", done.grad_norm)
                window_loss, self._window_loss = self._window_loss, None  # `_record_micro_batch` summed it
                if self._nan_guard.stepped(done, state.global_step + 1):
                    self._add_step_loss(window_loss)
                else:
                    meter.add("skipped_steps", 1)
                state.global_step += 1
                meter.add("steps", 1)
                state.epoch = epoch + state.epoch_step / micro_per_epoch if micro_per_epoch else float(epoch)
                self.control = handler.on_step_end(args, state, self.control)
                self._sigterm.stop_if_requested(self.control)
                if self.control.should_log:
                    self._log_training()
                self._maybe_evaluate_and_save()
                if self.control.should_epoch_stop or self.control.should_training_stop:
                    break
            self.control = handler.on_epoch_end(args, state, self.control)
            if self.control.should_log and meter.get("steps"):
                self._log_training()
            self._maybe_evaluate_and_save()
            if self.control.should_training_stop or state.global_step >= state.max_steps:
                break
        return self._end_run(model, time.perf_counter() - start_time, state.global_step - start_step, flops_at_start)

    def _start_run(self, resume: Path | None) -> tuple[nn.Module, DataLoader, int | None]:
        """Everything before the first step: dataloader, optimizer, Accelerate, scheduler, state,
        step kernel and meter (restored from `resume`), trackers. Returns (the prepared model, the
        dataloader, micro-batches per epoch or None for a stream)."""
        args, accel = self.args, self.accelerator
        dataloader = self.get_train_dataloader()
        model = self.model
        if isinstance(self._shards, DeepSpeedState):
            raise ConfigError(
                "train() was already called under DeepSpeed, whose engine wraps this model and optimizer for good; "
                "build a new Trainer for another run"
            )
        # a second train() reuses the optimizer (HF semantics); never wrap Accelerate's wrapper twice
        if isinstance(self.optimizer, AcceleratedOptimizer):
            self.optimizer = self.optimizer.optimizer
        if self.optimizer is None:
            self.create_optimizer()
            if self.is_world_process_zero():  # the effective groups: pattern, tensors, parameters, lr, decay
                print(describe_param_groups(self.optimizer.param_groups, model))
        torch_optimizer = self.optimizer
        if accel.distributed_type == DistributedType.DEEPSPEED:
            # DeepSpeed's config needs the run's length before the engine is built
            dataloader = accel.prepare(dataloader)
            zero = configure_deepspeed(accel, args, training_length(args, safe_len(dataloader))[0], model)
            model, self.optimizer = accel.prepare(model, self.optimizer)
            self._shards = DeepSpeedState(model, stage=zero)
        else:
            model, self.optimizer, dataloader = accel.prepare(model, self.optimizer, dataloader)
            self._shards = self._sharded_model(model)
        self.model_wrapped = model
        self._chunked_head = self._choose_chunked_head(model)
        micro_per_epoch = safe_len(dataloader)
        max_steps, num_epochs = training_length(args, micro_per_epoch)
        # on the torch optimizer: the step kernel may step it past Accelerate's wrapper, and the
        # scheduler must see those steps (torch tracks them through the optimizer it was given;
        # DeepSpeed's optimizer reads its learning rates from it too)
        self.create_scheduler(max_steps, torch_optimizer)
        self.state = new_state(args, max_steps, num_epochs, accel)
        self.meter = Meter(accel.device)
        self.run_meter = Meter(accel.device)  # the whole run's loss, for train_loss
        if resume is not None:
            self.state = ckpt.load_checkpoint(resume, self._resumable(), accel)
            if self.state.global_step >= max_steps and self.is_world_process_zero():
                print(
                    f"resume: {resume.name} is at step {self.state.global_step}, at or past max_steps={max_steps}: "
                    "nothing left to train (raise max_steps or num_train_epochs to go on)"
                )
        if micro_per_epoch and self.state.epoch_step >= micro_per_epoch:
            self.state.epoch_step = 0  # saved at the end of an epoch: the next one starts from its beginning
        self.step_kernel = StepKernel(
            accel,
            self.optimizer,
            self.lr_scheduler,
            model.parameters(),
            max_grad_norm=args.max_grad_norm,
            ranks=accel.num_processes,
            items_across_ranks=args.average_tokens_across_devices,
            # a window of one micro-batch on one rank needs no count (its mean is the window's):
            # tensor ops and a graph node per step, 2% of a nano model's step (bench/step_overhead.py)
            always_count=self.compute_loss_func is not None,
            check_finite=args.nan_policy != "ignore",
        )
        self._nan_guard = NonFiniteGuard(args.nan_policy, args.nan_skip_limit)
        self._window_loss: torch.Tensor | None = None  # the logged loss of the optimizer step in progress
        handler = self.callback_handler
        handler.model, handler.optimizer, handler.lr_scheduler = self.model, self.optimizer, self.lr_scheduler
        handler.train_dataloader = dataloader
        self._lock.acquire()  # one writer per output_dir, from the first write on (re-entrant: batch-size retries)
        if resume is None and args.overwrite_output_dir and args.should_save:
            # the first write of the run, once every check passed (the optimizer built, a checkpoint
            # loaded): a start that fails leaves the old run as it was
            ckpt.clear_run(args.output_dir, args.logging_dir)
        # after clear_run (an overwritten run's TensorBoard folder goes before the writer opens its file),
        # unless an earlier train() started them; resumed runs too
        start_trackers(accel, args, self.model, self.tracker_sections)
        return model, dataloader, micro_per_epoch

    def _epoch_batches(self, dataloader: DataLoader, epoch: int, skip: int) -> Any:
        """The batches of `epoch`, from its start or (resuming) after the first `skip` micro-batches."""
        # Accelerate's loader re-applies its own epoch counter to the sampler on every iter();
        # set it there (it forwards to our sampler, and a skipping copy inherits it)
        if hasattr(dataloader, "set_epoch"):
            dataloader.set_epoch(epoch)
        elif isinstance(getattr(dataloader, "sampler", None), EpochSampler):  # an override may return any iterable
            dataloader.sampler.set_epoch(epoch)
        if not skip:
            self.state.epoch_step = 0
            return dataloader
        return skip_first_batches(self.accelerator, dataloader, skip)  # jumps there

    def _record_micro_batch(self, batch: dict[str, Any], loss_share: torch.Tensor, last: bool) -> None:
        """What the loop counts per micro-batch: its loss share, tokens, samples, FLOPs, progress."""
        args, state, meter = self.args, self.state, self.meter
        if args.logging_nan_inf_filter and args.nan_policy == "ignore":
            # an updated-anyway NaN/inf micro-step is logged as the row's running average (HF semantics),
            # on device; with nothing finite yet in the row there is nothing to average: it stays NaN
            so_far = meter.get("loss") + (0 if self._window_loss is None else self._window_loss)
            seen = meter.get("micro_batches")
            average = so_far / seen if seen else torch.tensor(float("nan"), device=loss_share.device)
            loss_share = torch.where(torch.isfinite(loss_share), loss_share, average)
        self._window_loss = loss_share if self._window_loss is None else self._window_loss + loss_share
        meter.add("micro_batches", 1)
        tokens, samples, seq_len = batch_size_info(batch)
        flops = self._flops.per_batch(tokens, seq_len)
        meter.add("tokens", tokens)
        meter.add("samples", samples)
        meter.add("flops", flops)
        self._run_tokens += tokens
        state.total_flos += flops
        if args.include_num_input_tokens_seen == "non_padding" and "attention_mask" in batch:
            meter.add("input_tokens_seen", batch["attention_mask"].sum())  # device tensor, read when logging
        elif args.include_num_input_tokens_seen:
            state.num_input_tokens_seen += tokens
        state.micro_step += 1
        state.epoch_step += 1
        if not last:
            self.control = self.callback_handler.on_substep_end(args, state, self.control)

    def _add_step_loss(self, loss: torch.Tensor | None) -> None:
        """Count an optimizer step's loss (this rank's share of the window mean) in the row and the run."""
        if loss is None:
            return
        meter = self.meter
        meter.add("loss", loss)
        self.run_meter.add("loss", loss)
        self.run_meter.add("steps", 1)

    def _end_run(self, model: nn.Module, runtime: float, steps_done: int, flops_at_start: float) -> TrainOutput:
        """After the last step: the best model back if asked, the train_* metrics row, on_train_end."""
        args, accel, state = self.args, self.accelerator, self.state
        if args.load_best_model_at_end and state.best_model_checkpoint is not None:
            self._load_model_from(Path(state.best_model_checkpoint))
        training_seconds = max(runtime - self._paused, 1e-9)
        samples = steps_done * args.gradient_accumulation_steps * args.per_device_train_batch_size
        metrics = {
            "train_runtime": round(runtime, 4),
            "train_samples_per_second": round(samples * accel.num_processes / max(runtime, 1e-9), 3),
            "train_steps_per_second": round(steps_done / max(runtime, 1e-9), 3),
            "total_flos": state.total_flos,
            "train_tokens_per_second": round(self._run_tokens * accel.num_processes / training_seconds, 2),
            "train_peak_memory_mb": peak_memory_mb_of_ranks(accel),
            **self._flops_row(state.total_flos - flops_at_start, training_seconds, "train_"),
            "train_loss": self._mean_loss_of_run(),
            "epoch": state.epoch,
        }
        metrics.update(self._init_memory)
        self._init_memory = {}
        metrics.update(self._memory.stop("train"))
        self.log(metrics)
        self.step_kernel = None  # training_step outside train() backpropagates unscaled again
        self.control = self.callback_handler.on_train_end(args, state, self.control)
        return TrainOutput(state.global_step, metrics["train_loss"], metrics)

    def _log_training(self) -> None:
        """Build and emit a training log row: the only place the loop syncs with the host."""
        accel, meter, world = self.accelerator, self.meter, self.accelerator.num_processes
        skipped = meter.read("skipped_steps")
        taken = meter.read("steps") - skipped  # a skipped (non-finite) step has no loss to average
        loss = meter.summed_over_ranks("loss", accel)
        logs: dict[str, float] = {"loss": loss / taken if taken else float("nan")}
        if skipped:
            logs["skipped_steps"] = skipped
        if meter.get("grad_norm", None) is not None:
            logs["grad_norm"] = meter.read("grad_norm")
        logs["learning_rate"] = float(self.step_kernel.learning_rate)  # the rate the last step used, as HF logs it
        elapsed = meter.elapsed()
        logs["tokens_per_second"] = round(meter.read("tokens") * world / elapsed, 2)
        logs["samples_per_second"] = round(meter.read("samples") * world / elapsed, 3)
        logs["peak_memory_mb"] = peak_memory_mb_of_ranks(accel)
        logs.update(self._flops_row(meter.read("flops"), elapsed))
        if self.args.include_num_input_tokens_seen:
            self.state.num_input_tokens_seen += int(meter.pop("input_tokens_seen"))
            logs["num_input_tokens_seen"] = self.state.num_input_tokens_seen * world
        logs.update(loss_term_means(meter, accel))
        meter.reset()
        self.log(logs)

    def _mean_loss_of_run(self) -> float:
        """train_loss as HF reports it: the mean loss over every step of the run (all ranks)."""
        steps = self.run_meter.read("steps")
        if not steps:
            return float("nan")
        return self.run_meter.summed_over_ranks("loss", self.accelerator) / steps

    def _flops_row(self, flops: float, seconds: float, prefix: str = "") -> dict[str, float]:
        return flops_row(flops, seconds, self.accelerator.num_processes, self.peak_flops() if flops else None, prefix)

    def _maybe_evaluate_and_save(self) -> None:
        if not (self.control.should_evaluate or self.control.should_save):
            return
        start = time.perf_counter()
        if self.control.should_evaluate:
            self._evaluate_during_training()
        if self.control.should_save:
            self.state.num_input_tokens_seen += int(self.meter.pop("input_tokens_seen"))
            self._save_checkpoint()
            if self.args.push_to_hub and self.args.hub_strategy != "end":
                self.callback_handler.on_push_begin(self.args, self.state, self.control)  # HubCallback uploads on_save
            self.control = self.callback_handler.on_save(self.args, self.state, self.control)
            self.control.should_save = False
        pause = time.perf_counter() - start
        self.meter.pause(pause)
        self._paused += pause

    def _evaluate_during_training(self) -> dict[str, float]:
        metrics = self.evaluate(ignore_keys=getattr(self, "_ignore_keys_for_eval", None))
        if after_evaluation(self.state, self.args, metrics, [self.step_kernel]) and self.args.save_strategy == "best":
            self.control.should_save = True
        self.control.should_evaluate = False
        return metrics

    # ---- checkpoints (what one holds: checkpoint.Resumable) ---------------------------------

    def _resumable(self) -> ckpt.Resumable:
        """This trainer's part of a checkpoint: one model at the top, its optimizer and scheduler, the meter."""
        return ckpt.Resumable(
            state=self.state,
            save_models=lambda directory: self._save(directory, _internal_call=True),
            load_models=self._load_model_from,
            optimizers={"": self.optimizer},
            schedulers={"": self.lr_scheduler},
            stateful={"meter": self.meter, "run": self.run_meter},
            optional=frozenset({"meter", "run"}),  # a checkpoint of an older release or of HF's Trainer resumes too
            callbacks=self.callback_handler.callbacks,
            restore_callbacks=self.args.restore_callback_states_from_checkpoint,
            shards=self._shards,
        )

    def _sharded_model(self, model: nn.Module) -> ShardedModel | None:
        """The per-rank checkpoint handler of a model FSDP2 shards (None for any other model)."""
        if not is_sharded(model):
            return None
        plugin = self.accelerator.state.fsdp_plugin
        kind = getattr(getattr(plugin, "state_dict_type", None), "name", "SHARDED_STATE_DICT")
        if kind != "SHARDED_STATE_DICT" and unwrap_peft(model) is not model:
            raise ConfigError(
                f"fsdp_config state_dict_type={kind} with a PEFT adapter: its checkpoints would keep only the adapter, "
                "which a sharded model cannot resume from; use SHARDED_STATE_DICT (the default)"
            )
        return ShardedModel(model, shard_checkpoints=kind == "SHARDED_STATE_DICT")

    def _load_model_from(self, directory: Path) -> None:
        """Load the weights saved in checkpoint `directory` into the live model (every rank, when sharded)."""
        shards = self._shards
        if shards is not None:
            shards.load_model(directory)
        else:
            ckpt.load_model_files(self.accelerator.unwrap_model(self.model_wrapped), directory)

    def _save_checkpoint(self) -> Path:
        path = ckpt.save_checkpoint(self._resumable(), self.args, self.accelerator)
        self._own_checkpoints.add(path.name)  # a second train() may write beside it
        return path

    # ---- logging ------------------------------------------------------------------------

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Record a row in `state.log_history` and hand it to the callbacks (progress, JSONL, trackers)."""
        self.control = self.callback_handler.log(self.args, self.state, self.control, logs)
