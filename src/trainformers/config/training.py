"""`TrainingArguments`: the Hugging Face field names, defaults and meanings, and their Markdown table."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..allocator import MALLOC_POLICIES
from ..errors import ConfigError
from ..fsdp import fsdp_settings, normalise_fsdp_config
from .fields import (
    ACCELERATOR_CONFIG_KEYS,
    AUTO_TRACKERS,
    DDP_BACKENDS,
    FSDP_OPTIONS,
    HUB_STRATEGIES,
    INTERVAL_STRATEGIES,
    LOG_LEVELS,
    METRIC_INPUTS,
    OPTIMIZERS,
    SAMPLING_STRATEGIES,
    SAVE_STRATEGIES,
    SCHEDULERS,
    TOKENS_SEEN_MODES,
    TRACKERS,
    alias,
    alias_target,
    alias_warns,
    arg,
    check_field_types,
    check_int,
    check_seed,
    check_steps,
    choice,
    field_default,
    is_alias,
    is_number,
    json_dict,
    unknown_field_message,
)
from .process import ProcessInfo
from .yaml_io import parse_value

NAN_POLICIES = ("stop", "skip_step", "ignore")  # what a non-finite step does (step.NonFiniteGuard)


@dataclass
class TrainingArguments(ProcessInfo):
    """Hyperparameters of a training run, with the transformers 5 names, defaults and meanings.

    Older spellings (`evaluation_strategy`, `warmup_ratio`, `no_cuda`, ...) are accepted with a
    `FutureWarning` and mapped onto the current names. Every contradiction or out-of-range value
    raises a one-line `ConfigError` from `__post_init__`.

    Raises:
        ConfigError: an unknown or unsupported keyword, a value out of range, or two settings
            that contradict each other.
    """

    # --- output and run ---
    output_dir: str = arg("trainer_output", "Directory for checkpoints, logs and the final model.")
    overwrite_output_dir: bool = arg(
        False, "Allow writing into a non-empty output_dir instead of refusing to clobber a previous run."
    )
    run_name: str | None = arg(
        None, "Name of the run in every tracker (W&B, MLflow, trackio, TensorBoard's folder); None: output_dir's name."
    )
    project: str = arg(
        "huggingface", "Project the trackers file the run under: trackio's, and W&B's unless WANDB_PROJECT is set."
    )
    trackio_space_id: str | None = arg(
        None, "Hugging Face Space trackio logs to ('user/name'); None logs locally (TRACKIO_DIR, else HF_HOME/trackio)."
    )
    seed: int = arg(42, "Random seed set at the start of training, before the model is initialised.")
    data_seed: int | None = arg(None, "Seed for the data samplers only; None uses seed.")
    full_determinism: bool = arg(False, "Enable deterministic torch algorithms for bitwise-reproducible runs (slower).")
    do_train: bool = arg(False, "Informational flag for scripts: whether to train. The Trainer ignores it.")
    do_eval: bool = arg(
        False, "Informational flag for scripts: whether to evaluate; set when eval_strategy is not 'no'."
    )
    do_predict: bool = arg(False, "Informational flag for scripts: whether to predict. The Trainer ignores it.")
    # --- duration ---
    num_train_epochs: float = arg(3.0, "Number of passes over the training data; a fraction stops part-way.")
    max_steps: int = arg(-1, "Number of optimizer steps to run; when > 0 it overrides num_train_epochs.")
    # --- batching and data loading ---
    per_device_train_batch_size: int = arg(8, "Training samples per device in one forward/backward pass.")
    per_device_eval_batch_size: int = arg(8, "Evaluation samples per device in one forward pass.")
    gradient_accumulation_steps: int = arg(
        1, "Forward/backward passes summed into one optimizer step, to simulate a larger batch."
    )
    dataloader_drop_last: bool = arg(False, "Drop the last incomplete batch of each epoch.")
    dataloader_num_workers: int = arg(0, "Worker processes for data loading; 0 loads in the main process.")
    dataloader_pin_memory: bool = arg(
        False,
        "Pin host memory for faster GPU transfer. Off by default here (transformers: on) because "
        "on CPU-only machines torch warns about it on every run.",
    )
    dataloader_persistent_workers: bool = arg(False, "Keep data-loading workers alive between epochs.")
    dataloader_prefetch_factor: int | None = arg(
        None, "Batches each worker loads in advance; needs dataloader_num_workers > 0."
    )
    train_sampling_strategy: str = arg(
        "random", "Order of training samples: 'random', 'sequential' or 'group_by_length'."
    )
    group_by_length: bool = arg(
        False,
        "Batch samples of similar length together to reduce padding; same as "
        "train_sampling_strategy='group_by_length'.",
    )
    length_column_name: str = arg("length", "Column holding precomputed lengths for group_by_length.")
    remove_unused_columns: bool = arg(True, "Drop dataset columns the model's forward() does not accept.")
    label_names: list[str] | None = arg(None, "Keys of the batch that hold labels; None detects them from the model.")
    # --- optimisation ---
    learning_rate: float | str = arg(
        5e-5, "Peak learning rate, reached after warmup; 'auto' runs the LR range test first and uses its suggestion."
    )
    weight_decay: float = arg(0.0, "Decoupled weight decay, not applied to biases and norm weights.")
    adam_beta1: float = arg(0.9, "Adam beta1: decay rate of the first-moment estimate.")
    adam_beta2: float = arg(0.999, "Adam beta2: decay rate of the second-moment estimate.")
    adam_epsilon: float = arg(1e-8, "Adam epsilon added to the denominator for numerical stability.")
    max_grad_norm: float = arg(1.0, "Clip the global gradient norm to this value; 0 or less disables clipping.")
    optim: str = arg(
        "adamw_torch_fused",
        "Optimizer name. The 8-bit and paged variants need bitsandbytes, checked when training starts.",
    )
    optim_args: dict | str | None = arg(
        None, "Extra optimizer keyword arguments, as 'k=v,k2=v2' or a dict (e.g. 'momentum=0.9')."
    )
    lr_scheduler_type: str = arg("linear", "Learning-rate schedule after warmup; any transformers SchedulerType.")
    lr_scheduler_kwargs: dict[str, Any] = arg({}, "Extra keyword arguments for the scheduler (e.g. num_cycles).")
    warmup_steps: float = arg(
        0, "Linear warmup: an integer >= 1 is a number of steps, a float in [0, 1) a fraction of all steps."
    )
    label_smoothing_factor: float = arg(0.0, "Label smoothing for the cross-entropy loss, in [0, 1).")
    chunked_cross_entropy: bool = arg(
        True,
        "Causal LMs: compute the training loss chunk by chunk from the last hidden states and the output layer, "
        "never holding the (batch, seq, vocab) logits (same loss and gradients); a model it can't handle says so "
        "and trains the plain way.",
    )
    use_liger_kernel: bool = arg(
        False,
        "Patch the model with Liger Kernel's fused Triton layers (fused linear cross-entropy, RMSNorm, RoPE, "
        "SwiGLU); needs the liger-kernel package and a CUDA GPU.",
    )
    neftune_noise_alpha: float | None = arg(
        None,
        "NEFTune: add uniform noise of scale alpha / sqrt(sequence length x hidden size) to the input embeddings "
        "while training (5 is usual); None for none.",
    )
    param_groups: list[dict[str, Any]] | None = arg(
        None,
        "Per-parameter-group settings: a list of {pattern, lr, weight_decay} matched (re.search) against "
        "parameter names, first match wins; unmatched parameters use learning_rate/weight_decay.",
    )
    loraplus_lr_ratio: float | None = arg(
        None, "LoRA+: the LoRA B matrices train at learning_rate times this ratio (e.g. 16); None disables."
    )
    # --- precision ---
    bf16: bool = arg(False, "Train with bfloat16 mixed precision (autocast).")
    fp16: bool = arg(False, "Train with float16 mixed precision (autocast with a gradient scaler).")
    tf32: bool | None = arg(None, "Allow TF32 matmuls on Ampere+ GPUs; None leaves torch's setting alone.")
    bf16_full_eval: bool = arg(False, "Evaluate with the whole model cast to bfloat16 (faster, less exact).")
    fp16_full_eval: bool = arg(False, "Evaluate with the whole model cast to float16 (faster, less exact).")
    # --- memory and speed ---
    gradient_checkpointing: bool = arg(False, "Recompute activations in backward to save memory, at ~30% more compute.")
    gradient_checkpointing_kwargs: dict[str, Any] | None = arg(
        None, "Keyword arguments for model.gradient_checkpointing_enable (e.g. use_reentrant)."
    )
    use_cache: bool = arg(
        False,
        "Set model.config.use_cache while training; off, because a KV cache is useless in training and "
        "breaks document-local attention for padding-free batches.",
    )
    torch_compile: bool = arg(False, "Compile the model with torch.compile.")
    torch_compile_backend: str | None = arg(None, "torch.compile backend; setting it turns torch_compile on.")
    torch_compile_mode: str | None = arg(
        None, "torch.compile mode (e.g. 'reduce-overhead'); setting it turns torch_compile on."
    )
    auto_find_batch_size: bool = arg(False, "On out-of-memory, shrink the batch size and retry.")
    cpu_malloc: str = arg(
        "auto",
        "glibc malloc: 'speed' keeps freed memory for the next step (no page faults), 'memory' returns every "
        "block of 128 KiB or more when freed (a smaller peak for large models), 'system' leaves glibc alone, "
        "'auto' is 'speed' in the CLI and 'system' from Python. Applied when training starts; "
        "MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_ win.",
    )
    # --- logging ---
    logging_strategy: str = arg("steps", "When to log: 'steps' (every logging_steps), 'epoch' or 'no'.")
    logging_steps: float = arg(500, "Log every N optimizer steps, or a fraction in (0, 1) of the total steps.")
    logging_first_step: bool = arg(False, "Also log after the first optimizer step.")
    logging_nan_inf_filter: bool = arg(
        True,
        "With nan_policy=ignore: leave NaN/inf step losses out of the logged average (the update still happens).",
    )
    nan_policy: str = arg(
        "stop",
        "A step whose loss or gradient is NaN/inf, caught before the update: 'stop' (an error naming the step; "
        "weights and checkpoints stay those of the last good step), 'skip_step' (drop that update, count it as "
        "skipped_steps in the log) or 'ignore' (update anyway, as transformers does).",
    )
    nan_skip_limit: int = arg(10, "With nan_policy=skip_step: stop after this many skipped steps in a row.")
    report_at_end: bool = arg(
        True, "At the end of train(), write report.png and report.md (curves, metrics, config diff) into output_dir."
    )
    peak_tflops: float | None = arg(
        None,
        "Peak TFLOP/s of one device, for the logged MFU; None: a GPU's datasheet figure, else a matmul measured "
        "once and cached (~/.cache/trainformers); 0 turns MFU off (TFLOP/s is still logged).",
    )
    report_to: None | str | list[str] = arg(
        "none", "Trackers to log to: a name or list of them, 'all' for the installed ones, 'none' for none."
    )
    logging_dir: str | None = arg(None, "TensorBoard log directory; None means OUTPUT_DIR/runs.")
    disable_tqdm: bool | None = arg(None, "Hide the progress bar; None shows it.")
    log_level: str = arg(
        "passive", "Logger verbosity: debug, info, warning, error, critical, or passive to leave it as is."
    )
    log_level_replica: str = arg("warning", "Logger verbosity of the processes that do not log (see should_log).")
    log_on_each_node: bool = arg(True, "Log from the main process of every machine, not only of the first.")
    include_num_input_tokens_seen: bool | str = arg(
        False, "Log the input tokens seen: True or 'all' counts every token, 'non_padding' skips padding."
    )
    # --- evaluation ---
    eval_strategy: str = arg("no", "When to evaluate: 'no', 'steps' (every eval_steps) or 'epoch'.")
    eval_steps: float | None = arg(
        None, "Evaluate every N steps, or a fraction in (0, 1) of the total; None uses logging_steps."
    )
    eval_delay: float = arg(0, "Epochs or steps (following eval_strategy) to wait before the first evaluation.")
    eval_on_start: bool = arg(False, "Evaluate once before training, as a sanity check.")
    prediction_loss_only: bool = arg(False, "In evaluate/predict return only the loss, not logits and labels.")
    eval_accumulation_steps: int | None = arg(
        None,
        "Keep eval outputs on the device for N batches, then move them to the CPU as numpy in one copy; "
        "None moves each batch's outputs to the CPU as it comes.",
    )
    include_for_metrics: list[str] = arg([], "Extra inputs passed to compute_metrics: any of 'inputs', 'loss'.")
    batch_eval_metrics: bool = arg(
        False, "Call compute_metrics on every eval batch and once at the end, to save memory."
    )
    eval_do_concat_batches: bool = arg(
        True, "Concatenate the eval batches' predictions; False hands compute_metrics a list of per-batch arrays."
    )
    eval_use_gather_object: bool = arg(
        False,
        "Gather eval outputs across processes as Python objects (nested or ragged outputs). Outputs are always "
        "gathered that way here, so both values give the same result.",
    )
    # --- saving ---
    save_strategy: str = arg(
        "steps", "When to checkpoint: 'no', 'steps', 'epoch' or 'best' (when the metric improves)."
    )
    save_steps: float = arg(500, "Checkpoint every N steps, or a fraction in (0, 1) of the total steps.")
    save_total_limit: int | None = arg(None, "Keep at most N checkpoints, deleting the oldest (never the best).")
    save_only_model: bool = arg(
        False, "Save only the model weights in checkpoints; such a checkpoint cannot resume training."
    )
    load_best_model_at_end: bool = arg(False, "Load the best checkpoint (by metric_for_best_model) when training ends.")
    metric_for_best_model: str | None = arg(None, "Eval metric that ranks checkpoints; defaults to 'loss' when needed.")
    greater_is_better: bool | None = arg(
        None, "Whether a larger metric is better; None: False for metrics ending in 'loss', else True."
    )
    resume_from_checkpoint: str | None = arg(
        None, "Checkpoint directory to resume from, or True for the latest one in output_dir."
    )
    save_on_each_node: bool = arg(
        False, "Write every checkpoint on each machine (for clusters whose machines share no disk)."
    )
    enable_jit_checkpoint: bool = arg(
        False,
        "On SIGTERM (a preemptible machine being reclaimed), save a checkpoint after the current step and stop "
        "training cleanly; resume it with resume_from_checkpoint=True.",
    )
    ignore_data_skip: bool = arg(
        False, "On resume, start the data from the beginning instead of skipping the batches already seen."
    )
    restore_callback_states_from_checkpoint: bool = arg(
        True,
        "On resume, restore the state of callbacks saved in the checkpoint (e.g. early stopping's patience). On by "
        "default here (transformers: off) because a resumed run must equal one that never stopped.",
    )
    # --- distributed (handed to Accelerate) ---
    ddp_find_unused_parameters: bool | None = arg(None, "DDP find_unused_parameters; None lets the trainer decide.")
    ddp_bucket_cap_mb: int | None = arg(None, "DDP gradient bucket size in MiB.")
    ddp_broadcast_buffers: bool | None = arg(None, "DDP broadcast_buffers.")
    ddp_static_graph: bool | None = arg(None, "DDP static_graph, for models whose graph never changes.")
    ddp_backend: str | None = arg(None, "torch.distributed backend; None picks one for the device.")
    ddp_timeout: int = arg(1800, "Timeout in seconds for collective operations.")
    fsdp: list[str] | str | bool = arg(
        [], "FSDP2 (fully_shard) options as a list or a string (e.g. 'full_shard auto_wrap'); empty disables FSDP."
    )
    fsdp_config: dict[str, Any] | str | None = arg(
        None, "FSDP settings (HF/axolotl keys, fsdp_ prefix optional) as a dict or the path of a JSON file."
    )
    deepspeed: dict[str, Any] | str | None = arg(None, "DeepSpeed config as a dict or the path of a JSON file.")
    use_cpu: bool = arg(False, "Train on the CPU even when an accelerator is available.")
    average_tokens_across_devices: bool = arg(
        True, "Sum the label-token count over all processes so the loss is normalised by the global count."
    )
    accelerator_config: dict[str, Any] | str | None = arg(
        None, "Extra accelerate.Accelerator settings (e.g. split_batches) as a dict or a JSON file path."
    )
    # --- hub ---
    push_to_hub: bool = arg(False, "Upload the model to the Hugging Face Hub.")
    hub_model_id: str | None = arg(None, "Hub repository name ('user/name'); None uses output_dir's name.")
    hub_strategy: str = arg(
        "every_save", "What to push and when: 'end', 'every_save', 'checkpoint' or 'all_checkpoints'."
    )
    hub_token: str | None = arg(None, "Hub token; None uses the cached login. Never written to logs.")
    hub_private_repo: bool | None = arg(None, "Create the Hub repository as private; None uses your account default.")
    hub_revision: str | None = arg(None, "Hub branch or revision to push to.")
    # --- misc ---
    local_rank: int = arg(-1, "Set by the launcher; -1 outside distributed runs.")
    debug: str | list[str] = arg("", "transformers' debug options (underflow_overflow, tpu_metrics_debug); refused.")
    skip_memory_metrics: bool = arg(
        True, "Skip the *_mem_*_delta metrics (CPU and GPU memory per init/train/eval/test stage)."
    )
    # --- accepted other spellings, mapped in __post_init__ and then reset to None ---
    evaluation_strategy: str | None = alias("eval_strategy", "Deprecated: use eval_strategy.")
    warmup_ratio: float | None = alias("warmup_steps", "Deprecated: use warmup_steps with a fraction below 1.")
    no_cuda: bool | None = alias("use_cpu", "Deprecated: use use_cpu.")
    push_to_hub_model_id: str | None = alias("hub_model_id", "Deprecated: use hub_model_id.")
    fp16_opt_level: str | None = alias(
        None, "Deprecated and ignored: Apex optimisation levels do not apply to torch autocast."
    )
    activation_checkpointing: bool | None = alias(
        "gradient_checkpointing", "transformers 5 name of gradient_checkpointing; a synonym.", warn=False
    )
    activation_checkpointing_kwargs: dict[str, Any] | None = alias(
        "gradient_checkpointing_kwargs",
        "transformers 5 name of gradient_checkpointing_kwargs; accepted as a synonym.",
        warn=False,
    )

    def __new__(cls, *args: Any, **kwargs: Any) -> TrainingArguments:
        # The generated __init__ raises a bare TypeError for an unknown keyword; checking here
        # instead covers every subclass too, with no wrapper to re-apply after @dataclass.
        known = [f.name for f in dataclasses.fields(cls) if f.init]
        for name in kwargs:
            if name not in known:
                raise ConfigError(unknown_field_message(cls.__name__, name, known))
        return super().__new__(cls)

    def __post_init__(self) -> None:
        # before anything compares or computes with a value of the wrong type; a subclass checks its own fields
        check_field_types(self, cls=TrainingArguments)
        self._apply_aliases()
        self._normalise()
        self._validate()

    def _apply_aliases(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not is_alias(f) or value is None:
                continue
            old, new = f.name, alias_target(f)
            setattr(self, old, None)  # so to_dict() and equality see only the current names
            if new is None:
                message = f"TrainingArguments: '{old}' is ignored. {f.metadata['help']}"
                warnings.warn(message, FutureWarning, stacklevel=4)
                continue
            if alias_warns(f):
                message = f"TrainingArguments: '{old}' is deprecated; use '{new}' instead"
                warnings.warn(message, FutureWarning, stacklevel=4)
            if old == "warmup_ratio":
                self._apply_warmup_ratio(value)
                continue
            current = getattr(self, new)
            if current != field_default(self.__dataclass_fields__[new]) and current != value:
                raise ConfigError(f"Can't set both {old} and {new} (got {value!r} and {current!r}); keep only {new}")
            setattr(self, new, value)

    def _apply_warmup_ratio(self, ratio: Any) -> None:
        if not is_number(ratio) or not 0 <= ratio < 1:
            raise ConfigError(f"warmup_ratio={ratio!r} must be in [0, 1); for a step count use warmup_steps=N")
        if ratio and self.warmup_steps:
            raise ConfigError(
                f"Can't set both warmup_steps and warmup_ratio (got {self.warmup_steps!r} and {ratio!r}); "
                "use warmup_steps alone (a float below 1 is a fraction of the total steps)"
            )
        if ratio:
            self.warmup_steps = float(ratio)

    def _normalise(self) -> None:
        """Fill derived defaults and bring values given in several forms to one form."""
        self.optim = choice("optim", self.optim, OPTIMIZERS)
        self.lr_scheduler_type = choice("lr_scheduler_type", self.lr_scheduler_type, SCHEDULERS)
        self.logging_strategy = choice("logging_strategy", self.logging_strategy, INTERVAL_STRATEGIES)
        self.eval_strategy = choice("eval_strategy", self.eval_strategy, INTERVAL_STRATEGIES)
        self.save_strategy = choice("save_strategy", self.save_strategy, SAVE_STRATEGIES)
        self.hub_strategy = choice("hub_strategy", self.hub_strategy, HUB_STRATEGIES)
        self.log_level = choice("log_level", self.log_level, LOG_LEVELS)
        self.log_level_replica = choice("log_level_replica", self.log_level_replica, LOG_LEVELS)
        if self.ddp_backend is not None:
            self.ddp_backend = choice("ddp_backend", self.ddp_backend, DDP_BACKENDS)
        self.output_dir = os.path.expanduser(os.fspath(self.output_dir or "trainer_output"))
        if self.logging_dir is None:
            self.logging_dir = os.path.join(self.output_dir, "runs")
        self.disable_tqdm = bool(self.disable_tqdm)
        if self.hub_token == "<HUB_TOKEN>":
            self.hub_token = None  # the mask to_dict() writes, read back from a saved config
        if self.use_cpu:
            self.dataloader_pin_memory = False  # nothing to pin for; torch would warn
        for name in ("lr_scheduler_kwargs", "gradient_checkpointing_kwargs"):
            setattr(self, name, json_dict(name, getattr(self, name), allow_path=False))
        self.lr_scheduler_kwargs = dict(self.lr_scheduler_kwargs or {})
        for name in ("fsdp_config", "accelerator_config"):
            setattr(self, name, json_dict(name, getattr(self, name), allow_path=True))
        unknown = sorted(set(self.accelerator_config or {}) - set(ACCELERATOR_CONFIG_KEYS))
        if unknown:
            raise ConfigError(
                f"accelerator_config keys {unknown} are not supported; the ones carried out are "
                f"{', '.join(ACCELERATOR_CONFIG_KEYS)}"
            )
        if self.debug not in ("", [], None):
            raise ConfigError(
                f"debug={self.debug!r}: transformers' debug options are not carried out by trainformers; leave debug "
                "empty (anomaly detection: torch.autograd.set_detect_anomaly)"
            )
        if self.neftune_noise_alpha is not None and (
            not is_number(self.neftune_noise_alpha) or self.neftune_noise_alpha <= 0
        ):
            raise ConfigError(
                f"neftune_noise_alpha={self.neftune_noise_alpha!r} must be a positive number (5 is usual) or None"
            )
        if self.save_on_each_node and self.deepspeed:
            raise ConfigError(
                "save_on_each_node=True with deepspeed: the engine's checkpoint is complete only on the first machine; "
                "use a disk every machine shares and drop save_on_each_node"
            )
        if isinstance(self.deepspeed, str):
            if self.deepspeed.lstrip().startswith("{"):
                self.deepspeed = json_dict("deepspeed", self.deepspeed, allow_path=False)
            elif not Path(self.deepspeed).is_file():
                raise ConfigError(f"deepspeed: file '{self.deepspeed}' not found; pass a dict or a JSON file's path")
        if self.torch_compile_backend is not None or self.torch_compile_mode is not None:
            self.torch_compile = True
        self._normalise_sampling()
        self._normalise_report_to()
        self._normalise_fsdp()
        tokens_seen = self.include_num_input_tokens_seen
        if tokens_seen is True or tokens_seen == "no" or tokens_seen is False:
            # Kept falsy when off so `if args.include_num_input_tokens_seen:` reads right.
            self.include_num_input_tokens_seen = "all" if tokens_seen is True else False
        else:
            self.include_num_input_tokens_seen = choice("include_num_input_tokens_seen", tokens_seen, TOKENS_SEEN_MODES)
        if self.eval_strategy != "no":
            self.do_eval = True
        if self.eval_steps in (None, 0) and self.eval_strategy == "steps":
            self.eval_steps = self.logging_steps
        if self.load_best_model_at_end or self.lr_scheduler_type in ("reduce_lr_on_plateau", "greedy"):
            self.metric_for_best_model = self.metric_for_best_model or "loss"
        if self.greater_is_better is None and self.metric_for_best_model is not None:
            self.greater_is_better = not self.metric_for_best_model.endswith("loss")

    def _normalise_sampling(self) -> None:
        strategy = choice("train_sampling_strategy", self.train_sampling_strategy, SAMPLING_STRATEGIES)
        self.train_sampling_strategy = strategy
        if self.group_by_length and self.train_sampling_strategy == "sequential":
            raise ConfigError("Can't set both group_by_length=True and train_sampling_strategy='sequential'; pick one")
        if self.group_by_length:
            self.train_sampling_strategy = "group_by_length"
        self.group_by_length = self.train_sampling_strategy == "group_by_length"

    def _normalise_report_to(self) -> None:
        names = self.report_to
        names = [] if names is None else [names] if isinstance(names, str) else list(names)
        resolved: list[str] = []
        for name in names:
            if name == "all":
                resolved += [t for t in AUTO_TRACKERS if importlib.util.find_spec(t) is not None]
            elif name != "none":
                resolved.append(choice("report_to", name, (*TRACKERS, "all", "none")))
        self.report_to = list(dict.fromkeys(resolved))  # dedupe, keep order

    def _normalise_fsdp(self) -> None:
        options = self.fsdp
        if options is True:
            options = ["auto_wrap"]  # transformers' `fsdp=True`: on, the strategy from fsdp_config (FULL_SHARD)
        elif not options:
            options = []
        elif isinstance(options, str):
            options = options.split()
        self.fsdp = [choice("fsdp", option, FSDP_OPTIONS) for option in options]
        if self.fsdp_config and not self.fsdp:
            raise ConfigError(
                "training.fsdp_config is set but training.fsdp is empty; set fsdp: full_shard, or drop it"
            )
        if self.fsdp:
            self.fsdp_config = normalise_fsdp_config(self.fsdp_config)
            fsdp_settings(self.fsdp, self.fsdp_config)  # every value checked now, before any data or weights load
            if self.save_on_each_node:
                raise ConfigError(
                    "save_on_each_node=True with fsdp: each rank writes its shard into one checkpoint, which needs a "
                    "disk every machine shares; drop save_on_each_node"
                )

    def _validate(self) -> None:
        """Reject values out of range and settings that contradict each other."""
        for item in self.include_for_metrics:
            choice("include_for_metrics", item, METRIC_INPUTS)
        choice("nan_policy", self.nan_policy, NAN_POLICIES)
        choice("cpu_malloc", self.cpu_malloc, MALLOC_POLICIES)
        check_int("nan_skip_limit", self.nan_skip_limit, 1)
        self.optim_args_dict()  # parse once so a malformed string fails now, not at step 0

        self._validate_ranges()
        check_int("per_device_train_batch_size", self.per_device_train_batch_size, 1)
        check_int("per_device_eval_batch_size", self.per_device_eval_batch_size, 1)
        check_int("gradient_accumulation_steps", self.gradient_accumulation_steps, 1)
        check_int("dataloader_num_workers", self.dataloader_num_workers, 0)
        if self.eval_accumulation_steps is not None:
            check_int("eval_accumulation_steps", self.eval_accumulation_steps, 1)
        if self.dataloader_prefetch_factor is not None and self.dataloader_num_workers == 0:
            raise ConfigError(
                f"dataloader_prefetch_factor={self.dataloader_prefetch_factor} needs "
                "dataloader_num_workers > 0; set workers or remove the prefetch factor"
            )
        if isinstance(self.learning_rate, str) and self.learning_rate != "auto":
            try:
                self.learning_rate = float(self.learning_rate)
            except ValueError:
                raise ConfigError(
                    f"learning_rate must be a number, got {self.learning_rate!r} (or 'auto' to run the LR finder)"
                ) from None
        if self.learning_rate != "auto" and (not is_number(self.learning_rate) or self.learning_rate < 0):
            raise ConfigError(f"learning_rate={self.learning_rate!r} must be a number >= 0 (or 'auto')")
        if self.peak_tflops is not None and (not is_number(self.peak_tflops) or self.peak_tflops < 0):
            raise ConfigError(
                f"peak_tflops={self.peak_tflops!r} must be a number of TFLOP/s >= 0 (0 turns MFU off), or None to measure it"
            )
        if self.loraplus_lr_ratio is not None and (
            not is_number(self.loraplus_lr_ratio) or self.loraplus_lr_ratio <= 0
        ):
            raise ConfigError(f"loraplus_lr_ratio={self.loraplus_lr_ratio!r} must be a positive number (e.g. 16)")
        if self.learning_rate == "auto" and any(isinstance(g, Mapping) and "lr" in g for g in self.param_groups or []):
            raise ConfigError(
                "learning_rate='auto' can't be combined with absolute lr values in param_groups (the range test "
                "scales one base rate); set learning_rate to a number or drop the group lrs"
            )
        for i, group in enumerate(self.param_groups or []):
            if not isinstance(group, Mapping) or "pattern" not in group:
                raise ConfigError(
                    f"param_groups[{i}]={group!r} must be a mapping with a 'pattern' (and lr, weight_decay)"
                )
            unknown = set(group) - {"pattern", "lr", "weight_decay"}
            if unknown:
                raise ConfigError(
                    f"param_groups[{i}] has unknown keys {sorted(unknown)}; allowed: pattern, lr, weight_decay"
                )
            try:
                re.compile(group["pattern"])
            except re.error as err:
                raise ConfigError(
                    f"param_groups[{i}].pattern {group['pattern']!r} is not a valid regex: {err}"
                ) from None
        if not is_number(self.warmup_steps) or self.warmup_steps < 0:
            raise ConfigError(f"warmup_steps={self.warmup_steps!r} must be >= 0 (steps, or a fraction < 1)")
        if self.warmup_steps >= 1:
            self.warmup_steps = check_steps("warmup_steps", self.warmup_steps)
        if not is_number(self.label_smoothing_factor) or not 0 <= self.label_smoothing_factor < 1:
            raise ConfigError(f"label_smoothing_factor={self.label_smoothing_factor!r} must be in [0, 1)")
        if self.num_train_epochs <= 0 and self.max_steps <= 0:
            raise ConfigError(
                f"num_train_epochs={self.num_train_epochs} and max_steps={self.max_steps} leave nothing "
                "to train; set num_train_epochs > 0 or max_steps > 0"
            )
        if self.fp16 and self.bf16:
            raise ConfigError("Can't set both fp16 and bf16; pick one")
        if self.fp16_full_eval and self.bf16_full_eval:
            raise ConfigError("Can't set both fp16_full_eval and bf16_full_eval; pick one")

        if self.logging_strategy == "steps":
            self.logging_steps = check_steps("logging_steps", self.logging_steps)
        if self.save_strategy == "steps":
            self.save_steps = check_steps("save_steps", self.save_steps)
        if self.eval_strategy == "steps":
            what = "positive (it defaults to logging_steps)"
            self.eval_steps = check_steps("eval_steps", self.eval_steps, what)
        self._validate_best_model()

    def _validate_ranges(self) -> None:
        """Ranges the annotations don't say (their types are checked in `__post_init__`)."""
        check_seed("seed", self.seed)
        check_seed("data_seed", self.data_seed)
        for name in ("adam_beta1", "adam_beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)!r} must be in [0, 1) (e.g. 0.9 or 0.999)")
        if not self.adam_epsilon > 0:
            raise ConfigError(f"adam_epsilon={self.adam_epsilon!r} must be a number > 0 (e.g. 1e-8)")
        if self.max_steps < -1:
            raise ConfigError(f"max_steps={self.max_steps} must be a number of steps, or -1 to train num_train_epochs")
        if self.save_total_limit is not None and self.save_total_limit < 0:
            raise ConfigError(
                f"save_total_limit={self.save_total_limit} must be >= 1 to keep that many checkpoints, or None "
                "(0 too, as in transformers) to keep every one"
            )

    def _validate_best_model(self) -> None:
        needs_eval = []
        if self.save_strategy == "best":
            needs_eval.append("save_strategy='best'")
        if self.load_best_model_at_end:
            needs_eval.append("load_best_model_at_end=True")
        if self.lr_scheduler_type in ("reduce_lr_on_plateau", "greedy"):
            needs_eval.append(f"lr_scheduler_type={self.lr_scheduler_type!r}")
        if needs_eval and self.eval_strategy == "no":
            raise ConfigError(f"{needs_eval[0]} needs evaluation, but eval_strategy='no'; set it to 'steps' or 'epoch'")
        if self.save_strategy == "best" and self.metric_for_best_model is None:  # as transformers refuses it
            raise ConfigError(
                "save_strategy='best' needs metric_for_best_model (e.g. 'loss', or a key compute_metrics returns)"
            )
        if not self.load_best_model_at_end or self.save_strategy == "best":
            return
        if self.save_strategy != self.eval_strategy:
            raise ConfigError(
                f"load_best_model_at_end=True needs save_strategy ({self.save_strategy!r}) to equal "
                f"eval_strategy ({self.eval_strategy!r}), or save_strategy='best'"
            )
        if self.eval_strategy == "steps":
            save, every = self.save_steps, self.eval_steps
            if (save < 1) != (every < 1):
                bad = True  # a fraction and a step count: no multiple can be guaranteed
            else:  # scale fractions to integers so 0.2 % 0.1 isn't spoiled by float error
                bad = round(save * 1_000_000) % round(every * 1_000_000) != 0
            if bad:
                raise ConfigError(
                    f"load_best_model_at_end=True needs save_steps ({save}) to be a multiple of eval_steps "
                    f"({every}), both step counts or both fractions, so every checkpoint has an evaluation"
                )

    # --- helpers for the trainer ---

    @property
    def train_batch_size(self) -> int:
        """Training samples per device in one forward/backward pass."""
        return self.per_device_train_batch_size

    @property
    def eval_batch_size(self) -> int:
        """Evaluation samples per device in one forward pass."""
        return self.per_device_eval_batch_size

    def resolve_steps(self, value: int | float, max_steps: int) -> int:
        """Turn an interval given as steps or as a fraction of the run into a number of steps.

        Args:
            value: A step count (>= 1), or a fraction in [0, 1) of `max_steps`.
            max_steps: Total optimizer steps of the run.

        Returns:
            `math.ceil(value * max_steps)` for a fraction (as transformers rounds), else `int(value)`.
        """
        return math.ceil(value * max_steps) if value < 1 else int(value)

    def get_warmup_steps(self, num_training_steps: int) -> int:
        """Number of warmup steps for a run of `num_training_steps` optimizer steps."""
        return self.resolve_steps(self.warmup_steps, num_training_steps)

    def optim_args_dict(self) -> dict[str, Any]:
        """`optim_args` as a dict; numbers, true/false and null in a 'k=v,...' string are parsed.

        Raises:
            ConfigError: an item of the string is not `key=value`.
        """
        if self.optim_args is None:
            return {}
        if isinstance(self.optim_args, Mapping):
            return dict(self.optim_args)
        if not isinstance(self.optim_args, str):
            raise ConfigError(f"optim_args={self.optim_args!r} must be a 'k=v,k2=v2' string or a dict")
        parsed: dict[str, Any] = {}
        for item in filter(None, (part.strip() for part in self.optim_args.split(","))):
            key, eq, raw = item.partition("=")
            if not eq or not key.strip():
                raise ConfigError(f"optim_args: {item!r} is not key=value; write e.g. 'momentum=0.9,eps=1e-6'")
            parsed[key.strip()] = parse_value(raw.strip())
        return parsed

    def to_dict(self) -> dict[str, Any]:
        """All current fields (older spellings left out) as JSON-serialisable values; the token masked."""
        out = {
            f.name: json.loads(json.dumps(getattr(self, f.name), default=str))  # deep copy, JSON-safe
            for f in dataclasses.fields(self)
            if f.init and not is_alias(f)
        }
        if out.get("hub_token") is not None:
            out["hub_token"] = "<HUB_TOKEN>"
        return out

    def to_json_string(self) -> str:
        """`to_dict()` as indented JSON."""
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def __str__(self) -> str:
        lines = [f"  {name}={value!r}," for name, value in self.to_dict().items()]
        return f"{type(self).__name__}(\n" + "\n".join(lines) + "\n)"

    __repr__ = __str__


def _annotation(cls: type, name: str) -> str:
    """A field's annotation as written in the source (transformers' HfArgumentParser replaces `Field.type`
    with the resolved type, whose text differs)."""
    for klass in cls.__mro__:
        written = klass.__dict__.get("__annotations__", {})
        if name in written:
            return str(written[name])
    return "Any"


def arguments_markdown_table(cls: type = TrainingArguments, only: Sequence[str] | None = None) -> str:
    """A Markdown table `| field | type | default | help |` of a config dataclass.

    Older spellings accepted by `cls` are listed under the table. The README's argument
    reference is generated from this. `only`: list just these fields (e.g. a subclass's own).
    """
    rows = ["| field | type | default | help |", "| --- | --- | --- | --- |"]
    aliases = []
    for f in dataclasses.fields(cls):
        if only is not None and f.name not in only:
            continue
        if is_alias(f):
            target = alias_target(f)
            arrow = f" → `{target}`" if target else ""
            aliases.append(f"- `{f.name}`{arrow}: {f.metadata['help']}")
            continue
        cells = (f"`{f.name}`", f"`{_annotation(cls, f.name)}`", f"`{field_default(f)!r}`", f.metadata.get("help", ""))
        rows.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    if aliases:
        rows += ["", "Also accepted (older or alternative spellings):", "", *aliases]
    return "\n".join(rows) + "\n"


# ---------------------------------------------------------------------------------------------
# The YAML run file
