"""The two models of a cycle run and their tokenizers, from whatever the user passed.

`resolve_models` turns a dict of two models, one model (copied, or with LoRA configs: one base with
adapters A and B, MACCT), a `PeftModel` with adapters A and B, or a name/path into the pair;
`resolve_tokenizers` does the same for the tokenizers. Every contradiction is a one-line
`ConfigError`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from torch import nn

from ..errors import ConfigError

SIDES = ("A", "B")


def other(side: str) -> str:
    """The other side of the pair: A <-> B."""
    return "B" if side == "A" else "A"


def is_peft_model(model: Any) -> bool:
    return isinstance(getattr(model, "peft_config", None), Mapping) and hasattr(model, "set_adapter")


def load_model(name: str) -> nn.Module:
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
        pair = {s: load_model(m) if isinstance(m, str) else m for s, m in models.items()}
        if pair["A"] is pair["B"]:
            raise ConfigError("models['A'] and models['B'] are the same object; pass one model to get two copies")
        if peft_configs is not None:
            pair = {s: apply_peft(m, _peft_config_for(peft_configs, s), echo=None) for s, m in pair.items()}
        return pair, False
    model = load_model(models) if isinstance(models, str) else models
    if not isinstance(model, nn.Module):
        raise ConfigError(f"models must be a model, a dict of two or a path, got {type(model).__name__}")
    if is_peft_model(model):
        adapters: Mapping[str, Any] = model.peft_config  # type: ignore[assignment]  # nn.Module's __getattr__ types it as a Tensor
        names = list(adapters)
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
