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

from .errors import TrainformersError

IGNORE_INDEX = -100


def count_label_items(
    batch: Mapping[str, Any], *, shift: bool, label_names: Sequence[str] = ("labels",)
) -> torch.Tensor:
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
        # shift the labels, not the logits: slicing logits[..., :-1, :] copies the largest tensor
        # of the step (bench/decoder_lm.py measured ~13 ms/step at 20M params, vocab 8192)
        labels = F.pad(labels, (0, 1), value=ignore_index)[..., 1:]  # position t predicts token t+1
    # (..., V) -> (N, V) and (...) -> (N,): cross_entropy wants flat rows (a view, no copy)
    flat_logits = logits.reshape(-1, logits.shape[-1])
    if flat_logits.dtype != torch.float32:
        flat_logits = flat_logits.float()  # half-precision logits: the softmax runs in fp32
    flat_labels = labels.reshape(-1).to(flat_logits.device)
    total = F.cross_entropy(
        flat_logits, flat_labels, ignore_index=ignore_index, reduction="sum", label_smoothing=label_smoothing
    )
    if num_items_in_batch is None:
        num_items_in_batch = flat_labels.ne(ignore_index).sum()
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


def compute_router_auxiliary_loss(
    router_losses: Sequence[Any],
    load_balance_coef: float = 0.01,
    auxiliary_coef: float = 0.0,
    z_loss_coef: float = 0.001,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Aggregate the router terms of every mixture-of-experts layer, averaged over layers.

    Per layer, with C experts, f_i the share of token->expert assignments that went to expert i
    and P_i the mean router probability of expert i:

    - load balance `C * sum_i f_i * P_i` (1.0 when perfectly balanced; gradient through P),
    - auxiliary `sum_i (f_i - 1/C)^2` (0 when balanced; counts only, so it carries no gradient:
      a usage-imbalance measure unless given a weight for logging-driven experiments),
    - z-loss `mean(logsumexp(router_logits)^2)` (keeps router logits small).

    Args:
        router_losses: One item per MoE layer with `fraction` (f), `probability` (P) and `z`
            (objects with those attributes, or dicts with those keys).
        load_balance_coef, auxiliary_coef, z_loss_coef: Weights of the three terms.

    Returns:
        `(weighted_total, terms)` where terms holds `load_balance_loss`, `auxiliary_loss`,
        `router_z_loss` and `expert_usage_max` (the busiest expert's share, for the log).
    """

    def get(item: Any, name: str) -> torch.Tensor:
        return item[name] if isinstance(item, Mapping) else getattr(item, name)

    load, aux, z, busiest = [], [], [], []
    for layer in router_losses:
        f, p = get(layer, "fraction").float(), get(layer, "probability").float()
        experts = f.numel()
        load.append(experts * (f * p).sum())
        aux.append((f - 1.0 / experts).pow(2).sum())
        z.append(get(layer, "z").float())
        busiest.append(f.max())
    terms = {
        "load_balance_loss": torch.stack(load).mean(),
        "auxiliary_loss": torch.stack(aux).mean(),
        "router_z_loss": torch.stack(z).mean(),
        "expert_usage_max": torch.stack(busiest).mean(),
    }
    total = (
        load_balance_coef * terms["load_balance_loss"]
        + auxiliary_coef * terms["auxiliary_loss"]
        + z_loss_coef * terms["router_z_loss"]
    )
    return total, terms


def router_loss(config: Any, outputs: Any) -> torch.Tensor | None:
    """The router (load-balancing) loss a MoE model adds to its own loss, for a loss computed outside
    the model (label smoothing, the chunked loss), or None.

    `DecoderLM` returns it weighted (`aux_loss`); transformers' MoE models return it unweighted
    when `output_router_logits` is on and add `router_aux_loss_coef` times it themselves.
    """
    aux = outputs.get("aux_loss") if isinstance(outputs, Mapping) else None
    if aux is None:
        return None
    if getattr(config, "output_router_logits", False):
        return getattr(config, "router_aux_loss_coef", 0.0) * aux.to(torch.float32)
    return aux


def model_output_loss(outputs: Any, label_names: Sequence[str]) -> torch.Tensor:
    """The loss a model's forward returned (`outputs.loss`, or the first item of a tuple).

    Raises:
        TrainformersError: the outputs hold no loss.
    """
    loss = outputs.get("loss") if isinstance(outputs, Mapping) else (outputs[0] if isinstance(outputs, tuple) else None)
    if loss is None:
        got = list(outputs.keys()) if isinstance(outputs, Mapping) else type(outputs).__name__
        raise TrainformersError(
            f"the model's forward returned no loss (got {got}); put labels in the batch ({', '.join(label_names)}) "
            "or pass compute_loss_func="
        )
    return loss
