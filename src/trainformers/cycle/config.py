"""`CycleTrainingArguments`: `TrainingArguments` plus the settings of cycle-consistency training.

Naming: model A translates domain A -> B, model B translates B -> A. A setting ending in `_A`
belongs to model A: `prompt_template_A` wraps the source text model A reads (a domain-A text),
`do_sample_A` / `max_new_tokens_A` / ... steer generation *by model A* (which makes the synthetic
B inputs that model B trains on).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..config import ModelSection, TrainingArguments, arg, check_int, choice, is_number
from ..errors import ConfigError, did_you_mean

__all__ = ["CYCLE_METRICS", "CYCLE_SECTIONS", "CycleDataSection", "CycleTrainingArguments", "resolve_callable"]

CYCLE_DIRECTIONS = ("both", "A", "B")
# Inherited TrainingArguments fields that CycleTrainer does not carry out, each with the one value it
# accepts and what to do instead: a setting is honoured or refused, never accepted and then ignored.
NOT_IN_CYCLE: dict[str, tuple[Any, str]] = {
    "push_to_hub": (False, "push the saved A/ and B/ folders with huggingface_hub"),
    "hub_strategy": ("every_save", "push_to_hub is not available in cycle runs"),
    "hub_token": (None, "push_to_hub is not available in cycle runs"),
    "hub_private_repo": (None, "push_to_hub is not available in cycle runs"),
    "hub_revision": (None, "push_to_hub is not available in cycle runs"),
    "auto_find_batch_size": (False, "set per_device_train_batch_size"),
    # rows come from one seeded stream per domain (cycle.streams), not from a DataLoader
    "group_by_length": (False, "each domain stream is reshuffled every epoch"),
    "length_column_name": ("length", "it only serves group_by_length"),
    "train_sampling_strategy": ("random", "each domain stream is reshuffled every epoch"),
    "dataloader_drop_last": (True, "each domain stream takes whole windows and skips an epoch's short tail"),
    "dataloader_num_workers": (0, "rows are read in the main process"),
    "dataloader_pin_memory": (False, "the cycle has no DataLoader to pin for"),
    "dataloader_persistent_workers": (False, "the cycle has no DataLoader workers"),
    "dataloader_prefetch_factor": (None, "the cycle has no DataLoader workers"),
    "accelerator_config": ({}, "its settings configure DataLoaders, and the cycle has none"),
    "ignore_data_skip": (False, "a resumed cycle run continues each domain stream where it stopped"),
    "remove_unused_columns": (True, "the cycle reads text_field_A/B or paired_field_A/B by name"),
    "label_names": (None, "the cycle builds its own labels from the target texts"),
    # evaluation generates and scores texts (reconstruction loss, task metrics), it keeps no logits
    "prediction_loss_only": (False, "the cycle's evaluate computes the metrics asked for by metrics="),
    "eval_accumulation_steps": (None, "cycle evaluation keeps no logits"),
    "include_for_metrics": ([], "compute_metrics gets the generated and reference texts"),
    "batch_eval_metrics": (False, "compute_metrics is called once per direction"),
    "bf16_full_eval": (False, "evaluation runs in the training precision"),
    "eval_do_concat_batches": (True, "compute_metrics gets the texts of a whole direction"),
    "eval_use_gather_object": (False, "the generated texts are always gathered as objects"),
    "fp16_full_eval": (False, "evaluation runs in the training precision"),
    "include_num_input_tokens_seen": (False, "the log counts rows per direction instead"),
    "peak_tflops": (None, "the cycle log shows generation and training seconds, not MFU"),
    # the cycle's losses come from the logits of models it batches itself (cycle.trainer._window_loss)
    "chunked_cross_entropy": (False, "the cycle computes its losses from the models' logits"),
    "use_liger_kernel": (False, "the cycle computes its losses from the models' logits"),
    "skip_memory_metrics": (True, "the cycle reports generation and training seconds, not memory"),
    "logging_nan_inf_filter": (False, "CycleTrainer logs each loss as it is, NaN and inf included"),
    # the cycle generates with each model between steps; sharded generation is not supported
    "fsdp": ([], "train the pair with DDP (a multi-process launch without fsdp)"),
    "fsdp_config": (None, "fsdp is not available in cycle runs"),
    "deepspeed": (None, "train the pair with DDP (a multi-process launch without deepspeed)"),
    "save_on_each_node": (False, "cycle checkpoints are written by rank 0 to a disk every machine shares"),
    # every rank must agree on skipping a window whose rows were all dropped: the count is global
    "average_tokens_across_devices": (True, "the cycle loss is normalised by the label tokens of all ranks"),
}
CYCLE_METRICS = ("exact_match", "bleu", "chrf")


def cycle_args_from(args: TrainingArguments) -> CycleTrainingArguments:
    """A plain `TrainingArguments` as `CycleTrainingArguments`: the fields set away from the
    `TrainingArguments` defaults carry over, the others take the cycle's defaults.

    Raises:
        ConfigError: a carried-over setting the cycle refuses (see NOT_IN_CYCLE).
    """
    given = args.to_dict()
    defaults = TrainingArguments(output_dir=args.output_dir).to_dict()
    changed = {k: v for k, v in given.items() if k == "output_dir" or v != defaults.get(k)}
    return CycleTrainingArguments(**changed)


def resolve_callable(name: str, value: Any) -> Callable | None:
    """A callable, or one named by a 'package.module:function' string (run files); None stays None."""
    if value is None or callable(value):
        return value
    if not isinstance(value, str) or ":" not in value:
        raise ConfigError(f"{name}={value!r} must be a callable or a 'package.module:function' string")
    module_name, _, attr = value.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"{name}={value!r} cannot be imported ({err}); check the module and function name") from None
    if not callable(fn):
        raise ConfigError(f"{name}={value!r} is not callable")
    return fn


@dataclass
class CycleTrainingArguments(TrainingArguments):
    """Hyperparameters of a cycle-consistency run: every `TrainingArguments` field plus these.

    One optimizer step (`global_step`) updates both models once (each with its own optimizer,
    scheduler and accumulation window). `per_device_train_batch_size` rows of the *target* domain
    are drawn per micro-batch and direction.
    """

    use_macct: bool | None = arg(
        None,
        "MACCT: one frozen base model with LoRA adapters 'A' and 'B'. None: decided by what is given "
        "(a single model with peft_configs, or a PeftModel with adapters A and B); True/False forces it.",
    )
    cycle_directions: str = arg(
        "both", "Which models train: 'both', 'A' (only model A, A->B) or 'B' (only model B, B->A)."
    )
    text_field_A: str = arg("text", "Text column of train/eval_dataset_A (ignored for pre-tokenized input_ids).")
    text_field_B: str = arg("text", "Text column of train/eval_dataset_B (ignored for pre-tokenized input_ids).")
    paired_field_A: str = arg("text_A", "Domain-A column of paired_dataset and paired_eval_dataset.")
    paired_field_B: str = arg("text_B", "Domain-B column of paired_dataset and paired_eval_dataset.")
    prompt_template_A: str = arg("{text}", "Wraps the source text model A reads, e.g. 'Translate to B: {text}'.")
    prompt_template_B: str = arg("{text}", "Wraps the source text model B reads.")
    sep_seq: str = arg("\n", "Causal models: text between the prompt and the target.")
    max_seq_length: int = arg(
        256, "Token limit of a training row (causal: prompt+target; seq2seq: encoder input) and of a generation prompt."
    )
    max_target_length: int | None = arg(None, "Seq2seq: token limit of the labels (None: max_seq_length).")
    do_sample_A: bool = arg(False, "Model A samples when generating (False: greedy / beam search).")
    do_sample_B: bool = arg(False, "Model B samples when generating.")
    temperature_A: float = arg(1.0, "Sampling temperature of model A.")
    temperature_B: float = arg(1.0, "Sampling temperature of model B.")
    top_p_A: float = arg(1.0, "Nucleus sampling mass of model A (1.0: off).")
    top_p_B: float = arg(1.0, "Nucleus sampling mass of model B (1.0: off).")
    top_k_A: int = arg(0, "Top-k sampling of model A (0: off).")
    top_k_B: int = arg(0, "Top-k sampling of model B (0: off).")
    num_beams_A: int = arg(1, "Beam search width of model A (1: none).")
    num_beams_B: int = arg(1, "Beam search width of model B (1: none).")
    max_new_tokens_A: int = arg(64, "Upper bound on the tokens model A generates per row.")
    max_new_tokens_B: int = arg(64, "Upper bound on the tokens model B generates per row.")
    max_new_tokens_ratio_A: float | None = arg(
        None,
        "Bound model A's new tokens by ratio x the longest source in the batch (tokens), capped by "
        "max_new_tokens_A; e.g. 1.5 for a similar-length task. None: max_new_tokens_A only.",
    )
    max_new_tokens_ratio_B: float | None = arg(None, "The same for model B.")
    min_new_tokens_A: int = arg(
        1, "Model A must generate at least this many tokens before EOS (1 stops empty outputs on a cold start)."
    )
    min_new_tokens_B: int = arg(1, "The same for model B.")
    drop_empty_synthetic: bool = arg(
        True, "Drop rows whose synthetic source came out empty (counted in the log as dropped_A/B)."
    )
    warmup_paired_steps: int = arg(
        0, "The first N steps train both models supervised on paired_dataset (no generation)."
    )
    paired_mix_every: int = arg(
        0, "After the warm-up, every N-th step is a supervised paired step instead of a cycle step (0: never)."
    )
    metrics: list[str] = arg(
        [], "Built-in task metrics on paired_eval_dataset: any of exact_match, bleu, chrf (sacrebleu)."
    )
    prepare_cycle_inputs: Any = arg(
        None,
        "Custom batch builder fn(synthetic_texts, target_texts, tokenizer, direction ('A->B': model A's batch), args) -> dict with "
        "labels; a callable or 'module:function'. Replaces the built-in text and token paths.",
    )
    logging_nan_inf_filter: bool = arg(
        False, "Not available in cycle runs (each loss is logged as it is, NaN and inf included); true is refused."
    )
    chunked_cross_entropy: bool = arg(
        False, "Not available in cycle runs (their losses come from the models' logits); true is refused."
    )
    dataloader_drop_last: bool = arg(
        True,
        "Cycle runs take whole windows from each domain stream (an epoch's short tail is skipped); false is refused.",
    )

    def __post_init__(self) -> None:
        if self.hub_token == "<HUB_TOKEN>":
            self.hub_token = None  # the mask to_dict() writes, read back from a saved config
        # before the base class turns one field into another (train_sampling_strategy='group_by_length'
        # becomes group_by_length=True): the refusal names the field the user set
        for name, (accepted, instead) in NOT_IN_CYCLE.items():
            value = getattr(self, name)
            if value != accepted and not (accepted == {} and value is None):
                raise ConfigError(
                    f"{name}={value!r} is not supported by CycleTrainer; leave it at {accepted!r} ({instead})"
                )
        if self.learning_rate == "auto":
            raise ConfigError(
                "learning_rate='auto' is not supported by CycleTrainer (the LR range test trains one model); run "
                "`trainformers lr-find` on one direction's model and set learning_rate to a number"
            )
        super().__post_init__()
        self.cycle_directions = choice("cycle_directions", self.cycle_directions, CYCLE_DIRECTIONS)
        if self.use_macct is not None and not isinstance(self.use_macct, bool):
            raise ConfigError(f"use_macct={self.use_macct!r} must be true, false or null (decide from the models)")
        for name in ("text_field_A", "text_field_B", "paired_field_A", "paired_field_B"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ConfigError(f"{name}={getattr(self, name)!r} must be a column name")
        for name in ("prompt_template_A", "prompt_template_B"):
            value = getattr(self, name)
            if not isinstance(value, str) or value.replace("{{", "").replace("}}", "").count("{text}") != 1:
                raise ConfigError(f"{name}={value!r} must contain '{{text}}' exactly once, e.g. 'Translate: {{text}}'")
        if not isinstance(self.sep_seq, str):
            raise ConfigError(f"sep_seq={self.sep_seq!r} must be a string (use '' for none)")
        check_int("max_seq_length", self.max_seq_length, 4)
        if self.max_target_length is not None:
            check_int("max_target_length", self.max_target_length, 2)
        for side in ("A", "B"):
            if not isinstance(getattr(self, f"do_sample_{side}"), bool):
                raise ConfigError(f"do_sample_{side}={getattr(self, f'do_sample_{side}')!r} must be true or false")
            temperature = getattr(self, f"temperature_{side}")
            if not is_number(temperature) or temperature <= 0:
                raise ConfigError(f"temperature_{side}={temperature!r} must be > 0")
            top_p = getattr(self, f"top_p_{side}")
            if not is_number(top_p) or not 0 < top_p <= 1:
                raise ConfigError(f"top_p_{side}={top_p!r} must be in (0, 1]")
            check_int(f"top_k_{side}", getattr(self, f"top_k_{side}"), 0)
            check_int(f"num_beams_{side}", getattr(self, f"num_beams_{side}"), 1)
            check_int(f"max_new_tokens_{side}", getattr(self, f"max_new_tokens_{side}"), 1)
            check_int(f"min_new_tokens_{side}", getattr(self, f"min_new_tokens_{side}"), 0)
            if getattr(self, f"min_new_tokens_{side}") > getattr(self, f"max_new_tokens_{side}"):
                raise ConfigError(
                    f"min_new_tokens_{side}={getattr(self, f'min_new_tokens_{side}')} is above "
                    f"max_new_tokens_{side}={getattr(self, f'max_new_tokens_{side}')}; lower it"
                )
            ratio = getattr(self, f"max_new_tokens_ratio_{side}")
            if ratio is not None and (not is_number(ratio) or ratio <= 0):
                raise ConfigError(f"max_new_tokens_ratio_{side}={ratio!r} must be > 0, or null for no bound")
        check_int("warmup_paired_steps", self.warmup_paired_steps, 0)
        check_int("paired_mix_every", self.paired_mix_every, 0)
        if isinstance(self.metrics, str):
            self.metrics = [m.strip() for m in self.metrics.split(",") if m.strip()]
        if not isinstance(self.metrics, (list, tuple)):
            raise ConfigError(f"metrics={self.metrics!r} must be a list, e.g. [exact_match, chrf]")
        self.metrics = [choice("metrics", m, CYCLE_METRICS) for m in self.metrics]
        if self.max_steps <= 0 and self.num_train_epochs <= 0:
            raise ConfigError("CycleTrainingArguments needs max_steps > 0 or num_train_epochs > 0")

    def generation_settings(self, side: str) -> dict[str, Any]:
        """The generation keywords of model `side` ('A' or 'B'), for `model.generate`."""
        settings: dict[str, Any] = {
            "do_sample": getattr(self, f"do_sample_{side}"),
            "num_beams": getattr(self, f"num_beams_{side}"),
        }
        if settings["do_sample"]:
            settings.update(
                temperature=float(getattr(self, f"temperature_{side}")),
                top_p=float(getattr(self, f"top_p_{side}")),
                top_k=getattr(self, f"top_k_{side}") or None,
            )
        return settings

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        fn = self.prepare_cycle_inputs
        if fn is not None and not isinstance(fn, str):
            out["prepare_cycle_inputs"] = f"{getattr(fn, '__module__', '?')}:{getattr(fn, '__qualname__', repr(fn))}"
        return out


CYCLE_FIELDS = tuple(
    f.name
    for f in dataclasses.fields(CycleTrainingArguments)
    if f.name not in {g.name for g in dataclasses.fields(TrainingArguments)}
)


CYCLE_TASKS = ("demo", "translation", "ner", "unpaired")


@dataclass
class CycleDataSection:
    """What the two models learn from."""

    task: str = arg("demo", "demo (number words <-> digits), translation, ner, or unpaired (your own files).")
    source: str | None = arg(None, "translation / ner: the paired dataset (file, directory or Hub name).")
    split: str = arg("train", "translation / ner: the split of `source` to read.")
    options: dict[str, Any] = arg({}, "Fields of the task's config: DemoConfig, TranslationConfig or NERConfig.")
    train_A: str | None = arg(None, "unpaired: file(s) of domain-A texts (txt, json, jsonl, csv, parquet).")
    train_B: str | None = arg(None, "unpaired: file(s) of domain-B texts.")
    paired_train: str | None = arg(None, "unpaired: optional paired file (text_A, text_B) for supervised steps.")
    paired_eval: str | None = arg(None, "unpaired: optional paired file (text_A, text_B) for metrics.")

    def __post_init__(self) -> None:
        if self.task not in CYCLE_TASKS:
            raise ConfigError(
                f"data.task={self.task!r} is not supported{did_you_mean(str(self.task), CYCLE_TASKS)}; choose one of {', '.join(CYCLE_TASKS)}"
            )
        if self.task in ("translation", "ner") and not self.source:
            raise ConfigError(f"data.task={self.task!r} needs data.source (the paired dataset)")
        if self.task == "unpaired" and not (self.train_A and self.train_B):
            raise ConfigError("data.task='unpaired' needs data.train_A and data.train_B (files of each domain's texts)")


CYCLE_SECTIONS: dict[str, type] = {
    "model_A": ModelSection,
    "model_B": ModelSection,
    "data": CycleDataSection,
    "training": CycleTrainingArguments,
    "peft": dict,
}
