"""Linear + cross-entropy in chunks of rows: a causal LM's loss without its `(tokens, vocab)` logits.

For a 128k vocabulary the logits of batch 4 x 1,024 tokens are 2.1 GB in fp32, and the plain path
holds them, their softmax and their gradient at once. Here each chunk of rows gets its logits, its
loss and, while they are at hand, its gradients (the softmax minus the target, times the head's
weight for the hidden states and times the hidden states for the weight), so the peak holds one
chunk's logits. The gradients are kept for `backward` (`hidden`'s and the weight's sizes, both far
smaller than the logits), so nothing is recomputed: Liger Kernel's and Apple's Cut Cross-Entropy
do the same on CUDA with Triton; this one is plain PyTorch, so it runs on CPU and everywhere.

The arithmetic is `torch.nn.functional.cross_entropy`'s, label smoothing and ignore index
included; the normalisation stays `losses.lm_loss`'s (summed, divided once by `num_items_in_batch`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .losses import IGNORE_INDEX, router_loss

# Elements of one chunk's logits (fp32: 128 MiB); 261 rows at a 128,256 vocabulary
CHUNK_ELEMENTS = 2**25
# Config attributes of models that change the logits after the head (Gemma 2/3's softcapping,
# Cohere's logit_scale, Granite's logits_scaling): the chunked loss would leave those out
POST_HEAD_SCALING = ("final_logit_softcapping", "logit_scale", "logits_scaling")


class _LinearCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of `hidden @ weight.T + bias` against `labels`; gradients made in forward."""

    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        labels: torch.Tensor,
        label_smoothing: float,
        ignore_index: int,
        grads: tuple[bool, bool, bool],
    ) -> torch.Tensor:
        rows, vocab = hidden.shape[0], weight.shape[0]
        chunk = max(1, CHUNK_ELEMENTS // vocab)
        grad_hidden = torch.empty_like(hidden) if grads[0] else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if grads[1] else None
        grad_bias = torch.zeros(vocab, dtype=torch.float32, device=weight.device) if grads[2] else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, rows, chunk):
            h, y = hidden[start : start + chunk], labels[start : start + chunk]
            z = F.linear(h, weight, bias).float()  # the head's dtype (autocast's too), softmax in fp32
            keep = y.ne(ignore_index)
            target = torch.where(keep, y, 0)
            target_logit = z.gather(1, target[:, None]).squeeze(1)
            mean_logit = z.mean(dim=-1) if label_smoothing else None
            # one exp pass serves the loss and the gradient (logsumexp and then softmax would take two)
            top = z.amax(dim=-1, keepdim=True)
            e = z.sub_(top).exp_()  # in place of the logits
            sums = e.sum(dim=-1)
            lse = top.squeeze(1) + sums.log()
            per_row = lse - target_logit  # -log p(target)
            if mean_logit is not None:
                per_row = (1 - label_smoothing) * per_row + label_smoothing * (lse - mean_logit)
            total += per_row.masked_fill(~keep, 0).sum()
            if not any(grads):
                continue
            g = e.div_(sums[:, None])  # softmax
            g.scatter_add_(1, target[:, None], torch.full_like(g[:, :1], -(1 - label_smoothing)))
            if label_smoothing:
                g.sub_(label_smoothing / vocab)
            g.mul_(keep[:, None])
            g = g.to(h.dtype)
            if grad_hidden is not None:
                torch.mm(g, weight.to(g.dtype), out=grad_hidden[start : start + chunk])
            if grad_weight is not None:
                if g.dtype == torch.float32:  # accumulate in place: no (vocab, hidden) temporary per chunk
                    grad_weight.addmm_(g.t(), h)
                else:
                    grad_weight += (g.t() @ h).float()
            if grad_bias is not None:
                grad_bias += g.float().sum(dim=0)
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx: Any, grad_total: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        scale = grad_total.float()
        return (
            None if grad_hidden is None else grad_hidden * scale.to(grad_hidden.dtype),
            None if grad_weight is None else (grad_weight * scale).to(ctx.weight_dtype),
            None if grad_bias is None else (grad_bias * scale).to(ctx.weight_dtype),
            None,
            None,
            None,
            None,
        )


def linear_cross_entropy(
    hidden: torch.Tensor,
    head: nn.Linear,
    labels: torch.Tensor,
    *,
    shift: bool,
    num_items_in_batch: torch.Tensor | int | None = None,
    label_smoothing: float = 0.0,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """`losses.lm_loss(head(hidden), labels, ...)`, equal in value and gradients, without the logits.

    Args:
        hidden: `(..., H)` inputs of the head (the decoder's last hidden states).
        head: The output projection, `(V, H)` weight and optional bias.
        labels, shift, num_items_in_batch, label_smoothing, ignore_index: as `losses.lm_loss`.

    Returns:
        A 0-dim float32 loss.
    """
    if shift:
        labels = F.pad(labels, (0, 1), value=ignore_index)[..., 1:]  # position t predicts token t+1
    flat = hidden.reshape(-1, hidden.shape[-1])
    flat_labels = labels.reshape(-1).to(flat.device)
    enabled = torch.is_grad_enabled()
    grads = (
        enabled and flat.requires_grad,
        enabled and head.weight.requires_grad,
        enabled and head.bias is not None and head.bias.requires_grad,
    )
    total = _LinearCrossEntropy.apply(flat, head.weight, head.bias, flat_labels, label_smoothing, ignore_index, grads)
    if num_items_in_batch is None:
        num_items_in_batch = flat_labels.ne(ignore_index).sum()
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


def worth_chunking(head: nn.Linear, labels: torch.Tensor) -> bool:
    """Whether a micro-batch's logits exceed one chunk. When they don't, chunking saves nothing and
    the plain path runs: small-vocabulary runs keep transformers' arithmetic to the last bit."""
    return labels.numel() * head.out_features > CHUNK_ELEMENTS


def chunkable_head(model: nn.Module) -> tuple[nn.Linear | None, str]:
    """The output projection the chunked loss can stand in for, or None and why not.

    A causal LM qualifies when `get_output_embeddings()` is a plain `nn.Linear` (not a LoRA or
    quantized layer) and its config changes nothing after the head (`POST_HEAD_SCALING`).
    """
    get = getattr(model, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if head is None:
        return None, "the model has no output embeddings (get_output_embeddings)"
    if type(head) is not nn.Linear:
        return None, f"its output layer is a {type(head).__name__}, not a plain nn.Linear"
    config = getattr(model, "config", None)
    for name in POST_HEAD_SCALING:
        value = getattr(config, name, None)
        if value not in (None, 1, 1.0):
            return None, f"its config scales the logits after the head ({name}={value})"
    if getattr(config, "output_router_logits", False):
        return None, "its router loss is computed from the labels inside the model (output_router_logits)"
    return head, ""


def choose_chunked_head(model: nn.Module, args: Any, engine: str) -> tuple[nn.Linear | None, str]:
    """The head a causal LM's chunked loss stands in for under `args` and `engine` (Accelerate's
    distributed type), or None and why ('' when it is off by choice: the field, or Liger's own)."""
    if not args.chunked_cross_entropy or args.use_liger_kernel:
        return None, ""  # Liger's fused linear cross-entropy computes the loss inside the patched forward
    if engine in ("FSDP", "DEEPSPEED"):
        return None, f"under {engine}"
    if args.torch_compile:
        return None, "with torch_compile"
    if getattr(getattr(model, "active_peft_config", None), "is_prompt_learning", False):
        return None, "prompt-learning PEFT prepends virtual tokens the labels don't have"
    from .loop_utils import unwrap_peft

    return chunkable_head(unwrap_peft(model))


def chunked_lm_loss(
    model: nn.Module, head: nn.Linear, model_inputs: dict[str, Any], labels: torch.Tensor, label_smoothing: float
) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """A causal LM's forward and mean token loss without its logits.

    The head returns its input during the forward, so `outputs.logits` are the last hidden states;
    `outputs["logits"]` is then set to None (the real logits were never made).

    Returns:
        `(token_loss, loss, outputs)`: the mean token loss, that plus any router loss the model
        returns (`aux_loss`), and the model's outputs.
    """
    with head_input(head):
        outputs = model(**model_inputs)
    mapping = isinstance(outputs, Mapping)
    hidden = outputs["logits"] if mapping else outputs[0]
    token_loss = linear_cross_entropy(hidden, head, labels, shift=True, label_smoothing=label_smoothing)
    aux = router_loss(getattr(model, "config", None), outputs)
    loss = token_loss + aux if aux is not None else token_loss
    if mapping:
        outputs["logits"] = None
    return token_loss, loss, outputs


@contextmanager
def head_input(head: nn.Module) -> Iterator[None]:
    """Within the block, `head` returns its input: the model's `logits` are the hidden states."""
    head.forward = lambda hidden, *args, **kwargs: hidden
    try:
        yield
    finally:
        del head.forward  # the class's forward again
