"""NEFTune (Jain et al., 2023): noisy input embeddings while fine-tuning (`neftune_noise_alpha`).

While the model is in training mode, the input embedding layer's output gets uniform noise in
[-m, m], m = alpha / sqrt(sequence length x hidden size), as in transformers'
`neftune_post_forward_hook`. Evaluation and generation (eval mode) see no noise. The hook lives
only inside `neftune_noise(...)`, so a saved or evaluated model is the plain one.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from .errors import ConfigError


def _noise_hook(alpha: float) -> Any:
    def add_noise(module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        if not module.training:
            return output
        magnitude = alpha / math.sqrt(output.size(1) * output.size(2))
        return output + torch.zeros_like(output).uniform_(-magnitude, magnitude)

    return add_noise


def input_embeddings(model: nn.Module) -> nn.Module:
    """The input embedding layer of a transformers model, or of the model inside a PeftModel.

    Raises:
        ConfigError: the model has no `get_input_embeddings()`.
    """
    get_base: Any = getattr(model, "get_base_model", None)
    base = get_base() if callable(get_base) else model
    get = getattr(base, "get_input_embeddings", None)
    embeddings = get() if callable(get) else None
    if not isinstance(embeddings, nn.Module):
        raise ConfigError(
            f"neftune_noise_alpha is set but {type(base).__name__} has no get_input_embeddings(); unset it"
        )
    return embeddings


@contextmanager
def neftune_noise(models: Sequence[nn.Module], alpha: float | None) -> Iterator[None]:
    """Inside: the input embeddings of `models` add NEFTune noise in training mode (nothing when `alpha` is None)."""
    if alpha is None:
        yield
        return
    layers = {id(layer): layer for layer in (input_embeddings(m) for m in models)}  # MACCT: one shared base
    handles = [layer.register_forward_hook(_noise_hook(alpha)) for layer in layers.values()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
