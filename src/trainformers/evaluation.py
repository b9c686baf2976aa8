"""Collect what an evaluation loop produces, keeping memory bounded and the result exact.

Losses are summed on the device and weighted by each batch's label items, so `eval_loss` is the
exact mean over every label token (HF averages per-batch means, which over-weights short
batches). Logits are moved to the CPU only when metrics or predictions need them. Across ranks
the evaluation shards are uneven (no padded duplicates) and nothing is exchanged per batch:
sums are reduced and outputs gathered once at the end, then put back in dataset order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
from transformers.trainer_pt_utils import nested_concat, nested_numpify
from transformers.trainer_utils import EvalPrediction


@dataclass
class EvalOutput:
    predictions: Any
    label_ids: Any
    metrics: dict[str, float]
    num_samples: int


def _cpu(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, (tuple, list)):
        return type(value)(_cpu(v) for v in value)
    return value.detach().cpu()


def _interleave(per_rank: list[list[Any]]) -> list[Any]:
    """Batches in dataset order: Accelerate deals batch k to rank k % world (BatchSamplerShard)."""
    ordered = []
    for k in range(sum(len(batches) for batches in per_rank)):
        ordered.append(per_rank[k % len(per_rank)][k // len(per_rank)])
    return ordered


@dataclass
class EvalAccumulator:
    """Accumulates (loss, logits, labels) over an evaluation loop.

    Args:
        world_size: Number of processes evaluating shards of the same set.
        keep_outputs: Keep logits/labels (compute_metrics or predict will use them).
        include_inputs: Also keep `input_ids` for `EvalPrediction.inputs`.
        include_losses: Also keep per-sample losses for `EvalPrediction.losses`.
        batch_metrics: `compute_metrics` to call per batch (`batch_eval_metrics`); with one
            process nothing is kept.
    """

    world_size: int = 1
    keep_outputs: bool = False
    include_inputs: bool = False
    include_losses: bool = False
    batch_metrics: Callable | None = None
    loss_sum: torch.Tensor | None = None
    item_sum: torch.Tensor | None = None
    num_samples: int = 0
    batches: list[tuple[Any, Any, Any, Any]] = field(default_factory=list)
    _pending: EvalPrediction | None = field(default=None, repr=False)

    def add(self, inputs: dict[str, Any], loss: torch.Tensor | None, n_items: Any, logits: Any, labels: Any) -> None:
        first = next((v for v in inputs.values() if torch.is_tensor(v) and v.dim() >= 1), None)
        batch = first.shape[0] if first is not None else 0
        self.num_samples += batch
        if loss is not None:
            weight = n_items.to(loss.device).float() if n_items is not None else torch.tensor(float(batch), device=loss.device)
            self.loss_sum = loss * weight if self.loss_sum is None else self.loss_sum + loss * weight
            self.item_sum = weight if self.item_sum is None else self.item_sum + weight
        if not self.keep_outputs:
            return
        ids = inputs.get("input_ids") if self.include_inputs else None
        per_sample = loss.repeat(batch) if self.include_losses and loss is not None else None
        entry = (_cpu(logits), _cpu(labels), _cpu(ids), _cpu(per_sample))
        if self.batch_metrics is not None and self.world_size == 1:
            if self._pending is not None:
                self.batch_metrics(self._pending, compute_result=False)
            self._pending = _prediction(*entry)
        else:
            self.batches.append(entry)

    def finish(self, accel: Any, compute_metrics: Callable | None, prefix: str) -> EvalOutput:
        """Reduce across ranks, restore dataset order, run the metrics (every rank gets them)."""
        loss_sum, item_sum = self.loss_sum, self.item_sum
        num_samples = self.num_samples
        if self.world_size > 1:
            from accelerate.utils import gather_object

            device = accel.device
            sums = torch.stack([
                loss_sum.float() if loss_sum is not None else torch.zeros((), device=device),
                item_sum.float() if item_sum is not None else torch.zeros((), device=device),
                torch.tensor(float(num_samples), device=device),
            ]).to(device)
            loss_sum, item_sum, total = accel.reduce(sums, reduction="sum")
            num_samples = int(total.item())
            if item_sum.item() == 0:
                loss_sum = item_sum = None
            if self.keep_outputs:
                per_rank = gather_object([self.batches])
                self.batches = _interleave(per_rank)
        metrics: dict[str, float] = {}
        if loss_sum is not None:
            metrics["loss"] = (loss_sum / item_sum.clamp(min=1)).item()
        preds = labels = inputs = losses = None
        if self.batch_metrics is not None:
            pending = [self._pending] if self._pending is not None else [_prediction(*b) for b in self.batches]
            for i, prediction in enumerate(pending):
                result = self.batch_metrics(prediction, compute_result=i == len(pending) - 1)
            metrics.update((result if pending else None) or {})
        else:
            for logits, lab, ids, per_sample in self.batches:
                preds = logits if preds is None else nested_concat(preds, logits, padding_index=-100)
                if lab is not None:
                    labels = lab if labels is None else nested_concat(labels, lab, padding_index=-100)
                if ids is not None:
                    inputs = ids if inputs is None else nested_concat(inputs, ids, padding_index=-100)
                if per_sample is not None:
                    losses = per_sample if losses is None else torch.cat([losses, per_sample])
            preds, labels = nested_numpify(preds) if preds is not None else None, nested_numpify(labels) if labels is not None else None
            if compute_metrics is not None and preds is not None and labels is not None:
                inputs = nested_numpify(inputs) if inputs is not None else None
                losses = nested_numpify(losses) if losses is not None else None
                metrics.update(compute_metrics(_prediction(preds, labels, inputs, losses)) or {})
        out = {}
        for key, value in metrics.items():
            if isinstance(value, (np.generic, torch.Tensor)):
                value = value.item()
            out[key if key.startswith(f"{prefix}_") else f"{prefix}_{key}"] = value
        return EvalOutput(preds, labels, out, num_samples)


def _prediction(preds: Any, labels: Any, inputs: Any, losses: Any) -> EvalPrediction:
    kwargs: dict[str, Any] = {"predictions": preds, "label_ids": labels}
    if inputs is not None:
        kwargs["inputs"] = inputs
    if losses is not None:
        kwargs["losses"] = losses
    return EvalPrediction(**kwargs)
