"""Every field of `CycleTrainingArguments` is honoured by the cycle path or refused: none is accepted and ignored.

What this pins, without training anything:

- Each field of `CycleTrainingArguments` (the inherited `TrainingArguments` ones and the cycle's own) is
  classified in exactly one place:

  - `NOT_IN_CYCLE` (imported from `trainformers.cycle.config`): refused unless left at the one accepted value;
  - `HONOURED`: field -> the place on the cycle path that reads it, as "module.Qualname" under `trainformers`;
  - `METADATA`: fields that do nothing at train time in any trainer (informational flags);
  - `ALIASES`: older spellings that `TrainingArguments.__post_init__` maps onto another field.

  A field added later fails `test_every_field_is_classified` until it is put in one of them.
- Each `HONOURED` claim is checked in the source (`ast`): the named module (and function or class, when given)
  reads the field from the arguments object: `args.x`, `self.args.x`, `getattr(args, "x")`,
  `getattr(args, f"x_{side}")` (a side is "A" or "B"), or a helper called with `args` and "x". Reads inside
  validation (`__post_init__`, `_validate*`, `_normalise*`, `check_*`, ...) do not count: a field that is only
  checked is not honoured.
- Each `NOT_IN_CYCLE` field, set to a value that a plain `TrainingArguments` accepts, makes
  `CycleTrainingArguments` raise a one-line `ConfigError` that names the field.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import itertools
import re
import warnings
from pathlib import Path
from typing import Any

import pytest

import trainformers
from trainformers.config import TrainingArguments
from trainformers.config.fields import alias_target, is_alias
from trainformers.cycle.config import NOT_IN_CYCLE, CycleTrainingArguments
from trainformers.errors import ConfigError

SRC = Path(trainformers.__file__).parent

# --- the cycle path: the modules a CycleTrainer run goes through ----------------------------------------------------

# Shared with Trainer. hub and report: default_callbacks gives every CycleTrainer a HubCallback and a ReportCallback;
# modelcard: CycleTrainer.create_model_card; config.training: the helpers the loop calls (get_warmup_steps, ...).
SHARED_MODULES = (
    "accel",
    "callbacks",
    "checkpoint",
    "config.process",
    "config.training",
    "events",
    "hub",
    "loop_utils",
    "losses",
    "meter",
    "modelcard",
    "optim",
    "report",
    "state",
    "step",
    "trackers",
)
# Modules of trainformers.cycle that build a run from a file or a demo; they do not train, so no claim may point there.
NOT_THE_TRAINER = frozenset({"cycle.__init__", "cycle.demo", "cycle.demo_data", "cycle.run", "cycle.tasks"})
CYCLE_PACKAGE = tuple(
    name
    for name in (f"cycle.{path.stem}" for path in sorted((SRC / "cycle").glob("*.py")))
    if name not in NOT_THE_TRAINER
)
CYCLE_PATH = SHARED_MODULES + CYCLE_PACKAGE

# --- the classification ---------------------------------------------------------------------------------------------

# field -> "module.Qualname" (or just "module") under trainformers, where the cycle path reads it.
HONOURED: dict[str, str] = {
    # output and run
    "output_dir": "cycle.trainer.CycleTrainer.train",
    "overwrite_output_dir": "cycle.trainer.CycleTrainer.train",
    "run_name": "trackers.run_name",  # the run's name in every tracker
    "project": "trackers.build_trackers",  # trackio's and W&B's project
    "trackio_space_id": "trackers.build_trackers",
    "seed": "loop_utils.seed_everything",  # and the domain streams' seeds in _train_loop
    "data_seed": "cycle.trainer.CycleTrainer._train_loop",
    "full_determinism": "loop_utils.seed_everything",
    # duration and batching
    "num_train_epochs": "cycle.trainer.CycleTrainer._train_loop",
    "max_steps": "cycle.trainer.CycleTrainer._train_loop",
    "per_device_train_batch_size": "cycle.trainer.CycleTrainer._direction_step",
    "per_device_eval_batch_size": "cycle.trainer.CycleTrainer._reconstruction",
    "gradient_accumulation_steps": "cycle.trainer.CycleTrainer._direction_step",
    # optimisation
    "learning_rate": "optim.optimizer_cls_and_kwargs",
    "weight_decay": "optim.param_groups",
    "adam_beta1": "optim.optimizer_cls_and_kwargs",
    "adam_beta2": "optim.optimizer_cls_and_kwargs",
    "adam_epsilon": "optim.optimizer_cls_and_kwargs",
    "max_grad_norm": "cycle.trainer.CycleTrainer._prepare",  # -> StepKernel(max_grad_norm=...): clip
    "nan_policy": "cycle.trainer.CycleTrainer._prepare",  # -> StepKernel(check_finite=...), NonFiniteGuard
    "cpu_malloc": "cycle.trainer.CycleTrainer.train",  # -> accel.start_notices -> allocator.apply_malloc_policy
    "nan_skip_limit": "cycle.trainer.CycleTrainer._prepare",  # -> NonFiniteGuard
    "optim": "optim.optimizer_cls_and_kwargs",
    "optim_args": "config.training.TrainingArguments.optim_args_dict",  # called by optimizer_cls_and_kwargs
    "lr_scheduler_type": "optim.create_scheduler",
    "lr_scheduler_kwargs": "optim.create_scheduler",
    "warmup_steps": "config.training.TrainingArguments.get_warmup_steps",  # called by create_scheduler
    "label_smoothing_factor": "cycle.trainer.CycleTrainer._window_loss",
    "param_groups": "optim.param_groups",
    "loraplus_lr_ratio": "optim.param_groups",
    # precision, memory, speed
    "bf16": "accel.build_accelerator",
    "fp16": "accel.build_accelerator",
    "tf32": "accel.build_accelerator",
    "gradient_checkpointing": "loop_utils.prepare_model",
    "gradient_checkpointing_kwargs": "loop_utils.prepare_model",
    # model.config.use_cache (saved with the model); the cycle's own forwards and generate() pass use_cache themselves
    "use_cache": "loop_utils.prepare_model",
    "torch_compile": "accel.build_accelerator",
    "torch_compile_backend": "accel.build_accelerator",
    "torch_compile_mode": "accel.build_accelerator",
    # logging
    "logging_strategy": "callbacks.DefaultFlowCallback",
    "logging_steps": "loop_utils.new_state",  # resolved into state.logging_steps for DefaultFlowCallback
    "logging_first_step": "callbacks.DefaultFlowCallback",
    "report_at_end": "report.ReportCallback",
    "report_to": "trackers.build_trackers",  # Accelerator(log_with=build_trackers(args))
    "logging_dir": "accel.build_accelerator",
    "disable_tqdm": "callbacks.default_callbacks",
    # evaluation
    "eval_strategy": "callbacks.DefaultFlowCallback",
    "eval_steps": "loop_utils.new_state",
    "eval_delay": "callbacks.DefaultFlowCallback",
    "eval_on_start": "cycle.trainer.CycleTrainer._train_loop",
    # saving and resuming
    "save_strategy": "callbacks.DefaultFlowCallback",
    "save_steps": "loop_utils.new_state",
    "save_total_limit": "checkpoint.save_checkpoint",
    "save_only_model": "checkpoint.save_checkpoint",
    "load_best_model_at_end": "cycle.trainer.CycleTrainer._train_loop",
    "metric_for_best_model": "loop_utils.best_metric_key",
    "greater_is_better": "loop_utils.update_best_metric",
    "resume_from_checkpoint": "cycle.trainer.CycleTrainer.train",
    # distributed
    "ddp_find_unused_parameters": "accel.build_accelerator",
    "ddp_bucket_cap_mb": "accel.build_accelerator",
    "ddp_broadcast_buffers": "accel.build_accelerator",
    "ddp_static_graph": "accel.build_accelerator",
    "ddp_backend": "accel.build_accelerator",
    "ddp_timeout": "accel.build_accelerator",
    "use_cpu": "accel.build_accelerator",
    # hub
    "hub_model_id": "modelcard.create_model_card",  # the card's model name (CycleTrainer.create_model_card)
    # the cycle's own fields
    "use_macct": "cycle.trainer.CycleTrainer.__init__",
    "cycle_directions": "cycle.trainer.CycleTrainer.__init__",
    "text_field_A": "cycle.trainer.CycleTrainer.__init__",
    "text_field_B": "cycle.trainer.CycleTrainer.__init__",
    "paired_field_A": "cycle.trainer.CycleTrainer._direction_step",
    "paired_field_B": "cycle.trainer.CycleTrainer._direction_step",
    "prompt_template_A": "cycle.trainer.CycleTrainer.__init__",
    "prompt_template_B": "cycle.trainer.CycleTrainer.__init__",
    "sep_seq": "cycle.trainer.CycleTrainer.__init__",
    "max_seq_length": "cycle.trainer.CycleTrainer.__init__",
    "max_target_length": "cycle.trainer.CycleTrainer.__init__",
    "do_sample_A": "cycle.config.CycleTrainingArguments.generation_settings",  # called by CycleTrainer._generate
    "do_sample_B": "cycle.config.CycleTrainingArguments.generation_settings",
    "temperature_A": "cycle.config.CycleTrainingArguments.generation_settings",
    "temperature_B": "cycle.config.CycleTrainingArguments.generation_settings",
    "top_p_A": "cycle.config.CycleTrainingArguments.generation_settings",
    "top_p_B": "cycle.config.CycleTrainingArguments.generation_settings",
    "top_k_A": "cycle.config.CycleTrainingArguments.generation_settings",
    "top_k_B": "cycle.config.CycleTrainingArguments.generation_settings",
    "num_beams_A": "cycle.config.CycleTrainingArguments.generation_settings",
    "num_beams_B": "cycle.config.CycleTrainingArguments.generation_settings",
    "max_new_tokens_A": "cycle.trainer.CycleTrainer._generate",
    "max_new_tokens_B": "cycle.trainer.CycleTrainer._generate",
    "max_new_tokens_ratio_A": "cycle.trainer.CycleTrainer._generate",
    "max_new_tokens_ratio_B": "cycle.trainer.CycleTrainer._generate",
    "min_new_tokens_A": "cycle.trainer.CycleTrainer._generate",
    "min_new_tokens_B": "cycle.trainer.CycleTrainer._generate",
    "drop_empty_synthetic": "cycle.trainer.CycleTrainer.__init__",
    "warmup_paired_steps": "cycle.trainer.CycleTrainer._step_kind",
    "paired_mix_every": "cycle.trainer.CycleTrainer._step_kind",
    "metrics": "cycle.trainer.CycleTrainer.evaluate",
    "prepare_cycle_inputs": "cycle.trainer.CycleTrainer.__init__",
    "log_level": "config.process.ProcessInfo.get_process_log_level",
    "log_level_replica": "config.process.ProcessInfo.get_process_log_level",
    "log_on_each_node": "config.process.ProcessInfo.should_log",
    "local_rank": "config.process.ProcessInfo.local_process_index",  # the launcher's LOCAL_RANK comes first
    "neftune_noise_alpha": "cycle.trainer.CycleTrainer.train",
    "enable_jit_checkpoint": "cycle.trainer.CycleTrainer.__init__",
    "restore_callback_states_from_checkpoint": "cycle.trainer.CycleTrainer._resumable",
}

# Fields that do nothing at train time in any trainer; no module of the cycle path may read them.
METADATA: dict[str, str] = {
    "do_train": "informational flag for scripts (its help: 'The Trainer ignores it')",
    "do_eval": "informational flag for scripts; __post_init__ sets it when eval_strategy is not 'no'",
    "do_predict": "informational flag for scripts (its help: 'The Trainer ignores it')",
    "debug": "only empty is accepted: transformers' debug options are not carried out by any trainer",
}

# Older spellings: TrainingArguments.__post_init__ moves the value onto the target and resets the alias to None.
# None: accepted with a FutureWarning and dropped (Apex optimisation levels mean nothing to torch autocast).
ALIASES: dict[str, str | None] = {
    "evaluation_strategy": "eval_strategy",
    "warmup_ratio": "warmup_steps",
    "no_cuda": "use_cpu",
    "push_to_hub_model_id": "hub_model_id",
    "fp16_opt_level": None,
    "activation_checkpointing": "gradient_checkpointing",
    "activation_checkpointing_kwargs": "gradient_checkpointing_kwargs",
}
# alias -> (a value to set, what the target holds afterwards)
ALIAS_VALUES: dict[str, tuple[Any, Any]] = {
    "evaluation_strategy": ("steps", "steps"),
    "warmup_ratio": (0.1, 0.1),
    "no_cuda": (True, True),
    "push_to_hub_model_id": ("someone/cycle-model", "someone/cycle-model"),
    "fp16_opt_level": ("O1", None),
    "activation_checkpointing": (True, True),
    "activation_checkpointing_kwargs": ({"use_reentrant": False}, {"use_reentrant": False}),
}

# Settings a plain TrainingArguments needs beside an alternative value for it to be valid there.
COMPANIONS: dict[str, dict[str, Any]] = {
    "dataloader_prefetch_factor": {"dataloader_num_workers": 2},
    "fsdp_config": {"fsdp": "full_shard"},
}

# NOT_IN_CYCLE field -> values other than the accepted one that a plain TrainingArguments accepts.
ALTERNATIVES: dict[str, tuple[Any, ...]] = {
    "fsdp": ("full_shard",),
    "fsdp_config": ({"version": 2},),
    "deepspeed": ({"zero_optimization": {"stage": 2}},),
    "save_on_each_node": (True,),
    "push_to_hub": (True,),
    "hub_strategy": ("end", "checkpoint"),
    "hub_token": ("hf_secret",),
    "hub_private_repo": (True, False),
    "hub_revision": ("dev",),
    "auto_find_batch_size": (True,),
    "group_by_length": (True,),
    "length_column_name": ("n_tokens",),
    "train_sampling_strategy": ("sequential", "group_by_length"),
    "dataloader_drop_last": (False,),
    "dataloader_num_workers": (2,),
    "dataloader_pin_memory": (True,),
    "dataloader_persistent_workers": (True,),
    "dataloader_prefetch_factor": (2,),
    "accelerator_config": ({"split_batches": True},),
    "ignore_data_skip": (True,),
    "remove_unused_columns": (False,),
    "label_names": (["labels"],),
    "prediction_loss_only": (True,),
    "eval_accumulation_steps": (4,),
    "include_for_metrics": (["inputs"],),
    "batch_eval_metrics": (True,),
    "bf16_full_eval": (True,),
    "fp16_full_eval": (True,),
    "include_num_input_tokens_seen": (True, "all", "non_padding"),
    "peak_tflops": (100.0,),
    "skip_memory_metrics": (False,),
    "eval_do_concat_batches": (False,),
    "eval_use_gather_object": (True,),
    "logging_nan_inf_filter": (True,),
    "average_tokens_across_devices": (False,),
    "chunked_cross_entropy": (True,),
    "use_liger_kernel": (True,),
}


class _NoAlternative:
    """Stands for the value of a NOT_IN_CYCLE field missing from ALTERNATIVES: its case fails, it is never skipped."""

    def __repr__(self) -> str:
        return "<no alternative in ALTERNATIVES>"


NO_ALTERNATIVE = _NoAlternative()
# (field, value) -> why its refusal does not name the field yet

# --- reading the source ---------------------------------------------------------------------------------------------

# Functions whose reads are checks, not use: a field read only there is not honoured.
VALIDATION = re.compile(r"^(__post_init__|__new__|_apply_\w+|_?(validate|normalise|check)\w*)$")
ARGS_NAMES = frozenset({"args", "training_args"})
SIDES = ("A", "B")  # what an f-string placeholder that isn't a loop over constants stands for: a side


def _constant_strings(node: ast.AST, constants: dict[str, tuple[str, ...]]) -> tuple[str, ...] | None:
    """The strings of a tuple/list literal of strings, or of a name bound to one at module level."""
    if isinstance(node, (ast.Tuple, ast.List)):
        if all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts):
            return tuple(e.value for e in node.elts)  # type: ignore[attr-defined]
    if isinstance(node, ast.Name):
        return constants.get(node.id)
    return None


class _ArgsReads(ast.NodeVisitor):
    """Where a module reads fields of the arguments object: a list of (qualname of the reading scope, field)."""

    def __init__(self, tree: ast.Module) -> None:
        self.constants: dict[str, tuple[str, ...]] = {}
        for stmt in tree.body:
            if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
                values = _constant_strings(stmt.value, {})
                if values is not None:
                    self.constants[stmt.targets[0].id] = values
        self.scope: list[str] = []
        self.classes: list[str] = []
        self.loops: list[dict[str, tuple[str, ...]]] = [{}]
        self.defined: set[str] = set()
        self.reads: list[tuple[str, str]] = []
        self.visit(tree)

    # scopes
    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        self.scope.append(node.name)
        self.classes.append(node.name)
        self.defined.add(".".join(self.scope))
        self.generic_visit(node)
        self.classes.pop()
        self.scope.pop()

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.scope.append(node.name)
        self.defined.add(".".join(self.scope))
        if not VALIDATION.match(node.name):
            loops = dict(self.loops[-1])
            for sub in ast.walk(node):
                if isinstance(sub, (ast.For, ast.comprehension)) and isinstance(sub.target, ast.Name):
                    values = _constant_strings(sub.iter, self.constants)
                    if values is not None:
                        loops[sub.target.id] = values
            self.loops.append(loops)
            self.generic_visit(node)
            self.loops.pop()
        self.scope.pop()

    visit_AsyncFunctionDef = visit_FunctionDef

    # reads
    def _is_args(self, node: ast.AST) -> bool:
        if isinstance(node, ast.Name) and node.id in ARGS_NAMES:
            return True
        if isinstance(node, ast.Attribute) and node.attr == "args":
            return True  # self.args, trainer.args
        # inside the arguments classes themselves, `self` is the arguments object
        return (
            isinstance(node, ast.Name)
            and node.id == "self"
            and bool(self.classes)
            and (self.classes[-1].endswith("TrainingArguments") or self.classes[-1] == "ProcessInfo")
        )

    def _read(self, name: str) -> None:
        self.reads.append((".".join(self.scope), name))

    def _fstring_names(self, node: ast.JoinedStr) -> list[str]:
        parts: list[tuple[str, ...]] = []
        for value in node.values:
            if isinstance(value, ast.Constant):
                parts.append((str(value.value),))
            elif isinstance(value, ast.FormattedValue) and isinstance(value.value, ast.Name):
                parts.append(self.loops[-1].get(value.value.id, SIDES))
            else:
                parts.append(SIDES)
        return ["".join(p) for p in itertools.product(*parts)]

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if self._is_args(node.value):
            self._read(node.attr)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        if isinstance(node.func, ast.Name) and node.func.id == "getattr" and len(node.args) >= 2:
            if self._is_args(node.args[0]):
                key = node.args[1]
                if isinstance(key, ast.Constant) and isinstance(key.value, str):
                    self._read(key.value)
                elif isinstance(key, ast.JoinedStr):
                    for name in self._fstring_names(key):
                        self._read(name)
        elif any(self._is_args(a) for a in node.args):
            # a helper that reads a field by name, e.g. optim._setting(value, args, "param_groups", None)
            for arg in [*node.args, *(k.value for k in node.keywords)]:
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and arg.value.isidentifier():
                    self._read(arg.value)
        self.generic_visit(node)


def _scan(source: str) -> _ArgsReads:
    return _ArgsReads(ast.parse(source))


@functools.cache
def _module_reads(module: str) -> _ArgsReads:
    return _scan((SRC / (module.replace(".", "/") + ".py")).read_text(encoding="utf-8"))


def _reads_in(reads: _ArgsReads, qualname: str) -> set[str]:
    """The fields read in `qualname` (and what it contains); the whole module for ''."""
    return {
        name for scope, name in reads.reads if not qualname or scope == qualname or scope.startswith(qualname + ".")
    }


def _split_claim(claim: str) -> tuple[str, str]:
    """'cycle.trainer.CycleTrainer.train' -> ('cycle.trainer', 'CycleTrainer.train'): the longest cycle-path module."""
    parts = claim.split(".")
    for i in range(len(parts), 0, -1):
        module = ".".join(parts[:i])
        if module in CYCLE_PATH:
            return module, ".".join(parts[i:])
    raise AssertionError(f"{claim!r} names no module of the cycle path ({', '.join(CYCLE_PATH)})")


def _fields() -> list[str]:
    return [f.name for f in dataclasses.fields(CycleTrainingArguments)]


# --- the tests ------------------------------------------------------------------------------------------------------


def test_every_field_is_classified() -> None:
    categories = {
        "NOT_IN_CYCLE": set(NOT_IN_CYCLE),
        "HONOURED": set(HONOURED),
        "METADATA": set(METADATA),
        "ALIASES": set(ALIASES),
    }
    fields = _fields()
    unclassified = [f for f in fields if not any(f in names for names in categories.values())]
    assert not unclassified, (
        f"fields of CycleTrainingArguments in no category: {unclassified}; put each in HONOURED (where the cycle "
        "path reads it), NOT_IN_CYCLE (refuse it) or, if it truly does nothing in any trainer, METADATA"
    )
    twice = {f: [c for c, names in categories.items() if f in names] for f in fields}
    twice = {f: cats for f, cats in twice.items() if len(cats) > 1}
    assert not twice, f"fields in more than one category: {twice}"
    stale = {c: sorted(names - set(fields)) for c, names in categories.items() if names - set(fields)}
    assert not stale, f"names that are not fields of CycleTrainingArguments: {stale}"


@pytest.mark.parametrize("name", sorted(HONOURED))
def test_honoured_field_is_read_where_claimed(name: str) -> None:
    module, qualname = _split_claim(HONOURED[name])
    reads = _module_reads(module)
    if qualname:
        assert qualname in reads.defined, f"HONOURED[{name!r}]: trainformers.{module} defines no {qualname!r}"
        validation = [part for part in qualname.split(".") if VALIDATION.match(part)]
        assert not validation, f"HONOURED[{name!r}] points at validation ({qualname}); a checked field is not honoured"
    where = f"trainformers.{module}" + (f".{qualname}" if qualname else "")
    assert name in _reads_in(reads, qualname), (
        f"HONOURED[{name!r}] says {where} reads it, but it does not read `args.{name}` there (outside validation); "
        "point the claim at the code that acts on it, or classify the field elsewhere"
    )


@pytest.mark.parametrize("name", sorted(METADATA))
def test_metadata_field_is_read_nowhere_on_the_cycle_path(name: str) -> None:
    readers = [m for m in CYCLE_PATH if name in _reads_in(_module_reads(m), "")]
    assert not readers, f"METADATA field {name!r} is read in {readers}: move it to HONOURED with that place"


def _refusal_cases() -> list[Any]:
    cases = []
    for name in NOT_IN_CYCLE:
        for value in ALTERNATIVES.get(name, (NO_ALTERNATIVE,)):
            cases.append(pytest.param(name, value, id=f"{name}={value!r}"))
    return cases


@pytest.mark.parametrize(("name", "value"), _refusal_cases())
def test_refused_field_raises_one_line_error_naming_it(name: str, value: Any, tmp_path: Path) -> None:
    assert value is not NO_ALTERNATIVE, f"NOT_IN_CYCLE field {name!r} has no other valid value in ALTERNATIVES; add one"
    accepted = NOT_IN_CYCLE[name][0]
    assert value != accepted
    common = {"output_dir": str(tmp_path), "report_to": "none"}
    TrainingArguments(**common, **COMPANIONS.get(name, {}), **{name: value})  # valid outside the cycle
    CycleTrainingArguments(**common, **{name: accepted})
    with pytest.raises(ConfigError) as raised:
        CycleTrainingArguments(**common, **{name: value})
    message = str(raised.value)
    assert "\n" not in message, f"not one line: {message!r}"
    assert re.search(rf"\b{re.escape(name)}\b", message), f"{name!r} not named in: {message!r}"


def test_aliases_match_the_source() -> None:
    source = {f.name: alias_target(f) for f in dataclasses.fields(CycleTrainingArguments) if is_alias(f)}
    assert ALIASES == source


@pytest.mark.parametrize("name", sorted(ALIASES))
def test_alias_lands_on_an_honoured_field(name: str, tmp_path: Path) -> None:
    target = ALIASES[name]
    value, expected = ALIAS_VALUES[name]
    common = {"output_dir": str(tmp_path), "report_to": "none"}
    if target is None:
        with pytest.warns(FutureWarning, match=name):
            args = CycleTrainingArguments(**common, **{name: value})
        assert getattr(args, name) is None
        return
    assert target in HONOURED, f"alias {name!r} maps onto {target!r}, which is not HONOURED"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        args = CycleTrainingArguments(**common, **{name: value})
    assert getattr(args, target) == expected
    assert getattr(args, name) is None


def test_the_source_reader_counts_use_and_not_validation() -> None:
    """The checks above can fail: the reader sees each way of reading a field, and not a check."""
    reads = _scan(
        """
SIDES = ("A", "B")

class CycleTrainingArguments:
    def __post_init__(self):
        check_int("only_checked", self.only_checked, 1)
        for side in SIDES:
            getattr(self, f"checked_{side}")

    def settings(self, side):
        return getattr(self, f"per_side_{side}")

def build(args, model):
    for key in ("alpha", "beta"):
        getattr(args, f"ddp_{key}", None)
    helper(None, args, "by_name", None)
    model.not_a_field
    return args.plain, model.args.nested, getattr(args, "constant")

class Trainer:
    def _validate(self):
        return self.args.validated
"""
    )
    assert _reads_in(reads, "") == {
        "per_side_A",
        "per_side_B",
        "ddp_alpha",
        "ddp_beta",
        "by_name",
        "plain",
        "nested",
        "constant",
    }
    assert _reads_in(reads, "CycleTrainingArguments.settings") == {"per_side_A", "per_side_B"}
    assert "CycleTrainingArguments.__post_init__" in reads.defined
