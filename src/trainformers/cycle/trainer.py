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

Everything else comes from the `Trainer` building blocks: optimizers and param groups (`optim`), the loss
(`losses.lm_loss`), Accelerate set-up (`accel`), checkpoints, callbacks and the `TrainerState`.
"""

from __future__ import annotations

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
from ..accel import build_accelerator, start_notices
from ..callbacks import CallbackHandler, HubCallback, TrainerCallback, default_callbacks
from ..config import TrainingArguments
from ..errors import ConfigError, DataError
from ..loop_utils import (
    after_evaluation,
    apply_log_level,
    new_state,
    prepare_model,
    seed_everything,
    unwrap_peft,
)
from ..losses import IGNORE_INDEX, count_label_items, lm_loss
from ..memory import peak_memory_mb_of_ranks
from ..meter import Meter
from ..neftune import neftune_noise
from ..optim import create_optimizer, create_scheduler
from ..preemption import SigtermCheckpoint
from ..run_lock import RunLock
from ..state import TrainerControl, TrainerState
from ..step import NonFiniteGuard, StepKernel, WindowStep
from ..trackers import start_trackers
from .config import CycleTrainingArguments, cycle_args_from, resolve_callable
from .datasets import as_dataset, check_datasets, get_rows, row_texts
from .generation import generate_ids
from .inputs import CycleBatch, CycleBatchBuilder, tokenizers_compatible
from .metrics import text_metrics
from .models import SIDES, other, resolve_models, resolve_tokenizers
from .streams import DomainStream, rank_rows

__all__ = ["CycleTrainer"]


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
    kernel: StepKernel | None = None  # backward, clip, step, schedule, zero_grad (after accelerator.prepare)
    nan_guard: NonFiniteGuard = field(default_factory=lambda: NonFiniteGuard("stop", 1))  # set with the kernel


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
            args = cycle_args_from(args)
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
        apply_log_level(args)
        pair, self.macct = resolve_models(models, peft_configs, args.use_macct)
        toks = resolve_tokenizers(tokenizers, models)
        if self.macct and args.ddp_find_unused_parameters is None:
            args.ddp_find_unused_parameters = True  # the inactive adapter gets no gradient in a step
        self.accelerator = build_accelerator(args)
        if self.accelerator.distributed_type.value in ("FSDP", "DEEPSPEED"):  # asked for by the launcher's flags
            raise ConfigError(
                f"CycleTrainer does not run under {self.accelerator.distributed_type.value}: each model generates "
                "between its steps; launch without --use_fsdp/--use_deepspeed (DDP)"
            )
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
        fields = {"A": args.text_field_A, "B": args.text_field_B}
        train_sets, eval_sets = {"A": train_dataset_A, "B": train_dataset_B}, {"A": eval_dataset_A, "B": eval_dataset_B}
        self.train_datasets = {s: as_dataset(train_sets[s], fields[s]) for s in SIDES}
        self.eval_datasets = {s: as_dataset(eval_sets[s], fields[s]) for s in SIDES}
        self.paired_dataset, self.paired_eval_dataset = paired_dataset, paired_eval_dataset
        self.compute_metrics = compute_metrics
        check_datasets(
            args,
            self.train_datasets,
            self.eval_datasets,
            paired_dataset,
            paired_eval_dataset,
            self.collators,
            self._needed_domains(),
        )
        self.state = TrainerState(
            is_local_process_zero=self.accelerator.is_local_main_process,
            is_world_process_zero=self.accelerator.is_main_process,
        )
        self.control = TrainerControl()
        self._sigterm = SigtermCheckpoint(args.enable_jit_checkpoint)
        self.tracker_sections: dict[str, Any] | None = None  # every section's settings (the CLI sets them)
        self.callback_handler = CallbackHandler(
            default_callbacks(args, self.accelerator) + list(callbacks or []), pair["A"], toks["A"], None, None
        )
        self._update_handler()
        self.control = self.callback_handler.on_init_end(args, self.state, self.control)

    # ---- set-up checks ----------------------------------------------------------------------

    def _needed_domains(self) -> list[str]:
        """Training model T reads real texts of the other domain (its targets)."""
        return sorted({other(t) for t in self.trained})

    def _update_handler(self) -> None:
        handler = self.callback_handler
        handler.model = self.sides["A"].model
        first = self.sides[self.trained[0]]
        handler.optimizer, handler.lr_scheduler = first.optimizer, first.scheduler
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
        """The texts of domain rows (`datasets.row_texts`)."""
        column = getattr(self.args, f"text_field_{domain}")
        return row_texts(rows, column, self.sides[domain].tokenizer, self.collators[domain], f"data_collator_{domain}")

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

    def _train_window(self, side: CycleSide, batches: list[CycleBatch]) -> WindowStep:
        """One optimizer step of `side` over the window's micro-batches (`StepKernel.run`); no step
        (a `WindowStep` without loss) when no row of the window survived on any rank."""
        accel, device = self.accelerator, self.accelerator.device
        micro_batches: list[Mapping[str, torch.Tensor]] = [b for b in batches if b["input_ids"].numel()]
        if accel.num_processes > 1:
            micro_batches = [b if b["input_ids"].numel() else self._dummy_batch(side) for b in batches]
        model = side.wrapped

        def micro_step(batch: Mapping[str, torch.Tensor], num_items: torch.Tensor | None) -> torch.Tensor:
            batch = {k: v.to(device) for k, v in batch.items()}
            with accel.autocast():
                loss = self._window_loss(side, model, batch, num_items)
            side.kernel.backward(loss)
            return loss.detach()

        def count_micro_batch(batch: Mapping[str, Any], share: torch.Tensor, last: bool) -> None:
            self.state.micro_step += 1

        with self._adapter(side):
            model.train()
            return side.kernel.run(
                model,
                micro_batches,
                micro_step,
                lambda batch: count_label_items(batch, shift=side.shift),
                on_micro=count_micro_batch,
                skip_empty=True,
            )

    def _step_kind(self, step: int) -> str:
        args = self.args
        if step < args.warmup_paired_steps:
            return "paired"
        if args.paired_mix_every and (step - args.warmup_paired_steps + 1) % args.paired_mix_every == 0:
            return "paired"
        return "cycle"

    def _direction_step(self, trained: str, kind: str) -> None:
        """One optimizer step of model `trained`: draw its window, build the batches, train (into the meter)."""
        args, accel = self.args, self.accelerator
        side, generator = self.sides[trained], self.sides[other(trained)]
        batch_size, ga = args.per_device_train_batch_size, args.gradient_accumulation_steps
        stream = self._streams["paired" if kind == "paired" else other(trained)]
        step_rows = stream.next_window()  # the global row indices of this optimizer step
        batches, gen_time, dropped, rows_used = [], 0.0, 0, 0
        for micro in range(ga):
            rows_idx = rank_rows(step_rows, micro, batch_size, accel.process_index, accel.num_processes)
            if kind == "paired":
                rows = get_rows(self.paired_dataset, rows_idx)
                src_field, tgt_field = (
                    getattr(args, f"paired_field_{trained}"),
                    getattr(args, f"paired_field_{other(trained)}"),
                )
                batch = self.build_batch(trained, [str(r[src_field]) for r in rows], [str(r[tgt_field]) for r in rows])
            else:
                targets = self._texts(other(trained), get_rows(self.train_datasets[other(trained)], rows_idx))
                start = time.perf_counter()
                sources = self._generate(generator, targets)
                gen_time += time.perf_counter() - start
                batch = self.build_batch(trained, sources, targets)
            dropped += batch.num_dropped
            rows_used += len(batch.kept)
            batches.append(batch)
        start = time.perf_counter()
        step = self._train_window(side, batches)
        meter = self.meter
        if not side.nan_guard.stepped(step, self.state.global_step + 1):
            meter.add(f"skipped_steps_{trained}", 1)
        elif step.loss is not None:
            meter.add(f"loss_{trained}", step.loss)
            meter.add(f"loss_steps_{trained}", 1)
            if step.grad_norm is not None:
                meter.set(f"grad_norm_{trained}", step.grad_norm)
        meter.add(f"dropped_{trained}", dropped)
        meter.add("generation_seconds", gen_time)
        meter.add("training_seconds", time.perf_counter() - start)
        meter.add("rows", rows_used)

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
            side.kernel = StepKernel(
                accel,
                side.optimizer,
                side.scheduler,
                side.params,
                max_grad_norm=self.args.max_grad_norm,
                ranks=accel.num_processes,
                items_across_ranks=self.args.average_tokens_across_devices,
                always_count=True,
                check_finite=self.args.nan_policy != "ignore",
            )
            side.nan_guard = NonFiniteGuard(self.args.nan_policy, self.args.nan_skip_limit)

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs: Any) -> TrainOutput:
        """Run cycle training; resume from a checkpoint path, or the newest that loads with True.

        Raises:
            CheckpointError: output_dir holds another run (neither resume nor overwrite asked), or no checkpoint loads.
            DataError: a training dataset the directions need is missing.
        """
        if kwargs:
            raise ConfigError(f"CycleTrainer.train() got unknown arguments {sorted(kwargs)}")
        args = self.args
        said = start_notices(args.cpu_malloc, [self.sides[s].model for s in SIDES], self.accelerator.device)
        if said and self.is_world_process_zero():
            print(said)
        if resume_from_checkpoint is None:
            resume_from_checkpoint = args.resume_from_checkpoint
        resume = ckpt.resume_point(
            resume_from_checkpoint, args, main=self.is_world_process_zero(), model_dirs=("A", "B")
        )
        output_dir = Path(args.output_dir)
        saving, overwrite = args.save_strategy != "no", args.overwrite_output_dir
        ckpt.check_foreign_checkpoints(
            output_dir, set(), resuming=resume is not None, overwrite=overwrite, saving=saving
        )
        for domain in self._needed_domains():
            if self.train_datasets[domain] is None:
                raise DataError(
                    f"train() needs train_dataset_{domain}: model {other(domain)} trains on real domain-{domain} texts; "
                    f"pass train_dataset_{domain}=..."
                )
        if any(getattr(self.sides[s], "wrapped", None) is not None for s in SIDES):
            raise ConfigError("CycleTrainer.train() was already called on this trainer; build a new CycleTrainer")
        lock = RunLock(output_dir, enabled=self.is_world_process_zero())
        try:
            with neftune_noise([self.sides[s].model for s in self.trained], args.neftune_noise_alpha), self._sigterm:
                return self._train_loop(resume, lock)
        finally:
            lock.release()

    def _train_loop(self, resume: Path | None, lock: RunLock) -> TrainOutput:
        args, accel, handler = self.args, self.accelerator, self.callback_handler
        rows_per_step = args.gradient_accumulation_steps * args.per_device_train_batch_size * accel.num_processes
        seed = args.data_seed if args.data_seed is not None else args.seed
        self._streams: dict[str, DomainStream] = {}
        for i, domain in enumerate(self._needed_domains()):
            self._streams[domain] = DomainStream(
                len(self.train_datasets[domain]), seed + 1000 * i, rows_per_step, f"train_dataset_{domain}"
            )
        if self.paired_dataset is not None and (args.warmup_paired_steps or args.paired_mix_every):
            self._streams["paired"] = DomainStream(
                len(self.paired_dataset), seed + 5000, rows_per_step, "paired_dataset"
            )
        domain_streams = [self._streams[d] for d in self._needed_domains()]
        steps_per_epoch = max(s.windows_per_epoch for s in domain_streams)
        max_steps = args.max_steps if args.max_steps > 0 else math.ceil(args.num_train_epochs * steps_per_epoch)
        self._create_optimizers(max_steps)
        self._prepare()
        self._update_handler()
        state = self.state = new_state(args, max_steps, math.ceil(max_steps / steps_per_epoch), accel)
        meter = self.meter = Meter(accel.device)
        if resume is not None:
            state = self.state = ckpt.load_checkpoint(resume, self._resumable(), accel)
        lock.acquire()  # one writer per output_dir, from the first write on
        if resume is None and args.overwrite_output_dir and self.is_world_process_zero():
            ckpt.clear_run(args.output_dir, args.logging_dir)  # the first write: every check has passed
        start_trackers(accel, args, sections=self.tracker_sections)  # after clear_run; unless an earlier train() did
        self.control = handler.on_train_begin(args, state, self.control)
        if args.eval_on_start and state.global_step == 0:
            self._evaluate_during_training()
        start_time = time.perf_counter()
        meter.start_clock()
        start_step = state.global_step
        self.control = handler.on_epoch_begin(args, state, self.control)
        while state.global_step < max_steps:
            self.control = handler.on_step_begin(args, state, self.control)
            kind = self._step_kind(state.global_step)
            for s in self.trained:
                self._direction_step(s, kind)
            meter.add("paired_steps", int(kind == "paired"))
            meter.add("steps", 1)
            state.global_step += 1
            state.epoch = max(stream.progress for stream in domain_streams)
            self.control = handler.on_step_end(args, state, self.control)
            self._sigterm.stop_if_requested(self.control)
            if self.control.should_log:
                self._log_training()
            pause = time.perf_counter()
            if self.control.should_evaluate:
                self._evaluate_during_training()
            if self.control.should_save:
                ckpt.save_checkpoint(self._resumable(), args, accel)
                self.control = handler.on_save(args, state, self.control)
                self.control.should_save = False
            meter.pause(time.perf_counter() - pause)
            if self.control.should_training_stop:
                break
        self.control = handler.on_epoch_end(args, state, self.control)
        if args.load_best_model_at_end and state.best_model_checkpoint is not None:
            self._load_models(Path(state.best_model_checkpoint))
        runtime = time.perf_counter() - start_time
        done = state.global_step - start_step
        losses = [row["loss"] for row in state.log_history if "loss" in row and "eval_loss" not in row]
        metrics = {
            "train_runtime": round(runtime, 4),
            "train_samples_per_second": round(done * len(self.trained) * rows_per_step / max(runtime, 1e-9), 3),
            "train_steps_per_second": round(done / max(runtime, 1e-9), 3),
            "train_peak_memory_mb": peak_memory_mb_of_ranks(accel),
            "train_loss": float(np.mean(losses)) if losses else float("nan"),
            "epoch": state.epoch,
        }
        self.log(metrics)
        self.control = handler.on_train_end(args, state, self.control)
        return TrainOutput(state.global_step, metrics["train_loss"], metrics)

    def _log_training(self) -> None:
        """One training log row: per-direction losses, learning rates, grad norms and timings."""
        accel, meter, world = self.accelerator, self.meter, self.accelerator.num_processes
        logs: dict[str, float] = {}
        losses = []
        for s in self.trained:
            total = meter.summed_over_ranks(f"loss_{s}", accel)  # every rank, even one that took no step
            if meter.get(f"loss_steps_{s}"):
                logs[f"loss_{s}"] = total / meter.read(f"loss_steps_{s}")
                losses.append(logs[f"loss_{s}"])
        if losses:
            logs["loss"] = sum(losses) / len(losses)
        rates = {s: self._step_rate(self.sides[s]) for s in self.trained}
        logs["learning_rate"] = rates[self.trained[0]]
        for s in self.trained:
            logs[f"learning_rate_{s}"] = rates[s]
            if meter.get(f"grad_norm_{s}", None) is not None:
                logs[f"grad_norm_{s}"] = meter.read(f"grad_norm_{s}")
            logs[f"dropped_{s}"] = meter.read(f"dropped_{s}")
            if meter.read(f"skipped_steps_{s}"):
                logs[f"skipped_steps_{s}"] = meter.read(f"skipped_steps_{s}")
        elapsed, steps = meter.elapsed(), max(meter.read("steps"), 1)
        logs["generation_seconds_per_step"] = round(meter.read("generation_seconds") / steps, 4)
        logs["training_seconds_per_step"] = round(meter.read("training_seconds") / steps, 4)
        logs["generation_share"] = round(meter.read("generation_seconds") / elapsed, 3)
        logs["samples_per_second"] = round(meter.read("rows") * world / elapsed, 3)
        logs["steps_per_second"] = round(meter.read("steps") / elapsed, 3)
        logs["peak_memory_mb"] = peak_memory_mb_of_ranks(accel)
        if meter.read("paired_steps"):
            logs["paired_steps"] = meter.read("paired_steps")
        meter.reset()
        self.log(logs)

    @staticmethod
    def _step_rate(side: CycleSide) -> float:
        """The rate `side`'s last step used (its current one when no step was taken yet)."""
        rate = side.kernel.learning_rate if side.kernel is not None else None
        return float(rate if rate is not None else side.optimizer.param_groups[0]["lr"])

    def _evaluate_during_training(self) -> dict[str, float]:
        metrics = self.evaluate()
        kernels = [self.sides[s].kernel for s in self.trained]
        if after_evaluation(self.state, self.args, metrics, kernels) and self.args.save_strategy == "best":
            self.control.should_save = True
        self.control.should_evaluate = False
        return metrics

    # ---- checkpoints (what one holds: checkpoint.Resumable) ---------------------------------

    def _resumable(self) -> ckpt.Resumable:
        """This trainer's part of a checkpoint: models under A/ and B/, an optimizer and scheduler
        per trained model, the meter and the position of every data stream."""
        return ckpt.Resumable(
            state=self.state,
            save_models=self._save_models,
            load_models=self._load_models,
            optimizers={s: self.sides[s].optimizer for s in self.trained},
            schedulers={s: self.sides[s].scheduler for s in self.trained},
            stateful={"meter": self.meter, "streams": ckpt.StateDicts(self._streams, "data position")},
            callbacks=self.callback_handler.callbacks,
            restore_callbacks=self.args.restore_callback_states_from_checkpoint,
        )

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

    def create_model_card(self, **card: Any) -> Path:
        """Write README.md (a model card) into args.output_dir; the keywords of
        `Trainer.create_model_card` (language, license, tags, ...). See `trainformers.modelcard`."""
        return self.callback_handler.find_or_add(HubCallback).write_model_card(self, **card)

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
            texts = self._texts(domain, get_rows(dataset, indices[start : start + size]))
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
            s: as_dataset(d, getattr(args, f"text_field_{s}")) if d is not None else self.eval_datasets[s]
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
                rows = get_rows(paired, self._shard(len(paired)))
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
