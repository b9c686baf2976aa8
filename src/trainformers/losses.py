"""Loss normalisation: the one place where a loss is divided by a count.

The trainer sums token losses over a whole accumulation window (and over ranks) and divides once
by the number of label items in that window. Models return a mean over their own micro-batch, so
a micro-batch's share is `mean * n_micro / n_window`; doing it here keeps batch 8 x accumulation 1
and batch 2 x accumulation 4 identical (transformers PR #34191 is the bug this avoids).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def count_label_items(batch: Mapping[str, Any], *, shift: bool, label_names: Sequence[str] = ("labels",)) -> torch.Tensor:
    """Count the items a micro-batch's mean loss averages over, as a tensor (no host sync).

    Integer labels count the positions that are not `-100` (after the causal shift when `shift`);
    float labels (regression, multi-label) count every element; a batch without `labels`
    (question answering's start/end positions) counts rows.

    Args:
        batch: The model inputs of one micro-batch.
        shift: True for causal LMs, whose loss predicts `labels[..., 1:]`.
        label_names: The label keys of the batch, first one used.

    Returns:
        A 0-dim integer tensor on the labels' device.
    """
    if "shift_labels" in batch:
        return batch["shift_labels"].ne(IGNORE_INDEX).sum()
    labels = batch.get("labels")
    if labels is None:
        for name in label_names:
            if batch.get(name) is not None:
                labels = batch[name]
                break
        if labels is None:
            raise ValueError("batch holds no labels to count")
        return torch.tensor(labels.shape[0], device=labels.device)
    if labels.is_floating_point():
        return torch.tensor(labels.numel(), device=labels.device)
    if shift:
        labels = labels[..., 1:]
    return labels.ne(IGNORE_INDEX).sum()


def window_share(mean_loss: torch.Tensor, n_micro: torch.Tensor, n_window: torch.Tensor) -> torch.Tensor:
    """Turn a micro-batch mean into its share of the accumulation window's mean.

    `mean * n_micro / n_window`; summing the shares of a window gives the mean over every label
    item of the window, whatever the split into micro-batches.
    """
    return mean_loss * (n_micro.to(mean_loss.dtype) / n_window.to(mean_loss.dtype))


def lm_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    shift: bool,
    num_items_in_batch: torch.Tensor | int | None = None,
    label_smoothing: float = 0.0,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Token-level cross-entropy, summed and divided once.

    Args:
        logits: `(..., V)` scores.
        labels: `(...)` target ids, `ignore_index` where there is nothing to learn.
        shift: Predict `labels[..., 1:]` from `logits[..., :-1, :]` (causal LMs).
        num_items_in_batch: Divide the summed loss by this (the window's label count); None means
            the mean over this batch's non-ignored labels.
        label_smoothing: Mass given uniformly to every class, as `torch.nn.CrossEntropyLoss`.
        ignore_index: Label value that contributes nothing.

    Returns:
        A 0-dim float32 loss.
    """
    if shift:
        logits = logits[..., :-1, :]
        labels = labels[..., 1:]
    # (..., V) -> (N, V) and (...) -> (N,): cross_entropy wants flat rows
    flat_logits = logits.reshape(-1, logits.shape[-1]).float()
    flat_labels = labels.reshape(-1).to(flat_logits.device)
    total = F.cross_entropy(
        flat_logits, flat_labels, ignore_index=ignore_index, reduction="sum", label_smoothing=label_smoothing
    )
    if num_items_in_batch is None:
        num_items_in_batch = flat_labels.ne(ignore_index).sum()
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch
