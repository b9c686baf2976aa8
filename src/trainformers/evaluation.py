"""Collect what an evaluation loop produces, keeping memory bounded.

Losses are summed on the device and weighted by each batch's label items, so `eval_loss` is the
exact mean over every label token (HF averages per-batch means, which over-weights short
batches). Logits are gathered and moved to the CPU only when metrics or predictions need them.
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


def _gather(accel: Any, value: Any) -> Any:
    """Pad across ranks (sequence lengths differ), gather, drop the duplicated tail, move to CPU."""
    if value is None:
        return None
    if isinstance(value, (tuple, list)):
        return type(value)(_gather(accel, v) for v in value)
    value = accel.pad_across_processes(value, dim=1, pad_index=-100) if value.dim() > 1 else value
    return accel.gather_for_metrics(value).detach().cpu()


@dataclass
class EvalAccumulator:
    """Accumulates (loss, logits, labels) over an evaluation loop.

    Args:
        keep_outputs: Keep logits/labels (compute_metrics or predict will use them).
        include_inputs: Also keep `input_ids` for `EvalPrediction.inputs`.
        include_losses: Also keep per-sample losses for `EvalPrediction.losses`.
        batch_metrics: `compute_metrics` to call per batch (`batch_eval_metrics`); nothing is kept.
    """

    keep_outputs: bool
    include_inputs: bool = False
    include_losses: bool = False
    batch_metrics: Callable | None = None
    loss_sum: torch.Tensor | None = None
    item_sum: torch.Tensor | None = None
    num_samples: int = 0
    preds: Any = None
    labels: Any = None
    inputs: Any = None
    losses: Any = None
    _pending: EvalPrediction | None = field(default=None, repr=False)
    _batch_result: dict | None = None

    def add(self, accel: Any, inputs: dict[str, Any], loss: torch.Tensor | None, n_items: Any, logits: Any, labels: Any) -> None:
        first = next((v for v in inputs.values() if torch.is_tensor(v) and v.dim() >= 1), None)
        batch = first.shape[0] if first is not None else 0
        self.num_samples += batch * accel.num_processes
        if loss is not None:
            weight = n_items.to(loss.device).float() if n_items is not None else torch.tensor(float(batch), device=loss.device)
            self.loss_sum = loss * weight if self.loss_sum is None else self.loss_sum + loss * weight
            self.item_sum = weight if self.item_sum is None else self.item_sum + weight
        if not self.keep_outputs:
            return
        logits, labels = _gather(accel, logits), _gather(accel, labels)
        ids = _gather(accel, inputs.get("input_ids")) if self.include_inputs else None
        per_sample = _gather(accel, loss.repeat(batch)) if self.include_losses and loss is not None else None
        if self.batch_metrics is not None:
            if self._pending is not None:
                self.batch_metrics(self._pending, compute_result=False)
            self._pending = _prediction(logits, labels, ids, per_sample)
            return
        self.preds = nested_concat(self.preds, logits, padding_index=-100) if self.preds is not None else logits
        if labels is not None:
            self.labels = nested_concat(self.labels, labels, padding_index=-100) if self.labels is not None else labels
        if ids is not None:
            self.inputs = nested_concat(self.inputs, ids, padding_index=-100) if self.inputs is not None else ids
        if per_sample is not None:
            self.losses = per_sample if self.losses is None else torch.cat([self.losses, per_sample])

    def finish(self, compute_metrics: Callable | None, prefix: str) -> EvalOutput:
        metrics: dict[str, float] = {}
        if self.loss_sum is not None:
            metrics["loss"] = (self.loss_sum / self.item_sum.clamp(min=1)).item()
        preds, labels = nested_numpify(self.preds) if self.preds is not None else None, None
        if self.labels is not None:
            labels = nested_numpify(self.labels)
        if self.batch_metrics is not None and self._pending is not None:
            metrics.update(self.batch_metrics(self._pending, compute_result=True) or {})
        elif compute_metrics is not None and preds is not None and labels is not None:
            inputs = nested_numpify(self.inputs) if self.inputs is not None else None
            losses = nested_numpify(self.losses) if self.losses is not None else None
            metrics.update(compute_metrics(_prediction(preds, labels, inputs, losses)) or {})
        out = {}
        for key, value in metrics.items():
            if isinstance(value, (np.generic, torch.Tensor)):
                value = value.item()
            out[key if key.startswith(f"{prefix}_") else f"{prefix}_{key}"] = value
        return EvalOutput(preds, labels, out, self.num_samples)


def _prediction(preds: Any, labels: Any, inputs: Any, losses: Any) -> EvalPrediction:
    kwargs: dict[str, Any] = {"predictions": preds, "label_ids": labels}
    if inputs is not None:
        kwargs["inputs"] = inputs
    if losses is not None:
        kwargs["losses"] = losses
    return EvalPrediction(**kwargs)
