"""`CycleTrainer`: two models (or two LoRA adapters on one base) teach each other from unpaired data.

Model A translates domain A -> B, model B translates B -> A. One cycle step (`_train_loop`):

    for T in (A, B):                                 # the model being trained; G is the other one
        rows = next window of real texts of T's target domain    (its own seeded stream)
        for each micro-batch of rows:
            synthetic = G.generate(rows)             # eval mode, no grad, KV cache, bounded length
            batch = (synthetic -> real rows) for T   # token fast path or text path (cycle.inputs)
        n = label tokens of the whole window (all ranks)          # the one normaliser
        for each micro-batch: loss = token-sum / n; backward      # no DDP sync until the last
        clip; T.optimizer.step(); T.scheduler.step()
    global_step += 1; callbacks decide: log / evaluate / save / stop

Supervised paired steps (`warmup_paired_steps`, `paired_mix_every`) replace the generation by a
paired batch. In MACCT mode both sides share one `PeftModel`; `use_adapter` switches between the
adapters 'A' and 'B' (and restores the previous one, even when a step raises).

Everything else comes from the `Trainer` building blocks: optimizers and param groups (`optim`),
the loss (`losses.lm_loss`), Accelerate set-up (`accel`), checkpoints (`checkpoint`), callbacks and
the `TrainerState` (`callbacks`, `state`).
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers.trainer_utils import EvalPrediction, TrainOutput

from .. import checkpoint as ckpt
from ..accel import build_accelerator
from ..callbacks import CallbackHandler, TrainerCallback, default_callbacks
from ..config import TrainingArguments
from ..errors import CheckpointError, ConfigError, DataError
from ..loop_utils import (
    OptimizerStep,
    after_evaluation,
    is_plateau,
    prepare_model,
    scalar_config,
    seed_everything,
    unwrap_peft,
)
from ..losses import IGNORE_INDEX, count_label_items, lm_loss
from ..optim import create_optimizer, create_scheduler
from ..state import TrainerControl, TrainerState
from .config import CycleTrainingArguments, resolve_callable
from .generation import generate_ids
from .inputs import CycleBatch, CycleBatchBuilder, tokenizers_compatible
from .metrics import text_metrics
from .streams import DomainStream, rank_rows

__all__ = ["CycleTrainer"]

SIDES = ("A", "B")
CYCLE_STATE_NAME = "cycle_state.json"


def other(side: str) -> str:
    return "B" if side == "A" else "A"


@dataclass
class CycleSide:
    """One model of the pair: what it is, how it reads its input, and how it is trained.

    In MACCT mode both sides hold the same `model` (the `PeftModel`) and differ in `adapter`.
    """

    name: str
    model: nn.Module
    tokenizer: Any
    kind: str  # "causal" or "seq2seq"
    builder: CycleBatchBuilder
    adapter: str | None = None
    shift: bool = True
    optimizer: Any = None
    scheduler: Any = None
    wrapped: nn.Module | None = None  # after accelerator.prepare (DDP)
    params: list[nn.Parameter] = field(default_factory=list)
    stepper: OptimizerStep | None = None  # clip, step, zero_grad (after accelerator.prepare)


def _is_peft_model(model: Any) -> bool:
    return isinstance(getattr(model, "peft_config", None), Mapping) and hasattr(model, "set_adapter")


def _load_model(name: str) -> nn.Module:
    """A model name or path: seq2seq or causal, decided by its config."""
    from transformers import AutoConfig, AutoModelForSeq2SeqLM

    from ..models.loading import load_pretrained

    try:
        config = AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"models={name!r} cannot be loaded ({str(err).splitlines()[0]}); give a local path or a model object"
        ) from None
    if getattr(config, "is_encoder_decoder", False):
        return AutoModelForSeq2SeqLM.from_pretrained(name)
    return load_pretrained(name)


def _peft_config_for(peft_configs: Any, side: str) -> Any:
    if isinstance(peft_configs, Mapping) and (set(peft_configs) & set(SIDES)):
        if set(peft_configs) != set(SIDES):
            raise ConfigError(
                f"peft_configs as a dict per adapter must have exactly the keys 'A' and 'B', got {sorted(peft_configs)}; "
                "or pass one config for both"
            )
        return peft_configs[side]
    return peft_configs


def resolve_models(models: Any, peft_configs: Any, use_macct: bool | None) -> tuple[dict[str, nn.Module], bool]:
    """The two models ({'A', 'B'}) and whether they are one MACCT `PeftModel` with adapters A and B.

    Raises:
        ConfigError: for every contradiction (see the CycleTrainer docstring).
    """
    from ..models.peft import apply_peft

    if models is None:
        raise ConfigError(
            "CycleTrainer needs models=: a dict {'A': model_A_to_B, 'B': model_B_to_A}, one model, or a path"
        )
    if isinstance(models, Mapping):
        if set(models) != set(SIDES):
            raise ConfigError(
                f"models dict must have exactly the keys 'A' and 'B', got {sorted(map(str, models))}; "
                "write models={'A': model_A_to_B, 'B': model_B_to_A}"
            )
        if use_macct:
            raise ConfigError(
                "use_macct=True needs ONE base model, but models is a dict of two; pass models=base_model with "
                "peft_configs, or set use_macct=False"
            )
        pair = {s: _load_model(m) if isinstance(m, str) else m for s, m in models.items()}
        if pair["A"] is pair["B"]:
            raise ConfigError("models['A'] and models['B'] are the same object; pass one model to get two copies")
        if peft_configs is not None:
            pair = {s: apply_peft(m, _peft_config_for(peft_configs, s), echo=None) for s, m in pair.items()}
        return pair, False
    model = _load_model(models) if isinstance(models, str) else models
    if not isinstance(model, nn.Module):
        raise ConfigError(f"models must be a model, a dict of two or a path, got {type(model).__name__}")
    if _is_peft_model(model):
        names = list(model.peft_config)
        if set(SIDES) <= set(names):
            if use_macct is False:
                raise ConfigError(
                    "use_macct=False but models is one PeftModel with adapters 'A' and 'B'; drop use_macct"
                )
            if peft_configs is not None:
                raise ConfigError("the PeftModel already has adapters 'A' and 'B'; drop peft_configs")
            return {"A": model, "B": model}, True
        if use_macct:
            raise ConfigError(
                f"use_macct=True but the PeftModel's adapters are {names}, not 'A' and 'B'; add them "
                "(model.add_adapter('A', config), ...) or pass the base model with peft_configs"
            )
    if peft_configs is not None and use_macct is not False:
        peft_model = apply_peft(model, _peft_config_for(peft_configs, "A"), adapter_name="A", echo=None)
        apply_peft(peft_model, _peft_config_for(peft_configs, "B"), adapter_name="B", echo=None)
        return {"A": peft_model, "B": peft_model}, True
    if use_macct:
        raise ConfigError(
            "use_macct=True needs peft_configs (the LoRA settings of adapters A and B) or a PeftModel with adapters "
            "'A' and 'B'"
        )
    copy_b = copy.deepcopy(model)
    if peft_configs is not None:
        return {
            s: apply_peft(m, _peft_config_for(peft_configs, s), echo=None) for s, m in (("A", model), ("B", copy_b))
        }, False
    return {"A": model, "B": copy_b}, False


def resolve_tokenizers(tokenizers: Any, models: Any) -> dict[str, Any]:
    """{'A', 'B'} tokenizers; one without a pad token gets its EOS as pad (the usual choice for
    decoder-only models; pads are always masked out of the loss).

    Raises:
        ConfigError: no tokenizer, wrong dict keys, or a tokenizer with neither pad nor EOS token.
    """
    from transformers import AutoTokenizer

    if tokenizers is None:
        names = models if isinstance(models, Mapping) else {"A": models, "B": models}
        if not all(isinstance(names.get(s), str) for s in SIDES):
            raise ConfigError("CycleTrainer needs tokenizers= (one shared tokenizer or {'A': ..., 'B': ...})")
        tokenizers = {s: names[s] for s in SIDES}
    if isinstance(tokenizers, Mapping):
        if set(tokenizers) != set(SIDES):
            raise ConfigError(
                f"tokenizers dict must have exactly the keys 'A' and 'B', got {sorted(map(str, tokenizers))}; "
                "or pass one shared tokenizer"
            )
        pair = dict(tokenizers)
    else:
        pair = {"A": tokenizers, "B": tokenizers}
    pair = {s: AutoTokenizer.from_pretrained(t) if isinstance(t, str) else t for s, t in pair.items()}
    for side, tok in pair.items():
        if tok.pad_token_id is None:
            if tok.eos_token_id is None:
                raise ConfigError(
                    f"tokenizer {side} has neither a pad nor an EOS token; add one, e.g. "
                    "tokenizer.add_special_tokens({'eos_token': '</s>'}) (and resize the model's embeddings)"
                )
            tok.pad_token = tok.eos_token  # documented: pad = EOS, masked out of every loss
    return pair


def _as_dataset(data: Any, column: str) -> Any:
    """A plain list of strings becomes a one-column `datasets.Dataset`; anything else is kept."""
    if isinstance(data, (list, tuple)) and data and all(isinstance(t, str) for t in data):
        from datasets import Dataset

        return Dataset.from_dict({column: list(data)})
    return data


def _columns(dataset: Any) -> list[str] | None:
    names = getattr(dataset, "column_names", None)
    if isinstance(names, Mapping):
        raise DataError(f"a DatasetDict was given where one split is needed; pass e.g. dataset['{next(iter(names))}']")
    return list(names) if names is not None else None


def _get_rows(dataset: Any, indices: Sequence[int]) -> list[Any]:
    getitems = getattr(dataset, "__getitems__", None)
    if getitems is not None:
        return list(getitems(list(indices)))
    return [dataset[i] for i in indices]


class CycleTrainer:
    """Cycle-consistency training of model A (domain A -> B) and model B (B -> A) on unpaired data.

    Args:
        args: `CycleTrainingArguments` (a plain `TrainingArguments` is converted).
        models: a dict ``{"A": model_A_to_B, "B": model_B_to_A}``; one model (two independent copies
            are made, or with `peft_configs` one base with adapters A and B: MACCT); a `PeftModel`
            with adapters "A" and "B" (MACCT); or a model name/path. `args.use_macct` forces or
            forbids MACCT. Causal and seq2seq models mix freely.
        tokenizers: one shared tokenizer or ``{"A": ..., "B": ...}`` (a tokenizer's text is what
            its model reads). A tokenizer without a pad token gets its EOS token as pad.
        train_dataset_A, train_dataset_B: unpaired texts of each domain: a `datasets.Dataset` with
            a text column (`args.text_field_A/B`) or `input_ids`, or a list of strings.
        eval_dataset_A, eval_dataset_B: texts for the reconstruction loss (A -> B -> A, B -> A -> B).
        data_collator_A, data_collator_B: turn a list of rows into a list of texts, or into a dict
            with `input_ids` (+ `attention_mask`) in the domain's own tokenizer.
        callbacks: `TrainerCallback`s; every event also gets ``models``, ``optimizers`` and
            ``lr_schedulers`` dicts keyed by 'A'/'B' (``model`` is model A, for HF callbacks).
        peft_configs: a peft config (or run-file dict) for both adapters, or ``{"A": ..., "B": ...}``.
        compute_metrics: ``fn(EvalPrediction(predictions=texts, label_ids=reference_texts)) -> dict``,
            called per direction on `paired_eval_dataset`; keys are prefixed ``eval_A_to_B_``.
        paired_dataset: paired rows (`args.paired_field_A/B`) for supervised steps.
        paired_eval_dataset: paired rows for task metrics (`args.metrics`, `compute_metrics`).
        prepare_cycle_inputs: custom batch builder (see `CycleTrainingArguments.prepare_cycle_inputs`).
        model, tokenizer: aliases of `models` and `tokenizers`.

    Raises:
        ConfigError / DataError: a clear one-line message for every inconsistent combination.
    """

    def __init__(
        self,
        args: CycleTrainingArguments | None = None,
        models: Any = None,
        tokenizers: Any = None,
        train_dataset_A: Any = None,
        train_dataset_B: Any = None,
        eval_dataset_A: Any = None,
        eval_dataset_B: Any = None,
        data_collator_A: Callable | None = None,
        data_collator_B: Callable | None = None,
        callbacks: list[TrainerCallback | type[TrainerCallback]] | None = None,
        peft_configs: Any = None,
        compute_metrics: Callable[[EvalPrediction], dict] | None = None,
        *,
        paired_dataset: Any = None,
        paired_eval_dataset: Any = None,
        prepare_cycle_inputs: Callable | None = None,
        model: Any = None,
        tokenizer: Any = None,
    ) -> None:
        if args is None:
            args = CycleTrainingArguments(output_dir="cycle_output")
        elif not isinstance(args, CycleTrainingArguments):
            if not isinstance(args, TrainingArguments):
                raise ConfigError(f"args must be CycleTrainingArguments, got {type(args).__name__}")
            args = CycleTrainingArguments(**args.to_dict())
        self.args = args
        if model is not None:
            if models is not None:
                raise ConfigError("pass models= or its alias model=, not both")
            models = model
        if tokenizer is not None:
            if tokenizers is not None:
                raise ConfigError("pass tokenizers= or its alias tokenizer=, not both")
            tokenizers = tokenizer
        seed_everything(args)
        pair, self.macct = resolve_models(models, peft_configs, args.use_macct)
        toks = resolve_tokenizers(tokenizers, models)
        if self.macct and args.ddp_find_unused_parameters is None:
            args.ddp_find_unused_parameters = True  # the inactive adapter gets no gradient in a step
        self.accelerator = build_accelerator(args)
        self.trained = [s for s in SIDES if args.cycle_directions in ("both", s)]
        self.prepare_fn = resolve_callable("prepare_cycle_inputs", prepare_cycle_inputs or args.prepare_cycle_inputs)
        self.sides: dict[str, CycleSide] = {}
        prepared: set[int] = set()
        for s in SIDES:
            m, tok = pair[s], toks[s]
            if id(m) not in prepared:
                prepare_model(m, args, self.accelerator.device)
                prepared.add(id(m))
            base = unwrap_peft(m)
            kind = "seq2seq" if getattr(getattr(base, "config", None), "is_encoder_decoder", False) else "causal"
            builder = CycleBatchBuilder(
                tok,
                kind,
                prompt_template=getattr(args, f"prompt_template_{s}"),
                sep=args.sep_seq,
                max_length=args.max_seq_length,
                max_target_length=args.max_target_length,
                drop_empty=args.drop_empty_synthetic,
            )
            self.sides[s] = CycleSide(
                s, m, tok, kind, builder, adapter=s if self.macct else None, shift=kind == "causal"
            )
        self.collators = {"A": data_collator_A, "B": data_collator_B}
        self.train_datasets = {
            "A": _as_dataset(train_dataset_A, args.text_field_A),
            "B": _as_dataset(train_dataset_B, args.text_field_B),
        }
        self.eval_datasets = {
            "A": _as_dataset(eval_dataset_A, args.text_field_A),
            "B": _as_dataset(eval_dataset_B, args.text_field_B),
        }
        self.paired_dataset, self.paired_eval_dataset = paired_dataset, paired_eval_dataset
        self.compute_metrics = compute_metrics
        self._check_datasets()
        self.state = TrainerState(
            is_local_process_zero=self.accelerator.is_local_main_process,
            is_world_process_zero=self.accelerator.is_main_process,
        )
        self.control = TrainerControl()
        self.callback_handler = CallbackHandler(
            default_callbacks(args, self.accelerator) + list(callbacks or []), pair["A"], toks["A"], None, None
        )
        self._update_handler()
        self.control = self.callback_handler.on_init_end(args, self.state, self.control)

    # ---- set-up checks ----------------------------------------------------------------------

    def _needed_domains(self) -> list[str]:
        """Training model T reads real texts of the other domain (its targets)."""
        return sorted({other(t) for t in self.trained})

    def _check_datasets(self) -> None:
        args, given = self.args, {s: d for s, d in self.train_datasets.items() if d is not None}
        if given:
            for domain in self._needed_domains():
                if self.train_datasets[domain] is None:
                    trainer = other(domain)
                    raise DataError(
                        f"train_dataset_{domain} is missing: model {trainer} trains on real domain-{domain} texts "
                        f"(cycle_directions={args.cycle_directions!r}); pass train_dataset_{domain}=..."
                    )
        for kind, sets in (("train", self.train_datasets), ("eval", self.eval_datasets)):
            for s, ds in sets.items():
                if ds is None or self.collators[s] is not None:
                    continue
                cols, field_name = _columns(ds), getattr(args, f"text_field_{s}")
                if cols is not None and field_name not in cols and "input_ids" not in cols:
                    raise DataError(
                        f"{kind}_dataset_{s} has no column '{field_name}' (columns {cols}); set text_field_{s}=, "
                        f"tokenize it to input_ids, or pass data_collator_{s}"
                    )
                if hasattr(ds, "__len__") and len(ds) == 0:
                    raise DataError(f"{kind}_dataset_{s} is empty (0 rows)")
        for name, ds in (("paired_dataset", self.paired_dataset), ("paired_eval_dataset", self.paired_eval_dataset)):
            cols = _columns(ds) if ds is not None else None
            if cols is not None:
                missing = [c for c in (args.paired_field_A, args.paired_field_B) if c not in cols]
                if missing:
                    raise DataError(
                        f"{name} lacks column(s) {missing} (columns {cols}); set paired_field_A / paired_field_B"
                    )
        if (args.warmup_paired_steps or args.paired_mix_every) and self.paired_dataset is None:
            raise ConfigError(
                f"warmup_paired_steps={args.warmup_paired_steps} / paired_mix_every={args.paired_mix_every} need "
                "paired_dataset=...; pass it or set both to 0"
            )
        if args.metrics and self.paired_eval_dataset is None:
            raise ConfigError(f"metrics={args.metrics} need paired references: pass paired_eval_dataset=...")
        if args.eval_strategy != "no" and not (
            any(self.eval_datasets.values()) or self.paired_eval_dataset is not None
        ):
            raise DataError(
                f"eval_strategy={args.eval_strategy!r} but there is nothing to evaluate; pass eval_dataset_A/B or "
                "paired_eval_dataset, or set eval_strategy='no'"
            )

    def _update_handler(self) -> None:
        handler = self.callback_handler
        handler.model = self.sides["A"].model
        handler.optimizer, handler.lr_scheduler = (
            self.sides[self.trained[0]].optimizer,
            self.sides[self.trained[0]].scheduler,
        )
        handler.extra = {
            "models": {s: side.model for s, side in self.sides.items()},
            "optimizers": {s: side.optimizer for s, side in self.sides.items()},
            "lr_schedulers": {s: side.scheduler for s, side in self.sides.items()},
        }

    # ---- small public helpers --------------------------------------------------------------

    @property
    def models(self) -> dict[str, nn.Module]:
        return {s: side.model for s, side in self.sides.items()}

    def is_world_process_zero(self) -> bool:
        return self.accelerator.is_main_process

    def add_callback(self, callback: TrainerCallback | type[TrainerCallback]) -> None:
        self.callback_handler.add_callback(callback)

    def pop_callback(self, callback: TrainerCallback | type[TrainerCallback]) -> TrainerCallback | None:
        return self.callback_handler.pop_callback(callback)

    def remove_callback(self, callback: TrainerCallback | type[TrainerCallback]) -> None:
        self.callback_handler.remove_callback(callback)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Record a row in `state.log_history` and hand it to the callbacks (HF signature)."""
        self.control = self.callback_handler.log(self.args, self.state, self.control, logs)

    def _adapter(self, side: CycleSide) -> Any:
        """Inside: `side`'s adapter is the active (and only trainable) one; the previous comes back after."""
        if side.adapter is None:
            return nullcontext()
        from ..models.peft import use_adapter

        return use_adapter(side.model, side.adapter)

    def _bare(self, side: CycleSide) -> nn.Module:
        return self.accelerator.unwrap_model(side.wrapped) if side.wrapped is not None else side.model

    # ---- texts in, batches out --------------------------------------------------------------

    def _texts(self, domain: str, rows: list[Any]) -> list[str]:
        """The texts of domain rows: the collator's output, the text column, or decoded input_ids."""
        tok = self.sides[domain].tokenizer
        collate = self.collators[domain]
        if collate is not None:
            out = collate(rows)
            if isinstance(out, (list, tuple)) and all(isinstance(t, str) for t in out):
                return list(out)
            if isinstance(out, Mapping) and "input_ids" in out:
                ids, mask = out["input_ids"], out.get("attention_mask")
                rows_ids = [
                    (row[m.bool()] if mask is not None else row).tolist() if torch.is_tensor(row) else list(row)
                    for row, m in zip(ids, mask if mask is not None else ids)
                ]
                return [tok.decode(r, skip_special_tokens=True) for r in rows_ids]
            raise DataError(f"data_collator_{domain} must return a list of texts or a dict with input_ids")
        column = getattr(self.args, f"text_field_{domain}")
        texts = []
        for row in rows:
            if isinstance(row, str):
                texts.append(row)
            elif column in row:
                texts.append(str(row[column]))
            else:
                texts.append(tok.decode(list(row["input_ids"]), skip_special_tokens=True))
        return texts

    def _generate(self, side: CycleSide, texts: list[str], *, evaluation: bool = False) -> list[list[int]]:
        """`side`'s translation of `texts`: new ids in its own vocabulary (EOS and specials removed)."""
        args, s = self.args, side.name
        settings = args.generation_settings(s)
        if evaluation:  # metrics are measured on the deterministic output
            settings = {"do_sample": False, "num_beams": settings["num_beams"]}
        with self._adapter(side):
            return generate_ids(
                self._bare(side),
                side.builder,
                texts,
                settings,
                max_new_tokens=getattr(args, f"max_new_tokens_{s}"),
                ratio=getattr(args, f"max_new_tokens_ratio_{s}"),
                min_new_tokens=getattr(args, f"min_new_tokens_{s}"),
                device=self.accelerator.device,
                autocast=self.accelerator.autocast(),
            )

    def uses_fast_path(self, trained: str) -> bool:
        """Whether model `trained`'s batches are built from the generator's ids (no decode/re-encode)."""
        t, g = self.sides[trained], self.sides[other(trained)]
        return (
            self.prepare_fn is None and t.kind == g.kind == "causal" and tokenizers_compatible(t.tokenizer, g.tokenizer)
        )

    def build_batch(self, trained: str, sources: list[list[int]] | list[str], targets: list[str]) -> CycleBatch:
        """The training batch of model `trained`: sources are the other model's generated ids (or
        texts, for paired steps), targets real texts of the trained model's target domain."""
        t, g = self.sides[trained], self.sides[other(trained)]
        if sources and not isinstance(sources[0], str) and self.uses_fast_path(trained):
            return t.builder.from_token_lists([list(s) for s in sources], [t.builder.encode(x) for x in targets])
        texts = [s if isinstance(s, str) else g.tokenizer.decode(s) for s in sources]
        if self.prepare_fn is not None:
            out = self.prepare_fn(texts, list(targets), t.tokenizer, f"{trained}->{other(trained)}", self.args)
            if isinstance(out, CycleBatch):
                return out
            if not isinstance(out, Mapping) or "labels" not in out:
                raise DataError("prepare_cycle_inputs must return a dict of tensors with 'labels'")
            n = int(out["labels"].shape[0])
            return CycleBatch(dict(out), list(range(n)), 0)
        return t.builder.from_texts(texts, list(targets))

    # ---- the loss of one window -------------------------------------------------------------

    def _decoder_inputs(self, side: CycleSide, labels: torch.Tensor) -> torch.Tensor:
        """Teacher-forcing decoder input of an encoder-decoder: labels shifted right after the start id."""
        config = unwrap_peft(side.model).config
        start = getattr(config, "decoder_start_token_id", None)
        pad = config.pad_token_id if config.pad_token_id is not None else side.builder.pad_id
        start = start if start is not None else pad
        shifted = labels.new_full(labels.shape, pad)
        shifted[:, 1:] = labels[:, :-1]
        shifted[:, 0] = start
        return shifted.masked_fill(shifted == IGNORE_INDEX, pad)

    def _window_loss(
        self, side: CycleSide, model: nn.Module, batch: Mapping[str, torch.Tensor], n_items: torch.Tensor
    ) -> torch.Tensor:
        labels = batch["labels"]
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        if side.kind == "seq2seq":
            inputs["decoder_input_ids"] = self._decoder_inputs(side, labels)
        outputs = model(**inputs, use_cache=False)
        logits = outputs["logits"] if isinstance(outputs, Mapping) else outputs[0]
        return lm_loss(
            logits,
            labels,
            shift=side.shift,
            num_items_in_batch=n_items,
            label_smoothing=self.args.label_smoothing_factor,
        )

    def _dummy_batch(self, side: CycleSide) -> dict[str, torch.Tensor]:
        """One all-masked row: a rank whose rows were all dropped still joins the gradient all-reduce."""
        one = torch.tensor([[side.builder.eos_id]])
        return {"input_ids": one, "attention_mask": torch.ones_like(one), "labels": torch.full_like(one, IGNORE_INDEX)}

    def _train_window(
        self, side: CycleSide, batches: list[CycleBatch]
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Forward/backward every micro-batch of the window, then one optimizer step of `side`.

        Returns (this rank's share of the window's mean loss, grad norm); (None, None) when no row
        of the window survived (nothing to learn, no step taken)."""
        accel, world = self.accelerator, self.accelerator.num_processes
        device = accel.device
        runs: list[Mapping[str, torch.Tensor]] = [b for b in batches if b["input_ids"].numel()]
        if world > 1:
            runs = [b if b["input_ids"].numel() else self._dummy_batch(side) for b in batches]
        n_items = torch.zeros((), dtype=torch.long, device=device)
        for b in runs:
            n_items = n_items + count_label_items(b, shift=side.shift).to(device)
        if world > 1:
            n_items = accel.reduce(n_items, reduction="sum")
        if int(n_items) == 0:
            return None, None
        model = side.wrapped
        total = torch.zeros((), device=device)
        with self._adapter(side):
            model.train()
            for i, batch in enumerate(runs):
                batch = {k: v.to(device) for k, v in batch.items()}
                last = i == len(runs) - 1
                with accel.no_sync(model) if not last else nullcontext():
                    with accel.autocast():
                        loss = self._window_loss(side, model, batch, n_items)
                    # each rank holds its token sum / the global count; DDP averages, so undo the 1/W
                    side.stepper.backward(loss * world if world > 1 else loss)
                total += loss.detach()
                self.state.micro_step += 1
            grad_norm = None
            if self.args.max_grad_norm and self.args.max_grad_norm > 0:
                grad_norm = side.stepper.clip(self.args.max_grad_norm)
            side.stepper.step()
            if not side.stepper.skipped and not is_plateau(side.scheduler):
                side.scheduler.step()
            side.stepper.zero_grad()
        return total, grad_norm

    def _step_kind(self, step: int) -> str:
        args = self.args
        if step < args.warmup_paired_steps:
            return "paired"
        if args.paired_mix_every and (step - args.warmup_paired_steps + 1) % args.paired_mix_every == 0:
            return "paired"
        return "cycle"

    def _direction_step(self, trained: str, kind: str) -> dict[str, Any]:
        """One optimizer step of model `trained`: draw its window, build the batches, train."""
        args, accel = self.args, self.accelerator
        side, generator = self.sides[trained], self.sides[other(trained)]
        batch_size, ga = args.per_device_train_batch_size, args.gradient_accumulation_steps
        stream = self._streams["paired" if kind == "paired" else other(trained)]
        window = stream.next_window()
        batches, gen_time, dropped, rows_used = [], 0.0, 0, 0
        for micro in range(ga):
            rows_idx = rank_rows(window, micro, batch_size, accel.process_index, accel.num_processes)
            if kind == "paired":
                rows = _get_rows(self.paired_dataset, rows_idx)
                src_field, tgt_field = (
                    getattr(args, f"paired_field_{trained}"),
                    getattr(args, f"paired_field_{other(trained)}"),
                )
                batch = self.build_batch(trained, [str(r[src_field]) for r in rows], [str(r[tgt_field]) for r in rows])
            else:
                targets = self._texts(other(trained), _get_rows(self.train_datasets[other(trained)], rows_idx))
                start = time.perf_counter()
                sources = self._generate(generator, targets)
                gen_time += time.perf_counter() - start
                batch = self.build_batch(trained, sources, targets)
            dropped += batch.num_dropped
            rows_used += len(batch.kept)
            batches.append(batch)
        start = time.perf_counter()
        loss, grad_norm = self._train_window(side, batches)
        return {
            "loss": loss,
            "grad_norm": grad_norm,
            "gen_time": gen_time,
            "train_time": time.perf_counter() - start,
            "dropped": dropped,
            "rows": rows_used,
        }

    # ---- training ---------------------------------------------------------------------------

    def _create_optimizers(self, max_steps: int) -> None:
        for s in self.trained:
            side = self.sides[s]
            with self._adapter(side):  # MACCT: only this adapter is trainable while its groups are made
                side.optimizer = create_optimizer(side.model, self.args, self.accelerator.device)
                side.params = [p for g in side.optimizer.param_groups for p in g["params"]]
            side.scheduler = create_scheduler(side.optimizer, self.args, max_steps)

    def _prepare(self) -> None:
        """accelerator.prepare every model once (MACCT: the one PeftModel) with its optimizer(s)."""
        accel = self.accelerator
        if self.macct:
            model = self.sides["A"].model
            flags = [(p, p.requires_grad) for p in model.parameters()]
            for p in (p for s in self.trained for p in self.sides[s].params):
                p.requires_grad_(True)  # DDP registers what requires grad when it wraps: both adapters
            objs = accel.prepare(model, *[self.sides[s].optimizer for s in self.trained])
            for p, flag in flags:  # from here on `use_adapter` flags the active adapter per step
                p.requires_grad_(flag)
            wrapped, optimizers = objs[0], objs[1:]
            for s, opt in zip(self.trained, optimizers):
                self.sides[s].optimizer = opt
            for s in SIDES:
                self.sides[s].wrapped = wrapped
        else:
            for s in SIDES:
                side = self.sides[s]
                if s in self.trained:
                    side.wrapped, side.optimizer = accel.prepare(side.model, side.optimizer)
                else:
                    side.wrapped = side.model  # only generates
        for s in self.trained:
            side = self.sides[s]
            side.stepper = OptimizerStep(accel, side.optimizer, side.params)

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any) -> TrainOutput:
        """Run cycle training; resume from a checkpoint path, or the newest with True.

        Raises:
            CheckpointError: output_dir holds a run and neither resume nor overwrite was asked, or the
                checkpoint is missing or incomplete.
            DataError: a training dataset the directions need is missing.
        """
        if kwargs:
            raise ConfigError(f"CycleTrainer.train() got unknown arguments {sorted(kwargs)}")
        args = self.args
        if resume_from_checkpoint is None:
            resume_from_checkpoint = args.resume_from_checkpoint
        resume = ckpt.resolve_resume(resume_from_checkpoint, args.output_dir, model_dirs=("A", "B"))
        output_dir = Path(args.output_dir)
        ckpt.check_output_dir(output_dir, resuming=resume is not None, overwrite=args.overwrite_output_dir)
        for domain in self._needed_domains():
            if self.train_datasets[domain] is None:
                raise DataError(
                    f"train() needs train_dataset_{domain}: model {other(domain)} trains on real domain-{domain} texts; "
                    f"pass train_dataset_{domain}=..."
                )
        if resume is None and args.overwrite_output_dir and self.is_world_process_zero():
            ckpt.clear_run(output_dir)
        if any(getattr(self.sides[s], "wrapped", None) is not None for s in SIDES):
            raise ConfigError("CycleTrainer.train() was already called on this trainer; build a new CycleTrainer")
        return self._train_loop(resume)

    def _train_loop(self, resume: Path | None) -> TrainOutput:
        args, accel = self.args, self.accelerator
        window = args.gradient_accumulation_steps * args.per_device_train_batch_size * accel.num_processes
        seed = args.data_seed if args.data_seed is not None else args.seed
        self._streams: dict[str, DomainStream] = {}
        for i, domain in enumerate(self._needed_domains()):
            self._streams[domain] = DomainStream(
                len(self.train_datasets[domain]), seed + 1000 * i, window, f"train_dataset_{domain}"
            )
        if self.paired_dataset is not None and (args.warmup_paired_steps or args.paired_mix_every):
            self._streams["paired"] = DomainStream(len(self.paired_dataset), seed + 5000, window, "paired_dataset")
        domain_streams = [self._streams[d] for d in self._needed_domains()]
        steps_per_epoch = max(s.windows_per_epoch for s in domain_streams)
        max_steps = args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * steps_per_epoch)
        self._create_optimizers(max_steps)
        self._prepare()
        self._update_handler()

        state = self.state = TrainerState(
            is_local_process_zero=accel.is_local_main_process, is_world_process_zero=accel.is_main_process
        )
        state.max_steps, state.num_train_epochs = max_steps, math.ceil(max_steps / steps_per_epoch)
        state.train_batch_size = args.per_device_train_batch_size
        state.logging_steps = args.resolve_steps(args.logging_steps, max_steps)
        state.eval_steps = args.resolve_steps(args.eval_steps or args.logging_steps, max_steps)
        state.save_steps = args.resolve_steps(args.save_steps, max_steps)
        since = _Since(self.trained, accel.device)
        if resume is not None:
            self._load_checkpoint(resume, since)
            state = self.state
        handler = self.callback_handler
        if state.global_step == 0 and accel.trackers == [] and args.report_to:
            accel.init_trackers(args.run_name or "trainformers-cycle", config=scalar_config(args))
        self.control = handler.on_train_begin(args, state, self.control)
        if args.eval_on_start and state.global_step == 0:
            self._evaluate_during_training()
        start_time = since.start = time.perf_counter()
        start_step = state.global_step
        self.control = handler.on_epoch_begin(args, state, self.control)
        while state.global_step < max_steps:
            self.control = handler.on_step_begin(args, state, self.control)
            kind = self._step_kind(state.global_step)
            for s in self.trained:
                since.add(s, self._direction_step(s, kind))
            since.paired_steps += kind == "paired"
            state.global_step += 1
            since.steps += 1
            state.epoch = max(stream.progress for stream in domain_streams)
            self.control = handler.on_step_end(args, state, self.control)
            if self.control.should_log:
                self._log_training(since)
            if self.control.should_evaluate:
                self._evaluate_during_training()
            if self.control.should_save:
                self._save_checkpoint(since)
                self.control = handler.on_save(args, state, self.control)
                self.control.should_save = False
            if self.control.should_training_stop:
                break
        self.control = handler.on_epoch_end(args, state, self.control)
        if args.load_best_model_at_end and state.best_model_checkpoint is not None:
            self._load_models(Path(state.best_model_checkpoint))
        runtime = time.perf_counter() - start_time
        done = state.global_step - start_step
        losses = [row["loss"] for row in state.log_history if "loss" in row and "eval_loss" not in row]
        rows = done * len(self.trained) * window
        metrics = {
            "train_runtime": round(runtime, 4),
            "train_samples_per_second": round(rows / max(runtime, 1e-9), 3),
            "train_steps_per_second": round(done / max(runtime, 1e-9), 3),
            "train_loss": float(np.mean(losses)) if losses else float("nan"),
            "epoch": state.epoch,
        }
        self.log(metrics)
        self.control = handler.on_train_end(args, state, self.control)
        if args.report_at_end:
            from ..report import report_at_end

            report_at_end(self)  # report.png + report.md; a failed plot only warns
        return TrainOutput(state.global_step, metrics["train_loss"], metrics)

    def _log_training(self, since: _Since) -> None:
        """One training log row: per-direction losses, learning rates, grad norms and timings."""
        accel, world = self.accelerator, self.accelerator.num_processes
        logs: dict[str, float] = {}
        losses = []
        for s in self.trained:
            total = accel.reduce(since.loss[s].clone(), reduction="sum") if world > 1 else since.loss[s]
            if since.loss_steps[s]:
                logs[f"loss_{s}"] = total.item() / since.loss_steps[s]
                losses.append(logs[f"loss_{s}"])
        if losses:
            logs["loss"] = sum(losses) / len(losses)
        side = self.sides[self.trained[0]]
        logs["learning_rate"] = side.optimizer.param_groups[0]["lr"]
        for s in self.trained:
            logs[f"learning_rate_{s}"] = self.sides[s].optimizer.param_groups[0]["lr"]
            if since.grad_norm[s] is not None:
                logs[f"grad_norm_{s}"] = float(since.grad_norm[s])
            logs[f"dropped_{s}"] = since.dropped[s]
        elapsed = max(time.perf_counter() - since.start, 1e-9)
        steps = max(since.steps, 1)
        logs["generation_seconds_per_step"] = round(since.gen_time / steps, 4)
        logs["training_seconds_per_step"] = round(since.train_time / steps, 4)
        logs["generation_share"] = round(since.gen_time / elapsed, 3)
        logs["samples_per_second"] = round(since.rows * world / elapsed, 3)
        logs["steps_per_second"] = round(since.steps / elapsed, 3)
        if since.paired_steps:
            logs["paired_steps"] = since.paired_steps
        since.reset()
        self.log(logs)

    def _evaluate_during_training(self) -> dict[str, float]:
        metrics = self.evaluate()
        schedulers = [side.scheduler for side in self.sides.values() if side.scheduler is not None]
        if after_evaluation(self.state, self.args, metrics, schedulers) and self.args.save_strategy == "best":
            self.control.should_save = True
        self.control.should_evaluate = False
        return metrics

    # ---- checkpoints ------------------------------------------------------------------------

    def _save_models(self, directory: Path) -> None:
        """A/ and B/: each a model (`save_pretrained`) or, in MACCT, a peft adapter, with its tokenizer."""
        accel, main = self.accelerator, self.is_world_process_zero()
        if self.macct:
            model = self._bare(self.sides["A"])
            if main:
                with ckpt.quiet_hf_progress():
                    model.save_pretrained(str(directory), selected_adapters=list(SIDES))
        else:
            for s in SIDES:
                side = self.sides[s]
                wrapped = side.wrapped if side.wrapped is not None else side.model
                state_dict = accel.get_state_dict(wrapped) if accel.num_processes > 1 else None
                ckpt.save_model_files(accel.unwrap_model(wrapped), directory / s, state_dict=state_dict, is_main=main)
        if main:
            for s in SIDES:
                tok = self.sides[s].tokenizer
                if hasattr(tok, "save_pretrained"):
                    tok.save_pretrained(directory / s)

    def _load_models(self, directory: Path) -> None:
        if self.macct:
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file

            model = self._bare(self.sides["A"])
            for s in SIDES:
                set_peft_model_state_dict(
                    model, load_file(str(directory / s / "adapter_model.safetensors")), adapter_name=s
                )
            return
        for s in SIDES:
            ckpt.load_model_files(self._bare(self.sides[s]), directory / s)

    def _save_checkpoint(self, since: _Since) -> Path:
        state, accel, args = self.state, self.accelerator, self.args
        final = ckpt.checkpoint_dir(args.output_dir, state.global_step)
        if state.best_global_step == state.global_step:
            state.best_model_checkpoint = str(final)
        state.stateful_callbacks = ckpt.callback_states(self.callback_handler.callbacks)
        main = self.is_world_process_zero()
        pending = since.pending()
        with ckpt.atomic_checkpoint(final, is_main=main, barrier=accel.wait_for_everyone) as tmp:
            self._save_models(tmp)
            if not args.save_only_model:
                ckpt.save_state(ckpt.rng_state(), tmp / f"rng_state_{accel.process_index}.pth")
                if main:
                    for s in self.trained:
                        ckpt.save_state(self.sides[s].optimizer.state_dict(), tmp / f"optimizer_{s}.pt")
                        ckpt.save_state(self.sides[s].scheduler.state_dict(), tmp / f"scheduler_{s}.pt")
                    if accel.scaler is not None:
                        ckpt.save_state(accel.scaler.state_dict(), tmp / ckpt.SCALER_NAME)
            if main:
                cycle_state = {"streams": {k: v.state_dict() for k, v in self._streams.items()}, "pending": pending}
                ckpt.write_json(cycle_state, tmp / CYCLE_STATE_NAME)
                ckpt.write_json(args.to_dict(), tmp / ckpt.ARGS_NAME)
                state.save_to_json(tmp / ckpt.STATE_NAME)  # written last: the completion marker inside
        if main:
            ckpt.rotate_checkpoints(args.output_dir, args.save_total_limit, state.best_model_checkpoint)
        return final

    def _load_checkpoint(self, path: Path, since: _Since) -> None:
        """Restore everything `_save_checkpoint` wrote, so the run continues bit for bit."""
        missing = [f"optimizer_{s}.pt" for s in self.trained if not (path / f"optimizer_{s}.pt").is_file()]
        if missing or not (path / CYCLE_STATE_NAME).is_file():
            raise CheckpointError(
                f"checkpoint '{path}' lacks {missing or [CYCLE_STATE_NAME]} (saved with save_only_model=True, or by "
                "another trainer or cycle_directions?); it can be loaded as models but not resumed"
            )
        accel = self.accelerator
        self._load_models(path)
        for s in self.trained:
            self.sides[s].optimizer.load_state_dict(ckpt.load_state(path / f"optimizer_{s}.pt"))
            self.sides[s].scheduler.load_state_dict(ckpt.load_state(path / f"scheduler_{s}.pt"))
        if accel.scaler is not None and (path / ckpt.SCALER_NAME).is_file():
            accel.scaler.load_state_dict(ckpt.load_state(path / ckpt.SCALER_NAME))
        cycle_state = json.loads((path / CYCLE_STATE_NAME).read_text())
        for name, stream in self._streams.items():
            if name not in cycle_state["streams"]:
                raise CheckpointError(
                    f"checkpoint '{path}' has no position for the {name} data; resume with the same settings"
                )
            stream.load_state_dict(cycle_state["streams"][name])
        since.restore(cycle_state.get("pending", {}))
        self.state = ckpt.restore_trainer_state(path, self.state, self.callback_handler.callbacks)
        ckpt.restore_rng(path, accel.process_index, accel.num_processes)

    def create_model_card(self, **card: Any) -> Path:
        """Write README.md (a model card) into args.output_dir; the keywords of
        `Trainer.create_model_card` (language, license, tags, ...). See `trainformers.modelcard`."""
        from ..modelcard import create_model_card

        return create_model_card(self, **card)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Write `A/` and `B/` under `output_dir` (default args.output_dir): each a model plain
        `transformers` loads (`from_pretrained`), or in MACCT a `peft` adapter
        (`PeftModel.from_pretrained(base, dir/'A')`), with its tokenizer."""
        directory = Path(output_dir or self.args.output_dir)
        if self.is_world_process_zero():
            directory.mkdir(parents=True, exist_ok=True)
        self._save_models(directory)
        if self.is_world_process_zero() and not _internal_call:
            ckpt.write_json(self.args.to_dict(), directory / ckpt.ARGS_NAME)
        self.accelerator.wait_for_everyone()

    # ---- evaluation -------------------------------------------------------------------------

    def _shard(self, n: int) -> list[int]:
        return list(range(self.accelerator.process_index, n, self.accelerator.num_processes))

    def _reconstruction(self, domain: str, dataset: Any) -> tuple[float, float, int]:
        """Domain -> other -> domain: the model of `domain` translates, the other one is scored on
        getting the original back. Returns (token-sum of the loss, tokens, dropped rows) over all ranks."""
        accel, size = self.accelerator, self.args.per_device_eval_batch_size
        forward, back = self.sides[domain], self.sides[other(domain)]
        device = accel.device
        loss_sum, items, dropped = torch.zeros((), device=device), torch.zeros((), device=device), 0
        indices = self._shard(len(dataset))
        model = self._bare(back)
        for start in range(0, len(indices), size):
            texts = self._texts(domain, _get_rows(dataset, indices[start : start + size]))
            synthetic = self._generate(forward, texts, evaluation=True)
            batch = self.build_batch(other(domain), synthetic, texts)
            dropped += batch.num_dropped
            if not batch["input_ids"].numel():
                continue
            batch = {k: v.to(device) for k, v in batch.items()}
            with torch.no_grad(), self._adapter(back), accel.autocast():
                model.eval()
                loss_sum += self._window_loss(back, model, batch, torch.tensor(1, device=device)).float()
            items += count_label_items(batch, shift=back.shift).to(device).float()
        if accel.num_processes > 1:
            loss_sum, items = accel.reduce(loss_sum, reduction="sum"), accel.reduce(items, reduction="sum")
            dropped = int(accel.reduce(torch.tensor(dropped, device=device), reduction="sum"))
        return float(loss_sum), float(items), dropped

    def translate(self, side: str, texts: Sequence[str], batch_size: int | None = None) -> list[str]:
        """Model `side`'s greedy translations of `texts` (decoded with its tokenizer)."""
        size = batch_size or self.args.per_device_eval_batch_size
        model_side = self.sides[side]
        out: list[str] = []
        for start in range(0, len(texts), size):
            ids = self._generate(model_side, list(texts[start : start + size]), evaluation=True)
            out += [model_side.tokenizer.decode(i) for i in ids]
        return out

    def evaluate(
        self,
        eval_dataset_A: Any = None,
        eval_dataset_B: Any = None,
        paired_eval_dataset: Any = None,
        metric_key_prefix: str = "eval",
    ) -> dict[str, float]:
        """Reconstruction loss per domain (``eval_reconstruction_loss_A``: A -> B -> A, scored on
        model B) and their mean ``eval_loss``; with paired references, task metrics per direction
        on greedy outputs (``eval_A_to_B_exact_match``, ``eval_B_to_A_chrf``, ...).

        Raises:
            DataError: nothing to evaluate.
        """
        from accelerate.utils import gather_object

        args, prefix = self.args, metric_key_prefix
        start = time.perf_counter()
        sets = {"A": eval_dataset_A, "B": eval_dataset_B}
        sets = {
            s: _as_dataset(d, getattr(args, f"text_field_{s}")) if d is not None else self.eval_datasets[s]
            for s, d in sets.items()
        }
        paired = paired_eval_dataset if paired_eval_dataset is not None else self.paired_eval_dataset
        if all(d is None for d in sets.values()) and paired is None:
            raise DataError("evaluate() has nothing to evaluate; pass eval_dataset_A/B or paired_eval_dataset")
        metrics: dict[str, float] = {}
        losses, samples = [], 0
        for s, dataset in sets.items():
            if dataset is None:
                continue
            total, items, dropped = self._reconstruction(s, dataset)
            samples += len(dataset)
            if items:
                metrics[f"{prefix}_reconstruction_loss_{s}"] = total / items
                losses.append(total / items)
            if dropped:
                metrics[f"{prefix}_reconstruction_dropped_{s}"] = dropped
        if losses:
            metrics[f"{prefix}_loss"] = sum(losses) / len(losses)
        if paired is not None and (args.metrics or self.compute_metrics is not None):
            for s in SIDES:
                src, tgt = getattr(args, f"paired_field_{s}"), getattr(args, f"paired_field_{other(s)}")
                rows = _get_rows(paired, self._shard(len(paired)))
                preds = self.translate(s, [str(r[src]) for r in rows])
                pairs = list(zip(preds, [str(r[tgt]) for r in rows]))
                if self.accelerator.num_processes > 1:
                    pairs = gather_object(pairs)
                predictions, references = [p for p, _ in pairs], [r for _, r in pairs]
                samples += len(pairs)
                tag = f"{prefix}_{s}_to_{other(s)}"
                for key, value in text_metrics(args.metrics, predictions, references).items():
                    metrics[f"{tag}_{key}"] = value
                if self.compute_metrics is not None:
                    extra = self.compute_metrics(EvalPrediction(predictions=predictions, label_ids=references))
                    for key, value in (extra or {}).items():
                        metrics[f"{tag}_{key}"] = value
        runtime = time.perf_counter() - start
        metrics[f"{prefix}_runtime"] = round(runtime, 4)
        metrics[f"{prefix}_samples_per_second"] = round(samples / max(runtime, 1e-9), 3)
        if self.state.epoch is not None:
            metrics["epoch"] = self.state.epoch
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(args, self.state, self.control, metrics=metrics)
        return metrics


class _Since:
    """What the loop accumulates between two log rows (losses stay on the device until logged)."""

    def __init__(self, sides: Sequence[str], device: torch.device) -> None:
        self.sides, self.device = list(sides), device
        self.reset()
        self.start = time.perf_counter()

    def reset(self) -> None:
        self.loss = {s: torch.zeros((), device=self.device) for s in self.sides}
        self.loss_steps = dict.fromkeys(self.sides, 0)
        self.grad_norm: dict[str, Any] = dict.fromkeys(self.sides)
        self.dropped = dict.fromkeys(self.sides, 0)
        self.gen_time = self.train_time = 0.0
        self.rows = self.steps = self.paired_steps = 0
        self.start = time.perf_counter()

    def add(self, side: str, out: Mapping[str, Any]) -> None:
        if out["loss"] is not None:
            self.loss[side] += out["loss"]
            self.loss_steps[side] += 1
            self.grad_norm[side] = out["grad_norm"]
        self.dropped[side] += out["dropped"]
        self.gen_time += out["gen_time"]
        self.train_time += out["train_time"]
        self.rows += out["rows"]

    def pending(self) -> dict[str, Any]:
        """The unlogged sums, as plain values (a resumed run logs the same rows)."""
        return {
            "loss": {s: float(v.item()) for s, v in self.loss.items()},
            "loss_steps": self.loss_steps,
            "dropped": self.dropped,
            "steps": self.steps,
            "paired_steps": self.paired_steps,
        }

    def restore(self, pending: Mapping[str, Any]) -> None:
        for s in self.sides:
            self.loss[s] = torch.tensor(pending.get("loss", {}).get(s, 0.0), device=self.device)
            self.loss_steps[s] = int(pending.get("loss_steps", {}).get(s, 0))
            self.dropped[s] = int(pending.get("dropped", {}).get(s, 0))
        self.steps = int(pending.get("steps", 0))
        self.paired_steps = int(pending.get("paired_steps", 0))
