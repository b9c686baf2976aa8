"""Model cards: `Trainer.create_model_card(...)` writes `<output_dir>/README.md` for the Hub.

The card has a YAML metadata header (language, license, tags, base_model, datasets,
model-index), a short description, the training hyperparameters, a results table from the log
history, the framework versions and the run report's picture. Works for `Trainer` and
`CycleTrainer` alike by duck typing: `.args`, `.state`, and `.model` or `.models`.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import re
from pathlib import Path
from typing import Any

import yaml

from .report import LOG_FILE, REPORT_FILE, config_diff, format_value, is_eval_metric, write_report

__all__ = ["CARD_NAME", "FRAMEWORKS", "create_model_card", "framework_versions"]

CARD_NAME = "README.md"
FRAMEWORKS = ("trainformers", "transformers", "torch", "accelerate", "peft", "datasets", "tokenizers")
TASK_NAMES = {
    "text-generation": "Causal Language Modeling",
    "text2text-generation": "Sequence-to-sequence Language Modeling",
    "text-classification": "Text Classification",
    "token-classification": "Token Classification",
    "question-answering": "Question Answering",
}
MAX_TABLE_ROWS = 50  # longer histories are thinned evenly, the last row always kept
# Settings the hyperparameter list names itself; config_diff adds the other changed ones.
_LISTED = frozenset({
    "learning_rate", "per_device_train_batch_size", "per_device_eval_batch_size", "seed", "gradient_accumulation_steps",
    "optim", "adam_beta1", "adam_beta2", "adam_epsilon", "optim_args", "weight_decay", "lr_scheduler_type",
    "warmup_steps", "num_train_epochs", "max_steps", "bf16", "fp16", "label_smoothing_factor", "max_grad_norm",
})  # fmt: skip

logger = logging.getLogger(__name__)


def create_model_card(
    trainer: Any,
    language: str | list[str] | None = None,
    license: str | None = None,
    tags: str | list[str] | None = None,
    model_name: str | None = None,
    finetuned_from: str | None = None,
    tasks: str | list[str] | None = None,
    dataset_tags: str | list[str] | None = None,
    dataset: str | list[str] | None = None,
    dataset_args: str | list[str] | None = None,
) -> Path:
    """Write a model card, `README.md`, into `trainer.args.output_dir` (HF `Trainer` semantics).

    Args:
        trainer: A `Trainer` or `CycleTrainer` (anything with `.args`, `.state` and `.model`
            or `.models`), usually after `train()`.
        language: Language code(s) of the model, for the metadata.
        license: License identifier (e.g. 'apache-2.0').
        tags: Extra Hub tags; 'trainformers' is always added.
        model_name: The card's title and model-index name; default `hub_model_id` or the
            output directory's name.
        finetuned_from: The base model's Hub id; default the model config's `_name_or_path`
            (or the PEFT base model) when it is not a local path.
        tasks: Task type(s) (e.g. 'text-generation'); default inferred from the model class.
        dataset_tags: Hub dataset id(s) trained on.
        dataset: Dataset name(s) for the description and model-index (default `dataset_tags`).
        dataset_args: Dataset configuration name(s) (e.g. 'wikitext-2-raw-v1').

    Returns:
        The path of the card. On processes other than the main one nothing is written.
    """
    args, history = trainer.args, list(trainer.state.log_history)
    out = Path(args.output_dir)
    models = _models(trainer)
    hub_id = getattr(args, "hub_model_id", None)
    model_name = model_name or (hub_id.split("/")[-1] if hub_id else out.resolve().name)
    base = finetuned_from if finetuned_from is not None else _base_model(models)
    task_list = _as_list(tasks) or list(dict.fromkeys(t for t in map(_task, models.values()) if t))
    dataset_tags, dataset_args = _as_list(dataset_tags), _as_list(dataset_args)
    datasets = _as_list(dataset) or dataset_tags
    final_eval = _final_eval(history)
    path = out / CARD_NAME
    if hasattr(trainer, "is_world_process_zero") and not trainer.is_world_process_zero():
        return path

    report = _write_report(out, args)
    meta = _metadata(
        model_name, language, license, tags, base, task_list, dataset_tags, datasets, dataset_args, final_eval
    )
    sections = [
        _description(model_name, base, datasets, models, final_eval),
        _hyperparameters(trainer, models, out),
        _results(history, report),
        "## Framework versions\n\n" + "\n".join(f"- {name} {v}" for name, v in framework_versions().items()),
    ]
    header = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)
    text = f"---\n{header}---\n\n" + "\n\n".join(sections) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    from .state import atomic_write_text

    atomic_write_text(path, text)
    return path


def framework_versions() -> dict[str, str]:
    """Installed versions of the libraries a trained model depends on (missing ones left out)."""
    found = {}
    for name in FRAMEWORKS:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def _as_list(value: str | list[str] | tuple[str, ...] | None) -> list[str]:
    return [] if value is None else [value] if isinstance(value, str) else list(value)


def _models(trainer: Any) -> dict[str, Any]:
    """`{"": model}` for a Trainer, `{"A": ..., "B": ...}` for a CycleTrainer; unwrapped from DDP/compile."""
    found = getattr(trainer, "models", None)
    found = dict(found) if isinstance(found, dict) else {"": trainer.model}
    accel = getattr(trainer, "accelerator", None)
    if accel is not None:
        found = {side: accel.unwrap_model(model) for side, model in found.items()}
    return found


def _base_model(models: dict[str, Any]) -> str | None:
    """The Hub id the (first) model was loaded from, or None when trained from scratch or local."""
    for model in models.values():
        peft = getattr(model, "peft_config", None)
        name = None
        if isinstance(peft, dict) and peft:
            name = getattr(next(iter(peft.values())), "base_model_name_or_path", None)
        if not name:
            name = getattr(getattr(model, "config", None), "_name_or_path", None)
        if isinstance(name, str) and name and not Path(name).exists():
            return name
    return None


def _task(model: Any) -> str | None:
    if hasattr(model, "get_base_model"):  # a PeftModel
        model = model.get_base_model()
    name, config = type(model).__name__, getattr(model, "config", None)
    if getattr(config, "is_encoder_decoder", False) or "Seq2Seq" in name or "ConditionalGeneration" in name:
        return "text2text-generation"
    for part, task in (
        ("CausalLM", "text-generation"),
        ("DecoderLM", "text-generation"),
        ("SequenceClassification", "text-classification"),
        ("TokenClassification", "token-classification"),
        ("QuestionAnswering", "question-answering"),
    ):
        if part in name:
            return task
    return None


def _final_eval(history: list[dict[str, Any]]) -> tuple[Any, dict[str, float]]:
    """`(step, {metric: value})` of the last evaluation; several rows logged at that step are merged."""
    rows = [row for row in history if any(is_eval_metric(key) for key in row)]
    if not rows:
        return None, {}
    step = rows[-1].get("step")
    metrics: dict[str, float] = {}
    for row in rows:
        if row.get("step") == step:
            metrics.update({k: v for k, v in row.items() if is_eval_metric(k) and isinstance(v, (int, float))})
    return step, metrics


def _pretty(key: str) -> str:
    """'eval_loss' -> 'Loss', 'eval_A_to_B_exact_match' -> 'A To B Exact Match' (HF's card style)."""
    name = key.removeprefix("eval_")
    return " ".join(part[:1].upper() + part[1:] for part in name.split("_"))


def _metadata(
    model_name: str, language: Any, license: str | None, tags: Any, base: str | None, tasks: list[str],
    dataset_tags: list[str], datasets: list[str], dataset_args: list[str], final_eval: tuple[Any, dict[str, float]],
) -> dict[str, Any]:  # fmt: skip
    meta: dict[str, Any] = {"library_name": "transformers"}
    if language:
        meta["language"] = language if isinstance(language, str) else list(language)
    if license:
        meta["license"] = license
    if base:
        meta["base_model"] = base
    meta["tags"] = list(dict.fromkeys(["trainformers", *_as_list(tags)]))
    if dataset_tags:
        meta["datasets"] = dataset_tags
    metrics = [{"type": key.removeprefix("eval_"), "value": float(value), "name": _pretty(key)}
               for key, value in final_eval[1].items()]  # fmt: skip
    results = []
    # The Hub rejects a result without task, dataset or metrics: only complete ones are listed.
    if metrics and (datasets or dataset_tags):
        for task in tasks:
            data: dict[str, Any] = {"name": (datasets or dataset_tags)[0], "type": (dataset_tags or datasets)[0]}
            if dataset_args:
                data["args"] = dataset_args[0]
            task_info = {"type": task, "name": TASK_NAMES.get(task, task)}
            results.append({"task": task_info, "dataset": data, "metrics": metrics})
    meta["model-index"] = [{"name": model_name, "results": results}]
    return meta


def _description(
    model_name: str, base: str | None, datasets: list[str], models: dict[str, Any], final_eval: tuple[Any, dict]
) -> str:
    on = f" on the {', '.join(datasets)} dataset{'s' if len(datasets) > 1 else ''}" if datasets else ""
    origin = f"fine-tuned from [{base}](https://huggingface.co/{base})" if base else "trained from scratch"
    lines = [f"# {model_name}", "", f"This model was {origin}{on} with trainformers."]
    if set(models) - {""}:
        lines[-1] = (
            f"A pair of models ({', '.join(f'`{side}/`' for side in models)}) {origin}{on} with cycle consistency "
            "(trainformers' CycleTrainer): `A` maps domain A to B, `B` maps B to A."
        )
    step, metrics = final_eval
    if metrics:
        lines += ["", f"It achieves the following results on the evaluation set (step {step}):"]
        lines += [f"- {_pretty(key)}: {format_value(float(value))}" for key, value in metrics.items()]
    return "\n".join(lines)


def _hyperparameters(trainer: Any, models: dict[str, Any], out: Path) -> str:
    args = trainer.args
    accel = getattr(trainer, "accelerator", None)
    devices = getattr(accel, "num_processes", 1) if accel is not None else 1
    accumulation = args.gradient_accumulation_steps
    items: list[tuple[str, Any]] = [
        ("learning_rate", args.learning_rate),
        ("train_batch_size", args.per_device_train_batch_size),
        ("eval_batch_size", args.per_device_eval_batch_size),
        ("seed", args.seed),
    ]
    if devices > 1:
        kind = str(getattr(accel, "distributed_type", "multi-device"))
        items += [("distributed_type", kind), ("num_devices", devices)]
    if accumulation > 1:
        items.append(("gradient_accumulation_steps", accumulation))
    if devices * accumulation > 1:
        items.append(("total_train_batch_size", args.per_device_train_batch_size * devices * accumulation))
    optimizer = str(args.optim)
    if "adam" in optimizer:
        optimizer += f" with betas=({args.adam_beta1},{args.adam_beta2}) and epsilon={args.adam_epsilon}"
    if args.optim_args:
        optimizer += f" and optimizer_args={args.optim_args}"
    items.append(("optimizer", optimizer))
    if args.weight_decay:
        items.append(("weight_decay", args.weight_decay))
    items.append(("lr_scheduler_type", args.lr_scheduler_type))
    if args.warmup_steps:
        items.append(("lr_scheduler_warmup_steps", args.warmup_steps))
    items.append(("training_steps", args.max_steps) if args.max_steps > 0 else ("num_epochs", args.num_train_epochs))
    asked = "bf16" if args.bf16 else "fp16" if args.fp16 else "no"
    precision = (
        getattr(getattr(trainer, "accelerator", None), "mixed_precision", None) or asked
    )  # after any fp32 fallback
    if precision in ("bf16", "fp16"):
        items.append(("mixed_precision_training", f"Native AMP ({precision})"))
    if args.label_smoothing_factor:
        items.append(("label_smoothing_factor", args.label_smoothing_factor))
    items.append(("max_grad_norm", args.max_grad_norm))
    lines = ["## Training procedure", "", "### Training hyperparameters", "",
             "The following hyperparameters were used during training:"]  # fmt: skip
    lines += [f"- {name}: {_text(value)}" for name, value in items]
    source, changes = config_diff(out, training_args=args)
    others = [(key, value) for key, value, _ in changes if key.split(".", 1)[-1] not in _LISTED]
    if others:
        lines += ["", f"Other settings that differ from the defaults (from {source}):"]
        lines += [f"- {key}: {_text(value)}" for key, value in others]
    peft = _peft_settings(trainer, models)
    if peft:
        lines += ["", "### PEFT", ""] + [f"- {name}: {_text(value)}" for name, value in peft]
    return "\n".join(lines)


def _peft_settings(trainer: Any, models: dict[str, Any]) -> list[tuple[str, Any]]:
    """The adapter settings of PEFT-wrapped models, else of the trainer's `peft_config` (a dict or config)."""
    configs: dict[str, Any] = {}
    for side, model in models.items():
        for adapter, config in (getattr(model, "peft_config", None) or {}).items():
            configs[f"{side}/{adapter}".strip("/")] = config
    if not configs and getattr(trainer, "peft_config", None):
        configs = {"": trainer.peft_config}
    wanted = ("peft_type", "method", "r", "lora_alpha", "lora_dropout", "target_modules", "modules_to_save", "use_dora")
    found = []
    for name, config in configs.items():
        values = config if isinstance(config, dict) else config.to_dict() if hasattr(config, "to_dict") else {}
        for key in wanted:
            if values.get(key) is not None:
                value = values[key]
                value = sorted(value) if isinstance(value, (set, frozenset)) else value
                found.append((f"{name}.{key}" if name else key, getattr(value, "value", value)))
    return found


def _results(history: list[dict[str, Any]], report: str | None) -> str:
    """HF's results table: one row per evaluation with the latest training loss before it."""
    sides = sorted({k for row in history for k in row if re.fullmatch(r"loss_[A-Z]", k)})  # CycleTrainer
    train_keys = ["loss", *sides]
    eval_rows = [row for row in history if any(is_eval_metric(key) for key in row)]
    metric_keys = list(dict.fromkeys(k for row in eval_rows for k in row if is_eval_metric(k)))
    if "eval_loss" in metric_keys:
        metric_keys.insert(0, metric_keys.pop(metric_keys.index("eval_loss")))
    rows = eval_rows or [row for row in history if "loss" in row]
    lines = ["### Training results", ""]
    if not rows:
        lines.append("No training or evaluation results were logged.")
    else:
        names = ["Training Loss" if k == "loss" else f"Training Loss {k[-1]}" for k in train_keys]
        names += ["Epoch", "Step"] + ["Validation Loss" if k == "eval_loss" else _pretty(k) for k in metric_keys]
        lines += ["| " + " | ".join(names) + " |", "|" + ":---:|" * len(names)]
        for row in _thin(rows):
            latest = {k: _latest(history, k, row.get("step")) for k in train_keys}
            cells = ["No log" if latest[k] is None else format_value(float(latest[k])) for k in train_keys]
            epoch = row.get("epoch")
            epoch = "–" if epoch is None else format_value(round(epoch, 4) if isinstance(epoch, float) else epoch)
            cells += [epoch, str(row.get("step"))]
            cells += ["–" if row.get(k) is None else format_value(row[k]) for k in metric_keys]
            lines.append("| " + " | ".join(cells) + " |")
    if report:
        lines += ["", f"![Training curves: loss, eval metrics, learning rate, grad norm, throughput]({report})"]
    return "\n".join(lines)


def _latest(history: list[dict[str, Any]], key: str, step: Any) -> float | None:
    values = [row[key] for row in history if key in row and (step is None or row.get("step", 0) <= step)]
    return values[-1] if values else None


def _thin(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if len(rows) <= MAX_TABLE_ROWS:
        return rows
    stride = len(rows) / MAX_TABLE_ROWS
    return [rows[int(i * stride)] for i in range(MAX_TABLE_ROWS - 1)] + [rows[-1]]


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return format_value(value) if isinstance(value, (int, float)) else json.dumps(value, default=str)


def _write_report(out: Path, args: Any) -> str | None:
    """Refresh the run report for the card; return the picture's relative link, or None."""
    if (out / LOG_FILE).is_file():
        try:
            write_report(out, training_args=args)
        except Exception as err:  # noqa: BLE001 - a card without a picture beats no card
            logger.warning("model card without the report plot: %s: %s", type(err).__name__, err)
    return REPORT_FILE if (out / REPORT_FILE).is_file() else None
