"""Collect what an evaluation loop produces, keeping memory bounded and the result exact.

Losses are summed on the device and weighted by each batch's label items, so `eval_loss` is the
exact mean over every label token (HF averages per-batch means, which over-weights short
batches); without outputs to keep, that sum is all the loop holds. Outputs (logits, labels) are
kept only when metrics or predictions need them: moved to the CPU batch by batch, or every
`eval_accumulation_steps` batches in one copy, and concatenated once at the end, each output in
one allocation. Across ranks the evaluation shards are uneven (no padded duplicates) and nothing
is exchanged per batch: sums are reduced and outputs gathered once at the end, then put back in
dataset order.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers.trainer_utils import EvalPrediction


@dataclass
class EvalOutput:
    predictions: Any
    label_ids: Any
    metrics: dict[str, float]
    num_samples: int


def _detach(value: Any, to_cpu: bool = False) -> Any:
    """Detach every tensor of a nested tuple/list (Nones kept), and move it to the CPU with `to_cpu`."""
    if value is None:
        return None
    if isinstance(value, (tuple, list)):
        return type(value)(_detach(v, to_cpu) for v in value)
    return value.detach().cpu() if to_cpu else value.detach()


def _numpy(value: Any) -> np.ndarray:
    """A tensor as numpy, as `nested_numpify` does it (bfloat16 becomes float32); arrays pass."""
    if isinstance(value, np.ndarray):
        return value
    value = value.detach().cpu()
    return (value.float() if value.dtype == torch.bfloat16 else value).numpy()


def _leaves(tree: Any) -> list[Any]:
    """The tensors of a nested tuple/list/dict, in a fixed order (`_rebuild` puts them back)."""
    if isinstance(tree, (tuple, list)):
        return [leaf for t in tree for leaf in _leaves(t)]
    if isinstance(tree, Mapping):
        return [leaf for t in tree.values() for leaf in _leaves(t)]
    return [tree]


def _rebuild(like: Any, leaves: Iterator[Any]) -> Any:
    """`like`'s structure holding `leaves` (in `_leaves` order)."""
    if isinstance(like, (tuple, list)):
        return type(like)(_rebuild(t, leaves) for t in like)
    if isinstance(like, Mapping):
        return type(like)({k: _rebuild(t, leaves) for k, t in like.items()})
    return next(leaves)


def _concat_leaf(parts: list[Any], padding_index: int, to_numpy: bool) -> Any:
    """Concatenate on dim 0 into one new tensor (or array), dim 1 padded to the widest part.

    Consumes `parts`: each is dropped once copied, so the peak is the result plus one part.
    Every byte of the result is written once (the padding only where a part is narrower).
    """
    if len(parts) == 1:  # nothing to join: returned as is, as nested_concat never saw it
        part = parts.pop()
        return _numpy(part) if to_numpy else part
    # numpy parts (moved by eval_accumulation_steps) are viewed as tensors; 0-d ones become 1-d
    parts[:] = [torch.from_numpy(p) if isinstance(p, np.ndarray) else p for p in parts]
    parts[:] = [p.reshape(1) if p.dim() == 0 else p for p in parts]  # atleast_1d, as nested_concat
    first = parts[0]
    dtype = functools.reduce(torch.promote_types, (p.dtype for p in parts))
    if to_numpy and dtype == torch.bfloat16:
        dtype = torch.float32  # numpy has no bfloat16 (nested_numpify does the same)
    width = max(p.shape[1] for p in parts) if first.dim() > 1 else None
    shape = (sum(p.shape[0] for p in parts), *((width, *first.shape[2:]) if width is not None else ()))
    out = torch.empty(shape, dtype=dtype, device="cpu" if to_numpy else first.device)
    del first
    start = 0
    for i, part in enumerate(parts):
        parts[i] = None
        rows = slice(start, start + part.shape[0])
        if width is None:
            out[rows] = part
        else:
            out[rows, : part.shape[1]] = part
            out[rows, part.shape[1] :] = padding_index
        start = rows.stop
    parts.clear()
    return out.numpy() if to_numpy else out


def concat_outputs(parts: list[Any], padding_index: int = -100, to_numpy: bool = True) -> Any:
    """Join per-batch outputs (tensors or nested tuples/lists/dicts of them) on dim 0.

    Equals folding `transformers.trainer_pt_utils.nested_concat` over `parts` (then
    `nested_numpify` when `to_numpy`): dim 1 padded with `padding_index` to the widest batch,
    bfloat16 as float32 in numpy. Each output is allocated once instead of once per batch (the
    fold copies everything kept so far at every batch). `parts` is emptied as it is copied.
    """
    skeleton = _rebuild(parts[0], itertools.repeat(None))
    columns = [list(column) for column in zip(*(_leaves(p) for p in parts))]
    parts.clear()
    joined = [_concat_leaf(column, padding_index, to_numpy) for column in columns]
    return _rebuild(skeleton, iter(joined))


def to_host(parts: list[Any], one_copy: bool | None = None) -> list[Any]:
    """Per-batch outputs as numpy arrays on the CPU, with the same structure.

    With `one_copy` (the default off the CPU) the batches are joined on the device and moved in
    one transfer per output, then split back into per-batch views (padded to the widest of
    them), so the device holds nothing more afterwards and the host is synced once.
    """
    if not parts:
        return []
    if one_copy is None:
        one_copy = any(torch.is_tensor(leaf) and leaf.device.type != "cpu" for leaf in _leaves(parts[0]))
    if not one_copy or len(parts) == 1:
        return [_rebuild(p, iter([_numpy(leaf) for leaf in _leaves(p)])) for p in parts]
    skeletons = [_rebuild(p, itertools.repeat(None)) for p in parts]
    rows = [[leaf.shape[0] if leaf.ndim else 1 for leaf in _leaves(p)] for p in parts]  # 0-d: one row each
    joined = [_numpy(leaf) for leaf in _leaves(concat_outputs(parts, to_numpy=False))]
    per_leaf = [np.split(array, np.cumsum([r[i] for r in rows])[:-1]) for i, array in enumerate(joined)]
    return [_rebuild(s, iter([views[b] for views in per_leaf])) for b, s in enumerate(skeletons)]


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
        accumulation_steps: `eval_accumulation_steps`: outputs stay on the device for this many
            batches, then go to the CPU as numpy in one copy. None moves each batch as it comes.
    """

    world_size: int = 1
    keep_outputs: bool = False
    include_inputs: bool = False
    include_losses: bool = False
    batch_metrics: Callable | None = None
    accumulation_steps: int | None = None
    concat_batches: bool = True  # eval_do_concat_batches: False keeps a list of per-batch arrays
    return_outputs: bool = False  # predictions and labels are returned even when batch_metrics consumes them
    loss_sum: torch.Tensor | None = None
    item_sum: torch.Tensor | None = None
    num_samples: int = 0
    batches: list[tuple[Any, Any, Any, Any]] = field(default_factory=list)  # on the CPU, one per batch
    _on_device: list[tuple[Any, Any, Any, Any]] = field(default_factory=list, repr=False)
    _pending: EvalPrediction | None = field(default=None, repr=False)

    def add(self, inputs: dict[str, Any], loss: torch.Tensor | None, n_items: Any, logits: Any, labels: Any) -> None:
        first = next((v for v in inputs.values() if torch.is_tensor(v) and v.dim() >= 1), None)
        batch = first.shape[0] if first is not None else 0
        self.num_samples += batch
        if loss is not None:
            weight = (
                n_items.to(loss.device).float()
                if n_items is not None
                else torch.tensor(float(batch), device=loss.device)
            )
            self.loss_sum = loss * weight if self.loss_sum is None else self.loss_sum + loss * weight
            self.item_sum = weight if self.item_sum is None else self.item_sum + weight
        if not self.keep_outputs:
            return
        ids = inputs.get("input_ids") if self.include_inputs else None
        per_sample = loss.repeat(batch) if self.include_losses and loss is not None else None
        entry = (logits, labels, ids, per_sample)
        if self.batch_metrics is not None and self.world_size == 1:
            if self._pending is not None:
                self.batch_metrics(self._pending, compute_result=False)
            self._pending = _prediction(*_detach(entry, to_cpu=True))
            if self.return_outputs:  # predict(): the outputs come back too
                self.batches.append(_detach(entry[:2] + (None, None), to_cpu=True))
        elif self.accumulation_steps is None or self.batch_metrics is not None:
            self.batches.append(_detach(entry, to_cpu=True))
        else:
            self._on_device.append(_detach(entry))
            if len(self._on_device) >= self.accumulation_steps:
                self._move_to_host()

    def _move_to_host(self) -> None:
        """The batches held on the device go to the CPU as numpy, each output in one transfer."""
        held, self._on_device = self._on_device, []
        moved: list[list[Any]] = []
        for column in zip(*held):
            kept = [i for i, value in enumerate(column) if value is not None]
            arrays = iter(to_host([column[i] for i in kept]))
            moved.append([next(arrays) if value is not None else None for value in column])
        del held
        self.batches.extend(zip(*moved))

    def finish(self, accel: Any, compute_metrics: Callable | None, prefix: str) -> EvalOutput:
        """Reduce across ranks, restore dataset order, run the metrics (every rank gets them)."""
        self._move_to_host()
        loss_sum, item_sum = self.loss_sum, self.item_sum
        num_samples = self.num_samples
        if self.world_size > 1:
            from accelerate.utils import gather_object

            device = accel.device
            sums = torch.stack(
                [
                    loss_sum.float() if loss_sum is not None else torch.zeros((), device=device),
                    item_sum.float() if item_sum is not None else torch.zeros((), device=device),
                    torch.tensor(float(num_samples), device=device),
                ]
            ).to(device)
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
        preds = labels = None
        if self.batch_metrics is not None:
            pending = [self._pending] if self._pending is not None else [_prediction(*b) for b in self.batches]
            for i, prediction in enumerate(pending):
                result = self.batch_metrics(prediction, compute_result=i == len(pending) - 1)
            metrics.update((result if pending else None) or {})
            compute_metrics = None  # the batches have been scored; what is left is returning them
        if self.batch_metrics is None or self.return_outputs:
            columns: list[list[Any]] = [[], [], [], []]  # logits, labels, input_ids, per-sample losses
            for entry in self.batches:
                for column, value in zip(columns, entry):
                    if value is not None:
                        column.append(value)
            self.batches.clear()
            if compute_metrics is None:
                columns[2:] = [[], []]  # inputs and losses only ever go to compute_metrics
            join = concat_outputs if self.concat_batches else list
            preds, labels, inputs, losses = (join(c) if c else None for c in columns)
            if compute_metrics is not None and preds is not None and labels is not None:
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


def prediction_outputs(
    outputs: Any, labels: tuple[Any, ...] | None, loss_first: bool, ignore_keys: Sequence[str]
) -> tuple[Any, Any]:
    """(logits, labels) of one evaluated batch, as HF's `prediction_step` returns them.

    Logits are every tensor of the outputs but the loss and `ignore_keys` (one tensor, or a tuple;
    a tuple output's first item is the loss when `loss_first`); labels are one tensor, a tuple of
    them, or None.
    """
    if isinstance(outputs, Mapping):
        logits = tuple(v for k, v in outputs.items() if k not in set(ignore_keys) | {"loss"} and torch.is_tensor(v))
    else:
        logits = tuple(outputs[1:] if loss_first else outputs)
    if labels is not None and len(labels) == 1:
        return (logits[0] if len(logits) == 1 else logits), labels[0]
    return (logits[0] if len(logits) == 1 else logits), labels
