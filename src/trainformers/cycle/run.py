"""The cycle run file: `trainformers cycle CONFIG.yaml [--section.key VALUE ...]`.

Sections (defaults < file < command line, as for `trainformers train`):

    model_A:   a `model` section (ModelSection): a pretrained name/path or a DecoderLM preset
    model_B:   the same for model B; left out: a copy of model A (or, with training.use_macct
               and a `peft` section, adapter B on the one base)
    data:      CycleDataSection: the task (demo, translation, ner, unpaired files)
    training:  CycleTrainingArguments
    peft:      LoRA options: MACCT when training.use_macct is true, else one adapter per model

A model without `name_or_path` is a new DecoderLM trained from scratch; its tokenizer is then
trained on the run's texts (both domains) and shared, so the causal+causal fast path applies.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .. import checkpoint as ckpt
from ..allocator import apply_malloc_policy
from ..config import DataSection, ModelSection, RunConfig, YamlDumper, merge_sections, parse_overrides, read_yaml
from ..errors import ConfigError
from .config import CYCLE_SECTIONS, CycleDataSection, CycleTrainingArguments
from .tasks import CycleTaskData

__all__ = ["CycleDataSection", "CycleRunConfig", "build_cycle_data", "load_cycle_config", "run_cycle"]


@dataclass
class CycleRunConfig:
    model_A: ModelSection = field(default_factory=ModelSection)
    model_B: ModelSection | None = None
    data: CycleDataSection = field(default_factory=CycleDataSection)
    training: CycleTrainingArguments = field(default_factory=lambda: CycleTrainingArguments(output_dir="runs/cycle"))
    peft: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model_A": dataclasses.asdict(self.model_A)}
        if self.model_B is not None:
            out["model_B"] = dataclasses.asdict(self.model_B)
        out["data"] = dataclasses.asdict(self.data)
        out["training"] = self.training.to_dict()
        if self.peft:
            out["peft"] = dict(self.peft)
        return out

    def to_yaml(self) -> str:
        return yaml.dump(self.to_dict(), Dumper=YamlDumper, sort_keys=False, allow_unicode=True)


def load_cycle_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> CycleRunConfig:
    """Read a cycle run file and apply `--section.key VALUE` overrides.

    Raises:
        ConfigError: an unknown section or key, a wrong type, or any validation error.
    """
    merged: dict[str, dict[str, Any]] = {name: {} for name in CYCLE_SECTIONS}
    if path is not None:
        merge_sections(merged, read_yaml(path), f"'{path}'", CYCLE_SECTIONS)
    raw_overrides = parse_overrides(overrides)
    merge_sections(merged, raw_overrides, "the command line", CYCLE_SECTIONS)
    training = dict(merged["training"])
    training.setdefault("output_dir", "runs/cycle")
    return CycleRunConfig(
        model_A=ModelSection(**merged["model_A"]),
        model_B=ModelSection(**merged["model_B"]) if merged["model_B"] else None,
        data=CycleDataSection(**merged["data"]),
        training=CycleTrainingArguments(**training),
        peft=merged["peft"] or None,
    )


def _load_texts(files: str, column: str) -> Any:
    from ..data.sources import load_source

    dataset = load_source(files)
    if column not in dataset.column_names:
        raise ConfigError(
            f"'{files}' has no column '{column}' (columns {dataset.column_names}); set training.text_field_A/B"
        )
    return dataset


def build_cycle_data(config: CycleRunConfig) -> CycleTaskData:
    """The unpaired sets (and paired sets when the task has them) of the run file's `data` section."""
    data, args = config.data, config.training
    if data.task == "demo":
        from .demo_data import build_demo_data

        return build_demo_data(dict(data.options))
    if data.task in ("translation", "ner"):
        from ..data.sources import load_source
        from .tasks import NERTask, TranslationTask

        task = TranslationTask(dict(data.options)) if data.task == "translation" else NERTask(dict(data.options))
        return task.build(load_source(data.source, split=data.split))
    paired = {name: load_source_paired(getattr(data, name), args) for name in ("paired_train", "paired_eval")}
    return CycleTaskData(
        unpaired_A=_load_texts(data.train_A, args.text_field_A),
        unpaired_B=_load_texts(data.train_B, args.text_field_B),
        paired_eval=paired["paired_eval"],
        paired_train=paired["paired_train"],
    )


def load_source_paired(files: str | None, args: CycleTrainingArguments) -> Any:
    if files is None:
        return None
    from ..data.sources import load_source

    dataset = load_source(files)
    missing = [c for c in (args.paired_field_A, args.paired_field_B) if c not in dataset.column_names]
    if missing:
        raise ConfigError(f"'{files}' lacks column(s) {missing}; set training.paired_field_A / paired_field_B")
    return dataset


def _build_model(run: RunConfig, tokenizer: Any) -> Any:
    """`run.build_model`, except that a pretrained encoder-decoder loads as a seq2seq model."""
    from ..run import build_model

    name = run.model.name_or_path
    if name:
        from transformers import AutoConfig, AutoModelForSeq2SeqLM

        if getattr(
            AutoConfig.from_pretrained(name, trust_remote_code=run.model.trust_remote_code), "is_encoder_decoder", False
        ):
            return AutoModelForSeq2SeqLM.from_pretrained(name, trust_remote_code=run.model.trust_remote_code)
    return build_model(run, tokenizer)


def _texts(dataset: Any, column: str) -> list[str]:
    return [str(t) for t in dataset[column]] if dataset is not None and column in dataset.column_names else []


def run_cycle(config: CycleRunConfig) -> dict[str, Any]:
    """Build data, tokenizer(s) and models from the run file, cycle-train, evaluate, save.

    Returns a dict with the final evaluation metrics, the TrainOutput metrics and the output dir.
    """
    from ..run import RunFiles, obtain_tokenizer
    from .trainer import CycleTrainer

    args = config.training
    apply_malloc_policy(args.cpu_malloc, cli=True)  # before data and weights: 'auto' is 'speed' here
    start = time.perf_counter()
    # the command line keeps the strict rule: a directory with any earlier run is refused
    ckpt.check_output_dir(
        args.output_dir, resuming=bool(args.resume_from_checkpoint), overwrite=args.overwrite_output_dir
    )
    task = build_cycle_data(config)
    tf_a, tf_b = "text", "text"
    texts = _texts(task.unpaired_A, tf_a) + _texts(task.unpaired_B, tf_b)
    run_a = RunConfig(
        model=config.model_A,
        data=DataSection(max_length=min(args.max_seq_length, config.model_A.max_position_embeddings)),
        training=args,
    )
    tok_a, unsaved_a = obtain_tokenizer(run_a, texts)  # a tokenizer trained here is written by RunFiles
    unsaved = [(tok_a, unsaved_a)]
    model_a = _build_model(run_a, tok_a)
    models: Any = model_a
    tokenizers: Any = tok_a
    if config.model_B is not None and not args.use_macct:
        run_b = RunConfig(
            model=config.model_B,
            data=DataSection(max_length=min(args.max_seq_length, config.model_B.max_position_embeddings)),
            training=args,
        )
        own_tokenizer = config.model_B.name_or_path or config.model_B.tokenizer
        tok_b, unsaved_b = obtain_tokenizer(run_b, texts) if own_tokenizer else (tok_a, None)
        unsaved.append((tok_b, unsaved_b))
        models = {"A": model_a, "B": _build_model(run_b, tok_b)}
        tokenizers = {"A": tok_a, "B": tok_b}
    paired_eval = task.paired_eval
    eval_sets: dict[str, Any] = {}
    if paired_eval is not None and len(paired_eval):
        from datasets import Dataset

        eval_sets = {
            "eval_dataset_A": Dataset.from_dict({args.text_field_A: list(paired_eval[args.paired_field_A])}),
            "eval_dataset_B": Dataset.from_dict({args.text_field_B: list(paired_eval[args.paired_field_B])}),
        }
    needs_paired = args.warmup_paired_steps or args.paired_mix_every
    trainer = CycleTrainer(
        args,
        models=models,
        tokenizers=tokenizers,
        train_dataset_A=task.unpaired_A,
        train_dataset_B=task.unpaired_B,
        peft_configs=copy.deepcopy(config.peft) if config.peft else None,
        paired_dataset=task.paired_train if needs_paired else None,
        paired_eval_dataset=paired_eval if (paired_eval is not None and len(paired_eval)) else None,
        **eval_sets,
    )
    out = Path(args.output_dir)
    trainer.add_callback(RunFiles({"cycle_config.yaml": config.to_yaml()}, unsaved))  # once every check passed
    trainer.tracker_sections = config.to_dict()  # every section's settings go to the trackers
    report, args.report_at_end = args.report_at_end, False  # written once, below, with the final evaluation
    try:
        train_output = trainer.train()
    finally:
        args.report_at_end = report
    metrics = trainer.evaluate() if eval_sets or trainer.paired_eval_dataset is not None else {}
    with ckpt.atomic_checkpoint(
        out / "final", is_main=args.should_save, barrier=trainer.accelerator.wait_for_everyone
    ) as tmp:
        trainer.save_model(str(tmp))  # renamed into final/ when whole, as a checkpoint
    from ..report import report_at_end

    report_at_end(trainer)  # report.png + report.md, unless report_at_end is off
    return {
        "metrics": metrics,
        "train": train_output.metrics,
        "output_dir": out,
        "runtime": time.perf_counter() - start,
    }
