"""Typed configuration: `TrainingArguments` and the YAML run file.

`TrainingArguments` keeps the Hugging Face (transformers 5) field names, defaults and meanings for
the subset trainformers supports, and names any other transformers field it is given as
unsupported. `load_config` reads a run file with `model`, `data` and `training` sections and
applies command-line overrides on top (dataclass default < base < YAML file < command line).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import importlib.util
import json
import math
import os
import re
import types
import typing
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from transformers.trainer_utils import SchedulerType

from .errors import ConfigError, did_you_mean

__all__ = [
    "OPTIMIZERS",
    "SCHEDULERS",
    "DataSection",
    "ModelSection",
    "RunConfig",
    "TrainingArguments",
    "arguments_markdown_table",
    "load_config",
    "parse_overrides",
    "parse_value",
]

# Taken from the installed transformers so a scheduler added upstream is accepted here too.
SCHEDULERS: tuple[str, ...] = tuple(s.value for s in SchedulerType)
OPTIMIZERS = (
    "adamw_torch", "adamw_torch_fused", "adamw", "sgd", "adafactor", "adagrad", "rmsprop",
    "adamw_8bit", "adamw_bnb_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "lion_8bit",
    "paged_lion_8bit",
)  # fmt: skip
INTERVAL_STRATEGIES = ("no", "steps", "epoch")
SAVE_STRATEGIES = ("no", "steps", "epoch", "best")
HUB_STRATEGIES = ("end", "every_save", "checkpoint", "all_checkpoints")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical", "passive")
SAMPLING_STRATEGIES = ("random", "sequential", "group_by_length")
TRACKERS = ("tensorboard", "wandb", "mlflow", "trackio", "comet_ml", "clearml", "dvclive", "aim", "swanlab")
AUTO_TRACKERS = ("tensorboard", "wandb", "mlflow", "trackio")  # what report_to="all" looks for
FSDP_OPTIONS = (
    "full_shard", "shard_grad_op", "hybrid_shard", "hybrid_shard_zero2", "offload", "auto_wrap", "no_shard",
)  # fmt: skip
DDP_BACKENDS = ("nccl", "gloo", "mpi", "ccl", "hccl", "cncl", "mccl")
METRIC_INPUTS = ("inputs", "loss")
TOKENS_SEEN_MODES = ("all", "non_padding")
MODEL_DTYPES = ("float32", "bfloat16", "float16", "auto")
TRAINING_MODES = ("pretraining", "instruction")
# DecoderLM sizes: name -> (hidden_size, num_layers, num_heads, num_kv_heads)
MODEL_PRESETS: dict[str, tuple[int, int, int, int]] = {
    "nano": (64, 2, 4, 2),
    "tiny": (128, 4, 4, 2),
    "small": (384, 6, 6, 2),
    "base": (768, 12, 12, 4),
}
INSTRUCTION_FORMATS = ("messages", "conversations", "prompt_response", "alpaca", "template")
DATA_FORMATS = ("auto", *INSTRUCTION_FORMATS)


def _arg(default: Any, help: str) -> Any:
    """A dataclass field with help text; list/dict defaults get a fresh copy per instance."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


def _alias(new: str | None, help: str, warn: bool = True) -> Any:
    """An accepted other spelling, mapped onto `new` in `__post_init__` and then reset to None."""
    return field(default=None, repr=False, metadata={"help": help, "alias_of": new, "warn": warn})


def _is_alias(f: dataclasses.Field) -> bool:
    return "alias_of" in f.metadata


def _default(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def _choice(name: str, value: Any, allowed: Sequence[str]) -> str:
    """Return `value` as a plain str (HF enums unwrap) or raise naming the allowed values."""
    value = getattr(value, "value", value)
    if value not in allowed:
        raise ConfigError(
            f"{name}={value!r} is not supported{did_you_mean(str(value), allowed)}; choose one of: {', '.join(allowed)}"
        )
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_int(name: str, value: Any, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ConfigError(f"{name}={value!r} must be an integer >= {minimum}")


def _check_steps(name: str, value: Any, what: str = "a positive number of steps") -> int | float:
    """Validate an interval: a whole number of steps >= 1 (returned as int) or a fraction in (0, 1)."""
    if not _is_number(value) or value <= 0:
        raise ConfigError(f"{name}={value!r} must be {what}, or a fraction in (0, 1) of the total steps")
    if value >= 1:
        if value != int(value):
            raise ConfigError(f"{name}={value!r} must be a whole number of steps when it is 1 or more")
        return int(value)
    return value


def _json_dict(name: str, value: Any, allow_path: bool) -> Any:
    """Turn a JSON string (or, where allowed, the path of a JSON file) into a dict."""
    if not isinstance(value, str):
        return value
    try:
        if value.lstrip().startswith("{"):
            return json.loads(value)
        if allow_path:
            return json.loads(Path(value).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{name}: file '{value}' not found; pass a dict or a JSON file's path") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{name}: {value!r} is not valid JSON ({e})") from None
    raise ConfigError(f"{name}={value!r} must be a dict or a JSON string")


@functools.cache
def _hf_field_names() -> frozenset[str]:
    # Imported lazily: transformers.training_args is slow to import and only needed for an error.
    try:
        import transformers

        return frozenset(f.name for f in dataclasses.fields(transformers.TrainingArguments))
    except Exception:  # a broken optional import inside transformers must not hide the real error
        return frozenset()


def _unknown_field_message(owner: str, name: str, known: Sequence[str]) -> str:
    if name in _hf_field_names():
        return f"{owner} field '{name}' is a transformers option that trainformers does not support; remove it"
    return f"{owner} got an unknown field '{name}'{did_you_mean(name, known)}"


@dataclass
class TrainingArguments:
    """Hyperparameters of a training run, with the transformers 5 names, defaults and meanings.

    Older spellings (`evaluation_strategy`, `warmup_ratio`, `no_cuda`, ...) are accepted with a
    `FutureWarning` and mapped onto the current names. Every contradiction or out-of-range value
    raises a one-line `ConfigError` from `__post_init__`.

    Raises:
        ConfigError: an unknown or unsupported keyword, a value out of range, or two settings
            that contradict each other.
    """

    # --- output and run ---
    output_dir: str = _arg("trainer_output", "Directory for checkpoints, logs and the final model.")
    overwrite_output_dir: bool = _arg(
        False, "Allow writing into a non-empty output_dir instead of refusing to clobber a previous run."
    )
    run_name: str | None = _arg(None, "Name of the run shown by trackers (wandb, mlflow, ...); defaults to output_dir.")
    seed: int = _arg(42, "Random seed set at the start of training, before the model is initialised.")
    data_seed: int | None = _arg(None, "Seed for the data samplers only; None uses seed.")
    full_determinism: bool = _arg(
        False, "Enable deterministic torch algorithms for bitwise-reproducible runs (slower)."
    )
    do_train: bool = _arg(False, "Informational flag for scripts: whether to train. The Trainer ignores it.")
    do_eval: bool = _arg(
        False, "Informational flag for scripts: whether to evaluate; set when eval_strategy is not 'no'."
    )
    do_predict: bool = _arg(False, "Informational flag for scripts: whether to predict. The Trainer ignores it.")
    # --- duration ---
    num_train_epochs: float = _arg(3.0, "Number of passes over the training data; a fraction stops part-way.")
    max_steps: int = _arg(-1, "Number of optimizer steps to run; when > 0 it overrides num_train_epochs.")
    # --- batching and data loading ---
    per_device_train_batch_size: int = _arg(8, "Training samples per device in one forward/backward pass.")
    per_device_eval_batch_size: int = _arg(8, "Evaluation samples per device in one forward pass.")
    gradient_accumulation_steps: int = _arg(
        1, "Forward/backward passes summed into one optimizer step, to simulate a larger batch."
    )
    dataloader_drop_last: bool = _arg(False, "Drop the last incomplete batch of each epoch.")
    dataloader_num_workers: int = _arg(0, "Worker processes for data loading; 0 loads in the main process.")
    dataloader_pin_memory: bool = _arg(
        False,
        "Pin host memory for faster GPU transfer. Off by default here (transformers: on) because "
        "on CPU-only machines torch warns about it on every run.",
    )
    dataloader_persistent_workers: bool = _arg(False, "Keep data-loading workers alive between epochs.")
    dataloader_prefetch_factor: int | None = _arg(
        None, "Batches each worker loads in advance; needs dataloader_num_workers > 0."
    )
    train_sampling_strategy: str = _arg(
        "random", "Order of training samples: 'random', 'sequential' or 'group_by_length'."
    )
    group_by_length: bool = _arg(
        False,
        "Batch samples of similar length together to reduce padding; same as "
        "train_sampling_strategy='group_by_length'.",
    )
    length_column_name: str = _arg("length", "Column holding precomputed lengths for group_by_length.")
    remove_unused_columns: bool = _arg(True, "Drop dataset columns the model's forward() does not accept.")
    label_names: list[str] | None = _arg(None, "Keys of the batch that hold labels; None detects them from the model.")
    # --- optimisation ---
    learning_rate: float | str = _arg(
        5e-5, "Peak learning rate, reached after warmup; 'auto' runs the LR range test first and uses its suggestion."
    )
    weight_decay: float = _arg(0.0, "Decoupled weight decay, not applied to biases and norm weights.")
    adam_beta1: float = _arg(0.9, "Adam beta1: decay rate of the first-moment estimate.")
    adam_beta2: float = _arg(0.999, "Adam beta2: decay rate of the second-moment estimate.")
    adam_epsilon: float = _arg(1e-8, "Adam epsilon added to the denominator for numerical stability.")
    max_grad_norm: float = _arg(1.0, "Clip the global gradient norm to this value; 0 or less disables clipping.")
    optim: str = _arg(
        "adamw_torch_fused",
        "Optimizer name. The 8-bit and paged variants need bitsandbytes, checked when training starts.",
    )
    optim_args: str | dict[str, Any] | None = _arg(
        None, "Extra optimizer keyword arguments, as 'k=v,k2=v2' or a dict (e.g. 'momentum=0.9')."
    )
    lr_scheduler_type: str = _arg("linear", "Learning-rate schedule after warmup; any transformers SchedulerType.")
    lr_scheduler_kwargs: dict[str, Any] = _arg({}, "Extra keyword arguments for the scheduler (e.g. num_cycles).")
    warmup_steps: int | float = _arg(
        0, "Linear warmup: an integer >= 1 is a number of steps, a float in [0, 1) a fraction of all steps."
    )
    label_smoothing_factor: float = _arg(0.0, "Label smoothing for the cross-entropy loss, in [0, 1).")
    param_groups: list[dict[str, Any]] | None = _arg(
        None,
        "Per-parameter-group settings: a list of {pattern, lr, weight_decay} matched (re.search) against "
        "parameter names, first match wins; unmatched parameters use learning_rate/weight_decay.",
    )
    loraplus_lr_ratio: float | None = _arg(
        None, "LoRA+: the LoRA B matrices train at learning_rate times this ratio (e.g. 16); None disables."
    )
    # --- precision ---
    bf16: bool = _arg(False, "Train with bfloat16 mixed precision (autocast).")
    fp16: bool = _arg(False, "Train with float16 mixed precision (autocast with a gradient scaler).")
    tf32: bool | None = _arg(None, "Allow TF32 matmuls on Ampere+ GPUs; None leaves torch's setting alone.")
    bf16_full_eval: bool = _arg(False, "Evaluate with the whole model cast to bfloat16 (faster, less exact).")
    fp16_full_eval: bool = _arg(False, "Evaluate with the whole model cast to float16 (faster, less exact).")
    # --- memory and speed ---
    gradient_checkpointing: bool = _arg(
        False, "Recompute activations in backward to save memory, at ~30% more compute."
    )
    gradient_checkpointing_kwargs: dict[str, Any] | None = _arg(
        None, "Keyword arguments for model.gradient_checkpointing_enable (e.g. use_reentrant)."
    )
    use_cache: bool = _arg(
        False,
        "Set model.config.use_cache while training; off, because a KV cache is useless in training and "
        "breaks document-local attention for padding-free batches.",
    )
    torch_compile: bool = _arg(False, "Compile the model with torch.compile.")
    torch_compile_backend: str | None = _arg(None, "torch.compile backend; setting it turns torch_compile on.")
    torch_compile_mode: str | None = _arg(
        None, "torch.compile mode (e.g. 'reduce-overhead'); setting it turns torch_compile on."
    )
    auto_find_batch_size: bool = _arg(False, "On out-of-memory, shrink the batch size and retry.")
    # --- logging ---
    logging_strategy: str = _arg("steps", "When to log: 'steps' (every logging_steps), 'epoch' or 'no'.")
    logging_steps: int | float = _arg(500, "Log every N optimizer steps, or a fraction in (0, 1) of the total steps.")
    logging_first_step: bool = _arg(False, "Also log after the first optimizer step.")
    logging_nan_inf_filter: bool = _arg(
        True, "Leave NaN/inf step losses out of the logged average (the update still happens)."
    )
    report_at_end: bool = _arg(
        True, "At the end of train(), write report.png and report.md (curves, metrics, config diff) into output_dir."
    )
    peak_tflops: float | None = _arg(
        None,
        "Peak TFLOP/s of one device, for the logged MFU; None: a GPU's datasheet figure, else a matmul measured "
        "once and cached (~/.cache/trainformers); 0 turns MFU off (TFLOP/s is still logged).",
    )
    report_to: str | list[str] | None = _arg(
        "none", "Trackers to log to: a name or list of them, 'all' for the installed ones, 'none' for none."
    )
    logging_dir: str | None = _arg(None, "TensorBoard log directory; None means OUTPUT_DIR/runs.")
    disable_tqdm: bool | None = _arg(None, "Hide the progress bar; None shows it.")
    log_level: str = _arg(
        "passive", "Logger verbosity: debug, info, warning, error, critical, or passive to leave it as is."
    )
    include_num_input_tokens_seen: bool | str = _arg(
        False, "Log the input tokens seen: True or 'all' counts every token, 'non_padding' skips padding."
    )
    # --- evaluation ---
    eval_strategy: str = _arg("no", "When to evaluate: 'no', 'steps' (every eval_steps) or 'epoch'.")
    eval_steps: int | float | None = _arg(
        None, "Evaluate every N steps, or a fraction in (0, 1) of the total; None uses logging_steps."
    )
    eval_delay: float = _arg(0, "Epochs or steps (following eval_strategy) to wait before the first evaluation.")
    eval_on_start: bool = _arg(False, "Evaluate once before training, as a sanity check.")
    prediction_loss_only: bool = _arg(False, "In evaluate/predict return only the loss, not logits and labels.")
    eval_accumulation_steps: int | None = _arg(
        None,
        "Keep eval outputs on the device for N batches, then move them to the CPU as numpy in one copy; "
        "None moves each batch's outputs to the CPU as it comes.",
    )
    include_for_metrics: list[str] = _arg([], "Extra inputs passed to compute_metrics: any of 'inputs', 'loss'.")
    batch_eval_metrics: bool = _arg(
        False, "Call compute_metrics on every eval batch and once at the end, to save memory."
    )
    # --- saving ---
    save_strategy: str = _arg(
        "steps", "When to checkpoint: 'no', 'steps', 'epoch' or 'best' (when the metric improves)."
    )
    save_steps: int | float = _arg(500, "Checkpoint every N steps, or a fraction in (0, 1) of the total steps.")
    save_total_limit: int | None = _arg(None, "Keep at most N checkpoints, deleting the oldest (never the best).")
    save_only_model: bool = _arg(
        False, "Save only the model weights in checkpoints; such a checkpoint cannot resume training."
    )
    load_best_model_at_end: bool = _arg(
        False, "Load the best checkpoint (by metric_for_best_model) when training ends."
    )
    metric_for_best_model: str | None = _arg(
        None, "Eval metric that ranks checkpoints; defaults to 'loss' when needed."
    )
    greater_is_better: bool | None = _arg(
        None, "Whether a larger metric is better; None: False for metrics ending in 'loss', else True."
    )
    resume_from_checkpoint: str | bool | None = _arg(
        None, "Checkpoint directory to resume from, or True for the latest one in output_dir."
    )
    ignore_data_skip: bool = _arg(
        False, "On resume, start the data from the beginning instead of skipping the batches already seen."
    )
    restore_callback_states_from_checkpoint: bool = _arg(
        False, "On resume, restore the state of callbacks saved in the checkpoint."
    )
    # --- distributed (handed to Accelerate) ---
    ddp_find_unused_parameters: bool | None = _arg(None, "DDP find_unused_parameters; None lets the trainer decide.")
    ddp_bucket_cap_mb: int | None = _arg(None, "DDP gradient bucket size in MiB.")
    ddp_broadcast_buffers: bool | None = _arg(None, "DDP broadcast_buffers.")
    ddp_static_graph: bool | None = _arg(None, "DDP static_graph, for models whose graph never changes.")
    ddp_backend: str | None = _arg(None, "torch.distributed backend; None picks one for the device.")
    ddp_timeout: int = _arg(1800, "Timeout in seconds for collective operations.")
    fsdp: list[str] | str | bool = _arg(
        [], "FSDP options as a list or a string (e.g. 'full_shard auto_wrap'); empty disables FSDP."
    )
    fsdp_config: dict[str, Any] | str | None = _arg(None, "FSDP settings as a dict or the path of a JSON file.")
    deepspeed: dict[str, Any] | str | None = _arg(None, "DeepSpeed config as a dict or the path of a JSON file.")
    use_cpu: bool = _arg(False, "Train on the CPU even when an accelerator is available.")
    average_tokens_across_devices: bool = _arg(
        True, "Sum the label-token count over all processes so the loss is normalised by the global count."
    )
    accelerator_config: dict[str, Any] | str | None = _arg(
        None, "Extra accelerate.Accelerator settings (e.g. split_batches) as a dict or a JSON file path."
    )
    # --- hub ---
    push_to_hub: bool = _arg(False, "Upload the model to the Hugging Face Hub.")
    hub_model_id: str | None = _arg(None, "Hub repository name ('user/name'); None uses output_dir's name.")
    hub_strategy: str = _arg(
        "every_save", "What to push and when: 'end', 'every_save', 'checkpoint' or 'all_checkpoints'."
    )
    hub_token: str | None = _arg(None, "Hub token; None uses the cached login. Never written to logs.")
    hub_private_repo: bool | None = _arg(None, "Create the Hub repository as private; None uses your account default.")
    hub_revision: str | None = _arg(None, "Hub branch or revision to push to.")
    # --- misc ---
    local_rank: int = _arg(-1, "Set by the launcher; -1 outside distributed runs.")
    skip_memory_metrics: bool = _arg(True, "Skip the memory profiling metrics (they slow training down).")
    # --- accepted other spellings, mapped in __post_init__ and then reset to None ---
    evaluation_strategy: str | None = _alias("eval_strategy", "Deprecated: use eval_strategy.")
    warmup_ratio: float | None = _alias("warmup_steps", "Deprecated: use warmup_steps with a fraction below 1.")
    no_cuda: bool | None = _alias("use_cpu", "Deprecated: use use_cpu.")
    push_to_hub_model_id: str | None = _alias("hub_model_id", "Deprecated: use hub_model_id.")
    fp16_opt_level: str | None = _alias(
        None, "Deprecated and ignored: Apex optimisation levels do not apply to torch autocast."
    )
    activation_checkpointing: bool | None = _alias(
        "gradient_checkpointing", "transformers 5 name of gradient_checkpointing; a synonym.", warn=False
    )
    activation_checkpointing_kwargs: dict[str, Any] | None = _alias(
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
                raise ConfigError(_unknown_field_message(cls.__name__, name, known))
        return super().__new__(cls)

    def __post_init__(self) -> None:
        self._apply_aliases()
        self._normalise()
        self._validate()

    def _apply_aliases(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not _is_alias(f) or value is None:
                continue
            old, new = f.name, f.metadata["alias_of"]
            setattr(self, old, None)  # so to_dict() and equality see only the current names
            if new is None:
                message = f"TrainingArguments: '{old}' is ignored. {f.metadata['help']}"
                warnings.warn(message, FutureWarning, stacklevel=4)
                continue
            if f.metadata["warn"]:
                message = f"TrainingArguments: '{old}' is deprecated; use '{new}' instead"
                warnings.warn(message, FutureWarning, stacklevel=4)
            if old == "warmup_ratio":
                self._apply_warmup_ratio(value)
                continue
            current = getattr(self, new)
            if current != _default(self.__dataclass_fields__[new]) and current != value:
                raise ConfigError(f"Can't set both {old} and {new} (got {value!r} and {current!r}); keep only {new}")
            setattr(self, new, value)

    def _apply_warmup_ratio(self, ratio: Any) -> None:
        if not _is_number(ratio) or not 0 <= ratio < 1:
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
        self.optim = _choice("optim", self.optim, OPTIMIZERS)
        self.lr_scheduler_type = _choice("lr_scheduler_type", self.lr_scheduler_type, SCHEDULERS)
        self.logging_strategy = _choice("logging_strategy", self.logging_strategy, INTERVAL_STRATEGIES)
        self.eval_strategy = _choice("eval_strategy", self.eval_strategy, INTERVAL_STRATEGIES)
        self.save_strategy = _choice("save_strategy", self.save_strategy, SAVE_STRATEGIES)
        self.hub_strategy = _choice("hub_strategy", self.hub_strategy, HUB_STRATEGIES)
        self.log_level = _choice("log_level", self.log_level, LOG_LEVELS)
        if self.ddp_backend is not None:
            self.ddp_backend = _choice("ddp_backend", self.ddp_backend, DDP_BACKENDS)
        self.output_dir = os.path.expanduser(os.fspath(self.output_dir or "trainer_output"))
        if self.logging_dir is None:
            self.logging_dir = os.path.join(self.output_dir, "runs")
        self.disable_tqdm = bool(self.disable_tqdm)
        if self.hub_token == "<HUB_TOKEN>":
            self.hub_token = None  # the mask to_dict() writes, read back from a saved config
        if self.use_cpu:
            self.dataloader_pin_memory = False  # nothing to pin for; torch would warn
        for name in ("lr_scheduler_kwargs", "gradient_checkpointing_kwargs"):
            setattr(self, name, _json_dict(name, getattr(self, name), allow_path=False))
        self.lr_scheduler_kwargs = dict(self.lr_scheduler_kwargs or {})
        for name in ("fsdp_config", "accelerator_config"):
            setattr(self, name, _json_dict(name, getattr(self, name), allow_path=True))
        if isinstance(self.deepspeed, str):
            if self.deepspeed.lstrip().startswith("{"):
                self.deepspeed = _json_dict("deepspeed", self.deepspeed, allow_path=False)
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
            self.include_num_input_tokens_seen = _choice(
                "include_num_input_tokens_seen", tokens_seen, TOKENS_SEEN_MODES
            )
        if self.eval_strategy != "no":
            self.do_eval = True
        if self.eval_steps in (None, 0) and self.eval_strategy == "steps":
            self.eval_steps = self.logging_steps
        needs_metric = self.load_best_model_at_end or self.save_strategy == "best"
        if needs_metric or self.lr_scheduler_type in ("reduce_lr_on_plateau", "greedy"):
            self.metric_for_best_model = self.metric_for_best_model or "loss"
        if self.greater_is_better is None and self.metric_for_best_model is not None:
            self.greater_is_better = not self.metric_for_best_model.endswith("loss")

    def _normalise_sampling(self) -> None:
        strategy = _choice("train_sampling_strategy", self.train_sampling_strategy, SAMPLING_STRATEGIES)
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
                resolved.append(_choice("report_to", name, (*TRACKERS, "all", "none")))
        self.report_to = list(dict.fromkeys(resolved))  # dedupe, keep order

    def _normalise_fsdp(self) -> None:
        options = self.fsdp
        if options is True:
            options = ["full_shard"]  # transformers' `fsdp=True`: shard everything
        elif not options:
            options = []
        elif isinstance(options, str):
            options = options.split()
        self.fsdp = [_choice("fsdp", option, FSDP_OPTIONS) for option in options]

    def _validate(self) -> None:
        """Reject values out of range and settings that contradict each other."""
        for item in self.include_for_metrics:
            _choice("include_for_metrics", item, METRIC_INPUTS)
        self.optim_args_dict()  # parse once so a malformed string fails now, not at step 0

        _check_int("per_device_train_batch_size", self.per_device_train_batch_size, 1)
        _check_int("per_device_eval_batch_size", self.per_device_eval_batch_size, 1)
        _check_int("gradient_accumulation_steps", self.gradient_accumulation_steps, 1)
        _check_int("dataloader_num_workers", self.dataloader_num_workers, 0)
        if self.eval_accumulation_steps is not None:
            _check_int("eval_accumulation_steps", self.eval_accumulation_steps, 1)
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
        if self.learning_rate != "auto" and (not _is_number(self.learning_rate) or self.learning_rate < 0):
            raise ConfigError(f"learning_rate={self.learning_rate!r} must be a number >= 0 (or 'auto')")
        if self.peak_tflops is not None and (not _is_number(self.peak_tflops) or self.peak_tflops < 0):
            raise ConfigError(
                f"peak_tflops={self.peak_tflops!r} must be a number of TFLOP/s >= 0 (0 turns MFU off), or None to measure it"
            )
        if self.loraplus_lr_ratio is not None and (
            not _is_number(self.loraplus_lr_ratio) or self.loraplus_lr_ratio <= 0
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
        if not _is_number(self.warmup_steps) or self.warmup_steps < 0:
            raise ConfigError(f"warmup_steps={self.warmup_steps!r} must be >= 0 (steps, or a fraction < 1)")
        if self.warmup_steps >= 1:
            self.warmup_steps = _check_steps("warmup_steps", self.warmup_steps)
        if not _is_number(self.label_smoothing_factor) or not 0 <= self.label_smoothing_factor < 1:
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
            self.logging_steps = _check_steps("logging_steps", self.logging_steps)
        if self.save_strategy == "steps":
            self.save_steps = _check_steps("save_steps", self.save_steps)
        if self.eval_strategy == "steps":
            what = "positive (it defaults to logging_steps)"
            self.eval_steps = _check_steps("eval_steps", self.eval_steps, what)
        self._validate_best_model()

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
            if f.init and not _is_alias(f)
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
        if _is_alias(f):
            target = f.metadata["alias_of"]
            arrow = f" → `{target}`" if target else ""
            aliases.append(f"- `{f.name}`{arrow}: {f.metadata['help']}")
            continue
        cells = (f"`{f.name}`", f"`{f.type}`", f"`{_default(f)!r}`", f.metadata.get("help", ""))
        rows.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    if aliases:
        rows += ["", "Also accepted (older or alternative spellings):", "", *aliases]
    return "\n".join(rows) + "\n"


# ---------------------------------------------------------------------------------------------
# The YAML run file


@dataclass
class ModelSection:
    """The `model` section: a pretrained checkpoint, or the size of a model trained from scratch."""

    name_or_path: str | None = _arg(
        None, "Hub name or local directory of a pretrained model; None trains a new model from scratch."
    )
    tokenizer: str | None = _arg(
        None, "Tokenizer name or path; None: name_or_path's, or from scratch a BPE tokenizer trained on the data."
    )
    vocab_size: int = _arg(4096, "Vocabulary size of a tokenizer trained on the data.")
    hidden_size: int = _arg(128, "Width of the from-scratch model.")
    num_layers: int = _arg(4, "Number of decoder layers of the from-scratch model.")
    num_heads: int = _arg(4, "Attention heads; hidden_size must be divisible by it.")
    num_kv_heads: int | None = _arg(None, "Key/value heads for grouped-query attention; None means num_heads.")
    intermediate_size: int | None = _arg(None, "MLP width; None lets the model builder derive it from hidden_size.")
    max_position_embeddings: int = _arg(512, "Longest sequence the model can attend over.")
    dropout: float = _arg(0.0, "Dropout probability, in [0, 1).")
    tie_word_embeddings: bool = _arg(True, "Share the input embedding and output projection weights.")
    preset: str | None = _arg(
        None,
        "DecoderLM size preset (nano, tiny, small, base): fills hidden_size, num_layers, num_heads and "
        "num_kv_heads where they are left at their defaults.",
    )
    num_experts: int = _arg(1, "More than 1 turns the MLPs of moe_layers into a top-k mixture of experts.")
    num_experts_per_tok: int = _arg(2, "Experts each token is routed to (top-k).")
    moe_layers: list[int] | None = _arg(None, "Indices of the layers that get experts; None means every layer.")
    capacity_factor: float | None = _arg(
        None, "Cap each expert at capacity_factor * tokens * k / experts; None: no cap."
    )
    load_balance_coef: float | None = _arg(
        None, "Weight of the router load-balance loss C*sum(f_i*P_i); None keeps the model config's (0.01)."
    )
    auxiliary_coef: float | None = _arg(
        None, "Weight of the auxiliary usage loss sum((f_i-1/C)^2); None keeps the model config's (0.0)."
    )
    z_loss_coef: float | None = _arg(None, "Weight of the router z-loss; None keeps the model config's (0.001).")
    load_in_4bit: bool = _arg(
        False, "Load the pretrained base model quantized to 4 bits (bitsandbytes; needs a CUDA GPU)."
    )
    load_in_8bit: bool = _arg(
        False, "Load the pretrained base model quantized to 8 bits (bitsandbytes; needs a CUDA GPU)."
    )
    bnb_4bit_quant_type: str = _arg("nf4", "4-bit data type: nf4 or fp4.")
    bnb_4bit_compute_dtype: str = _arg("bfloat16", "Dtype of the 4-bit matmuls: bfloat16, float16 or float32.")
    bnb_4bit_use_double_quant: bool = _arg(
        False, "Quantize the 4-bit quantization constants too (saves ~0.4 bit/param)."
    )
    dtype: str = _arg("float32", "Dtype to load or build the weights in: float32, bfloat16, float16 or auto.")
    trust_remote_code: bool = _arg(False, "Allow running model code downloaded from the Hub.")
    sample_prompt: str = _arg("The ", "Prompt of the sample generated at the end of a run; '' disables it.")
    sample_max_new_tokens: int = _arg(40, "Tokens generated for the end-of-run sample.")

    def __post_init__(self) -> None:
        self.dtype = _choice("model.dtype", self.dtype, MODEL_DTYPES)
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "max_position_embeddings"):
            _check_int(f"model.{name}", getattr(self, name), 1)
        _check_int("model.sample_max_new_tokens", self.sample_max_new_tokens, 0)
        if self.preset is not None:
            self.preset = _choice("model.preset", self.preset, tuple(MODEL_PRESETS))
            defaults = {f.name: f.default for f in dataclasses.fields(self)}
            for name, value in zip(
                ("hidden_size", "num_layers", "num_heads", "num_kv_heads"), MODEL_PRESETS[self.preset]
            ):
                if getattr(self, name) == defaults[name]:  # a size set explicitly (not the default) wins
                    setattr(self, name, value)
        if self.load_in_4bit and self.load_in_8bit:
            raise ConfigError("Can't set both model.load_in_4bit and model.load_in_8bit; pick one")
        self.bnb_4bit_quant_type = _choice("model.bnb_4bit_quant_type", self.bnb_4bit_quant_type, ("nf4", "fp4"))
        self.bnb_4bit_compute_dtype = _choice(
            "model.bnb_4bit_compute_dtype", self.bnb_4bit_compute_dtype, ("bfloat16", "float16", "float32")
        )
        _check_int("model.num_experts", self.num_experts, 1)
        if self.num_experts > 1 and not 1 <= self.num_experts_per_tok <= self.num_experts:
            raise ConfigError(
                f"model.num_experts_per_tok={self.num_experts_per_tok} must be between 1 and "
                f"model.num_experts={self.num_experts}"
            )
        if self.num_kv_heads is None:
            self.num_kv_heads = self.num_heads
        _check_int("model.num_kv_heads", self.num_kv_heads, 1)
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"model.hidden_size={self.hidden_size} must be divisible by model.num_heads={self.num_heads}"
            )
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"model.num_heads={self.num_heads} must be divisible by model.num_kv_heads={self.num_kv_heads}"
            )
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"model.dropout={self.dropout!r} must be in [0, 1)")


@dataclass
class DataSection:
    """The `data` section: where the rows come from and how they become training batches."""

    source: str | None = _arg(
        None,
        "None uses the corpus embedded in Python's standard library; else a local file (json, jsonl, csv, "
        "parquet, txt), several files or a glob, a save_to_disk directory, or a Hub dataset name.",
    )
    subset: str | None = _arg(None, "Hub dataset configuration name (e.g. 'wikitext-2-raw-v1').")
    split: str = _arg("train", "Split to train on.")
    eval_split: str | None = _arg(
        None, "Named split to evaluate on (e.g. 'validation'); None carves validation_split_percentage from train."
    )
    revision: str | None = _arg(None, "Hub dataset revision (branch, tag or commit).")
    streaming: bool = _arg(
        False, "Stream the dataset instead of loading it (data larger than memory); needs max_steps."
    )
    training_mode: str = _arg(
        "pretraining",
        "pretraining (text -> next-token prediction) or instruction (chat/instruction rows, loss on assistant "
        "tokens only); instruction_finetuning is an alias.",
    )
    text_field: str | list[str] = _arg("text", "Column(s) holding the text (pretraining); several are joined.")
    format: str = _arg(
        "auto",
        "Instruction row format: auto, messages, conversations, prompt_response, alpaca or template.",
    )
    template: str | None = _arg(
        None, "For format 'template': the user turn as a Python format string over the row, e.g. 'Q: {question}'."
    )
    response_field: str | None = _arg(None, "For format 'template': the column holding the assistant's answer.")
    system_prompt: str | None = _arg(None, "A system message added to instruction rows that have none.")
    train_on_prompt: bool = _arg(False, "Instruction mode: also compute the loss on the prompt (user/system) tokens.")
    chat_template: str | None = _arg(
        None, "A Jinja chat template overriding the tokenizer's; None uses the tokenizer's, or the built-in default."
    )
    max_length: int = _arg(
        128, "Longest sequence in tokens: the block length when packing, else the truncation length."
    )
    packing: bool = _arg(
        True,
        "Pretraining: join documents with EOS and cut blocks of max_length, all full but the last (padded); no token dropped. "
        "Instruction: pack conversations padding-free (positions and labels kept per conversation).",
    )
    padding_free: bool = _arg(
        False,
        "Pretraining: pack whole documents per batch with position_ids restarting per document (documents "
        "kept apart) instead of cutting blocks; implies packing: false.",
    )
    pad_to_multiple_of: int | None = _arg(8, "Dynamic padding rounds each batch's length up to this multiple.")
    padding_side: str = _arg("right", "Side to pad on: right (training) or left.")
    validation_split_percentage: float = _arg(
        5, "Percent of the data held out for evaluation when no eval_split is named; 0 disables it."
    )
    num_samples: int | None = _arg(None, "Use only the first N rows of the source; None uses all.")
    num_eval_samples: int | None = _arg(
        None, "Hold out exactly N rows (a stream: its first N) instead of validation_split_percentage."
    )
    num_proc: int | None = _arg(None, "Processes for tokenisation (datasets.map); None tokenises in this process.")
    seed: int | None = _arg(None, "Seed for shuffling and the held-out split; None uses training.seed.")

    def __post_init__(self) -> None:
        _check_int("data.max_length", self.max_length, 1)
        if self.num_samples is not None:
            _check_int("data.num_samples", self.num_samples, 1)
        if self.num_proc is not None:
            _check_int("data.num_proc", self.num_proc, 1)
        if self.num_eval_samples is not None:
            _check_int("data.num_eval_samples", self.num_eval_samples, 1)
        if self.pad_to_multiple_of is not None:
            _check_int("data.pad_to_multiple_of", self.pad_to_multiple_of, 1)
        if not 0 <= self.validation_split_percentage < 100:
            value = self.validation_split_percentage
            raise ConfigError(f"data.validation_split_percentage={value!r} must be in [0, 100)")
        mode = {"instruction_finetuning": "instruction"}.get(self.training_mode, self.training_mode)
        self.training_mode = _choice("data.training_mode", mode, TRAINING_MODES)
        self.format = _choice("data.format", self.format, DATA_FORMATS)
        self.padding_side = _choice("data.padding_side", self.padding_side, ("right", "left"))
        if isinstance(self.text_field, (list, tuple)):
            if not self.text_field or not all(isinstance(f, str) for f in self.text_field):
                raise ConfigError(f"data.text_field={self.text_field!r} must be a column name or a list of them")
            self.text_field = list(self.text_field)
        if self.padding_free:
            self.packing = False  # documented: padding-free is the other way to pack
        if self.format == "template" and (not self.template or not self.response_field):
            raise ConfigError(
                "data.format='template' needs data.template (e.g. 'Q: {question}') and data.response_field"
            )


SECTIONS: dict[str, type] = {"model": ModelSection, "data": DataSection, "training": TrainingArguments, "peft": dict}


@dataclass
class RunConfig:
    """A whole run: the `model`, `data` and `training` sections of a run file."""

    model: ModelSection = field(default_factory=ModelSection, metadata={"help": "What is trained."})
    data: DataSection = field(default_factory=DataSection, metadata={"help": "What it is trained on."})
    training: TrainingArguments = field(default_factory=TrainingArguments, metadata={"help": "How it is trained."})
    peft: dict[str, Any] | None = field(
        default=None,
        metadata={
            "help": "PEFT adapter options (LoraConfig fields, `method` for other PEFT methods); None trains fully."
        },
    )

    def __post_init__(self) -> None:
        if self.data.seed is None:
            self.data.seed = self.training.seed

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The resolved configuration as plain data, one dict per section."""
        return {
            "model": dataclasses.asdict(self.model),
            "data": dataclasses.asdict(self.data),
            "training": self.training.to_dict(),
            **({"peft": dict(self.peft)} if self.peft else {}),
        }

    def to_yaml(self) -> str:
        """The resolved configuration as YAML that `load_config` reads back to an equal config."""
        return yaml.dump(self.to_dict(), Dumper=_Dumper, sort_keys=False, allow_unicode=True)

    def save(self, path: str | Path) -> None:
        """Write `to_yaml()` to `path`, creating its parent directory."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_yaml(), encoding="utf-8")


# YAML 1.1 (PyYAML's default) reads `no`/`off` as False, so `eval_strategy: no` would become a
# bool, and `3e-4` (no dot) as a string. The loader uses the YAML 1.2 rules for both.
_FLOAT = re.compile(
    r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?"
    r"|[0-9][0-9_]*[eE][-+]?[0-9]+|\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
)
_BOOL_TAG, _FLOAT_TAG = "tag:yaml.org,2002:bool", "tag:yaml.org,2002:float"
_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")


class _Loader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans (true/false only) and floats (`3e-4`)."""


_Loader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if tag not in (_BOOL_TAG, _FLOAT_TAG)]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(_BOOL_TAG, _BOOL, list("tTfF"))
_Loader.add_implicit_resolver(_FLOAT_TAG, _FLOAT, list("-+0123456789."))


class _Dumper(yaml.SafeDumper):
    """SafeDumper that also quotes strings like '1e3', which `_Loader` would read as floats."""


_Dumper.add_implicit_resolver(_FLOAT_TAG, _FLOAT, list("-+0123456789."))


def parse_value(text: str) -> Any:
    """Parse one command-line value as YAML (numbers, true/false, null, lists, dicts).

    Text that is not valid YAML (e.g. `*.txt`) is kept as the string it is; '' stays ''.
    """
    if text == "":
        return ""
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.YAMLError:
        return text


def parse_overrides(tokens: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Parse `--section.key VALUE`, `--section.key=VALUE` and bare `--section.key` (true) tokens.

    Raises:
        ConfigError: a token is not of one of these forms.
    """
    out: dict[str, dict[str, Any]] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        key, eq, raw = token[2:].partition("=")
        if eq:
            i += 1
        elif i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
            raw, i = tokens[i + 1], i + 2
        else:
            raw, i = "true", i + 1  # a bare flag switches a boolean on
        section, dot, name = key.partition(".")
        if not token.startswith("--") or not dot or not section or not name or "." in name:
            raise ConfigError(f"malformed override {token!r}; write --section.key VALUE or --section.key=VALUE")
        out.setdefault(section, {})[name] = parse_value(raw)
    return out


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(key: str, hint: Any, value: Any) -> Any:
    """Check a value against a plain int/float/bool/str annotation; other annotations pass through."""
    is_union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    options = set(typing.get_args(hint)) if is_union else {hint}
    if value is None and type(None) in options:
        return None
    options.discard(type(None))
    if float in options and options <= {int, float}:
        if isinstance(value, str):
            try:
                return float(value)  # quoted numbers like "3e-4"
            except ValueError:
                pass
        if not _is_number(value):
            raise ConfigError(f"{key} must be a number, got {value!r}")
    elif options == {int}:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, float) and value.is_integer():
            return int(value)  # `max_steps: 1e4`
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
    elif options == {bool} and not isinstance(value, bool):
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    elif options == {str} and not isinstance(value, str):
        raise ConfigError(f"{key} must be a string, got {value!r}; quote it in YAML")
    return value


def _merge(
    merged: dict[str, dict[str, Any]], layer: Any, origin: str, sections: Mapping[str, type] | None = None
) -> None:
    """Check one layer (base, file or overrides) and copy its values over `merged`.

    `sections` maps section names to their dataclass (`dict` for free-form); default: a train run file.
    """
    sections = SECTIONS if sections is None else sections
    if layer is None:
        return
    if not isinstance(layer, Mapping):
        raise ConfigError(f"{origin} must be a mapping of sections ({', '.join(sections)}), got {type(layer).__name__}")
    for section, values in layer.items():
        if section not in sections:
            raise ConfigError(
                f"unknown section '{section}' in {origin}{did_you_mean(str(section), sections)}; "
                f"sections are {', '.join(sections)}"
            )
        if values is None:  # an empty `training:` section
            continue
        if not isinstance(values, Mapping):
            raise ConfigError(f"section '{section}' in {origin} must be a mapping of keys, got {values!r}")
        cls = sections[section]
        if cls is dict:  # `peft`: options of a peft config class, checked against it when the model is built
            merged[section].update(copy.deepcopy(dict(values)))
            continue
        known = [f.name for f in dataclasses.fields(cls) if f.init]
        for name, value in values.items():
            if name not in known:
                if name in _hf_field_names() and issubclass(cls, TrainingArguments):
                    raise ConfigError(_unknown_field_message("training", name, known))
                hint = did_you_mean(str(name), known).replace("'", f"'{section}.", 1)
                raise ConfigError(f"unknown key '{section}.{name}' in {origin}{hint}")
            # A copy, so arguments built from the CLI's shared base mapping cannot change it.
            merged[section][name] = _coerce(f"{section}.{name}", _hints(cls)[name], copy.deepcopy(value))


def _read_yaml(path: str | Path) -> Any:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file '{path}' not found") from None
    except OSError as e:
        raise ConfigError(f"config file '{path}' cannot be read: {e.strerror}") from None
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise ConfigError(f"config file '{path}' is not valid YAML{where}: {problem}") from None


def load_config(
    path: str | Path | None = None, overrides: Sequence[str] = (), base: Mapping[str, Any] | None = None
) -> RunConfig:
    """Build a `RunConfig` from defaults, a base mapping, a YAML run file and command-line overrides.

    Later sources win key by key: dataclass defaults < `base` < the file at `path` < `overrides`.

    Args:
        path: A YAML run file with sections `model`, `data` and `training`, or None.
        overrides: argv-style tokens such as `["--training.learning_rate", "3e-4", "--training.bf16"]`.
        base: A mapping with the same sections (the CLI passes its embedded default run here).

    Returns:
        The validated configuration.

    Raises:
        ConfigError: a missing or malformed file, an unknown section or key, a value of the wrong
            type, a malformed override, or any validation error of the sections.
    """
    merged: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    _merge(merged, base, "the base config")
    if path is not None:
        _merge(merged, _read_yaml(path), f"'{path}'")
    _merge(merged, parse_overrides(overrides), "the command line")
    return RunConfig(
        model=ModelSection(**merged["model"]),
        data=DataSection(**merged["data"]),
        training=TrainingArguments(**merged["training"]),
        peft=merged["peft"] or None,
    )
