"""PEFT adapters: the run file's `peft:` section -> a peft config -> an adapted model, and back out.

`build_peft_config` turns the section into any config class peft offers (LoRA by default, others
through `method:`), checking keys against that class's fields; `apply_peft` wraps a model (after
`prepare_model_for_kbit_training` when it is quantized); `use_adapter` switches adapters for the
length of a block; `merge_and_save` folds a saved adapter into its base and writes a full model.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import quiet_hf_progress
from ..errors import CheckpointError, ConfigError, did_you_mean

__all__ = [
    "ADAPTER_CONFIG", "adapter_dir", "adapter_methods_problem", "apply_peft", "build_peft_config", "merge_and_save",
    "peft_methods", "use_adapter",
]  # fmt: skip

ADAPTER_CONFIG = "adapter_config.json"
# PeftConfig fields that peft sets itself; the method is chosen with `method:`.
_INTERNAL_FIELDS = ("peft_type", "auto_mapping", "peft_version")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def peft_methods() -> dict[str, type]:
    """Every method the installed peft offers through a config class, by lower-case PeftType name."""
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    return {str(getattr(key, "value", key)).lower(): cls for key, cls in PEFT_TYPE_TO_CONFIG_MAPPING.items()}


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def build_peft_config(options: Mapping[str, Any] | Any) -> Any:
    """Build a `peft.PeftConfig` from the run file's `peft:` section.

    Every field of the chosen config class passes through unchanged (for LoRA: r, lora_alpha,
    target_modules as a list, a regex string or "all-linear", use_dora, use_rslora,
    init_lora_weights, rank_pattern, ...). `method` (default "lora") picks the class by its
    PeftType name (ia3, lokr, loha, boft, vera, adalora, prefix_tuning, prompt_tuning, ...);
    `task_type` defaults to "CAUSAL_LM"; a `loftq_config` mapping becomes a `peft.LoftQConfig`.

    Args:
        options: The `peft:` mapping, or an already-built `PeftConfig` (returned as is).

    Returns:
        The peft config.

    Raises:
        ConfigError: an unknown method, an unknown key for that method's config, or a value the
            config class rejects.
    """
    import peft

    if isinstance(options, peft.PeftConfig):
        return options
    if not isinstance(options, Mapping):
        raise ConfigError(f"peft must be a mapping of options (e.g. {{r: 8, lora_alpha: 16}}), got {options!r}")
    options = dict(options)
    method = str(options.pop("method", "lora")).lower().replace("-", "_")
    methods = peft_methods()
    if method not in methods:
        raise ConfigError(
            f"peft.method={method!r} is not a PEFT method{did_you_mean(method, methods)}; "
            f"choose one of: {', '.join(sorted(methods))}"
        )
    cls = methods[method]
    known = [f.name for f in dataclasses.fields(cls) if f.init and f.name not in _INTERNAL_FIELDS]
    for key in options:
        if key == "peft_type":
            raise ConfigError(
                f"peft.peft_type is set by peft; choose the method with peft.method (e.g. method: {method})"
            )
        if key not in known:
            hint = did_you_mean(str(key), known).replace("'", "'peft.", 1)
            raise ConfigError(f"unknown key 'peft.{key}' for peft.method {method}{hint}")
    if "task_type" in known:
        options.setdefault("task_type", "CAUSAL_LM")
    if isinstance(options.get("loftq_config"), Mapping):
        try:
            options["loftq_config"] = peft.LoftQConfig(**options["loftq_config"])
        except TypeError as err:
            raise ConfigError(f"peft.loftq_config: {_first_line(err)}; fields are loftq_bits, loftq_iter") from None
    try:
        return cls(**options)
    except ImportError as err:
        raise ConfigError(
            f"peft.method {method} with these options needs a missing package: {_first_line(err)}"
        ) from None
    except (TypeError, ValueError) as err:
        raise ConfigError(f"peft ({method}): {_first_line(err)}") from None


@contextmanager
def _seeded_init(peft_config: Any) -> Iterator[None]:
    """Fix the RNG for PiSSA's randomized SVD ("pissa_niter_N") without touching the caller's.

    PiSSA/OLoRA replace each base weight by a residual that peft recomputes whenever the adapter is
    loaded; with a randomized SVD a different RNG state gives a different residual, so a reloaded,
    resumed or merged adapter would sit on other base weights (logits off by ~3e-2 on a tiny
    model). Every place here that builds such an adapter draws from this same seed.
    """
    init = getattr(peft_config, "init_lora_weights", None)
    if not (isinstance(init, str) and init.startswith("pissa_niter")):
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        yield


def _is_checkpointing(model: nn.Module) -> bool:
    # transformers 5.23 renamed is_gradient_checkpointing (now deprecated) to is_activation_checkpointing
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):
        if hasattr(type(model), name):
            return bool(getattr(model, name))
    return False


@contextmanager
def _quiet_alias_warning() -> Iterator[None]:
    """peft 0.21 reads transformers' deprecated `is_gradient_checkpointing` on every wrap; not the user's to fix."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


def _is_quantized(model: nn.Module) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def apply_peft(
    model: nn.Module,
    config: Mapping[str, Any] | Any,
    *,
    adapter_name: str = "default",
    echo: Callable[[str], Any] | None = print,
) -> Any:
    """Wrap `model` in a `PeftModel` (or add an adapter to one that already is).

    A 4-/8-bit model goes through `prepare_model_for_kbit_training` first (norms in float32,
    base frozen), without switching gradient checkpointing on or off. When checkpointing is on,
    the input embeddings' outputs are made to require grad: with frozen embeddings and reentrant
    checkpointing no gradient would reach the adapters otherwise (transformers #26221).

    Args:
        model: A causal LM (`PreTrainedModel`), or a `PeftModel` to add `adapter_name` to.
        config: The `peft:` options or a `PeftConfig` (see `build_peft_config`).
        adapter_name: Name of the new adapter.
        echo: Called with the trainable-parameter line; None stays silent.

    Returns:
        The `PeftModel`.

    Raises:
        ConfigError: the options are invalid (see `build_peft_config`), or the adapter name is taken.
    """
    import peft

    peft_config = build_peft_config(config)
    if isinstance(model, peft.PeftModel):
        if adapter_name in model.peft_config:
            raise ConfigError(f"the model already has an adapter named {adapter_name!r}; pick another adapter_name")
        with _seeded_init(peft_config):
            model.add_adapter(adapter_name, peft_config)
        peft_model = model
    else:
        checkpointing = _is_checkpointing(model)
        if _is_quantized(model):
            model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=checkpointing)
        with _seeded_init(peft_config), _quiet_alias_warning():
            peft_model = peft.get_peft_model(model, peft_config, adapter_name=adapter_name)
        if checkpointing and hasattr(peft_model, "enable_input_require_grads"):
            # peft 0.21 does this too, keyed on a flag transformers deprecated; done here so it stays done
            peft_model.enable_input_require_grads()
    if echo is not None:
        trainable, total = peft_model.get_nb_trainable_parameters()
        method = str(getattr(peft_config.peft_type, "value", peft_config.peft_type)).lower()
        echo(
            f"peft {method} adapter {adapter_name!r}: {trainable:,} trainable of {total:,} parameters "
            f"({100 * trainable / max(total, 1):.2f}%)"
        )
    return peft_model


def adapter_methods_problem() -> str | None:
    """Why transformers' own adapter methods can't run with the installed peft, in one line; None if they can.

    transformers checks a minimum peft in `add_adapter`, `load_adapter`, `set_adapter`,
    `active_adapters` and `from_pretrained` on an adapter directory, and a release can demand a
    peft newer than any published (transformers 5.24 asks for 0.22 while 0.21.2 is the newest).
    `apply_peft` and `peft.get_peft_model` don't go through those methods and keep working.
    """
    from importlib.metadata import version

    import transformers
    from packaging.version import Version

    try:
        from transformers.integrations.peft import MIN_PEFT_VERSION
    except ImportError:  # transformers without the constant: it checks nothing
        return None
    installed = version("peft")
    if Version(installed) >= Version(MIN_PEFT_VERSION):
        return None
    return (
        f"transformers {transformers.__version__} needs peft >= {MIN_PEFT_VERSION} for model.add_adapter/"
        f"load_adapter/set_adapter, but peft {installed} is installed; pip install 'peft>={MIN_PEFT_VERSION}', "
        f"or wrap the model with trainformers.models.apply_peft (or peft.get_peft_model), which works with peft {installed}"
    )


def _adapter_names(model: nn.Module) -> list[str]:
    configs = getattr(model, "peft_config", None)
    return list(configs) if isinstance(configs, Mapping) else []


def _active_adapter(model: nn.Module) -> str | list[str]:
    import peft

    if isinstance(model, peft.PeftModel):
        return model.active_adapter
    active = model.active_adapters()  # transformers' PeftAdapterMixin: a method returning a list
    return active[0] if len(active) == 1 else list(active)


@contextmanager
def use_adapter(model: nn.Module, name: str) -> Iterator[nn.Module]:
    """Make adapter `name` the active (and trainable) one inside the block; restore on exit.

    Works on a `PeftModel` and on a transformers model given adapters with `add_adapter`. On exit,
    even when the block raises, the previously active adapter and every parameter's
    `requires_grad` flag are restored (peft's `set_adapter` re-flags them).

    Raises:
        ConfigError: the model has no adapter called `name`.
    """
    names = _adapter_names(model)
    if name not in names:
        have = f"it has {', '.join(map(repr, names))}" if names else "it has none (apply_peft or add_adapter first)"
        problem = None if names else adapter_methods_problem()
        raise ConfigError(f"adapter {name!r} not found{did_you_mean(str(name), names)}; {problem or have}")
    previous = _active_adapter(model)
    flags = [(param, param.requires_grad) for param in model.parameters()]
    model.set_adapter(name)
    try:
        yield model
    finally:
        model.set_adapter(previous)
        for param, flag in flags:
            param.requires_grad_(flag)


def adapter_dir(path: str | os.PathLike) -> Path:
    """The directory holding a saved adapter: `path` itself, or a run directory's final/.

    Raises:
        CheckpointError: neither holds an adapter_config.json.
    """
    path = Path(path)
    for candidate in (path, path / "final"):
        if (candidate / ADAPTER_CONFIG).is_file():
            return candidate
    raise CheckpointError(
        f"no PEFT adapter in '{path}' (no {ADAPTER_CONFIG}, nor final/{ADAPTER_CONFIG}); only an adapter can be "
        "merged, so export a full model without --merge"
    )


def merge_and_save(
    run_or_checkpoint_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    base_model: str | os.PathLike | None = None,
    dtype: str = "auto",
) -> Path:
    """Fold a saved adapter into its base model and save the result as a plain HF model.

    The base is the one named in adapter_config.json (`base_model_name_or_path`: a Hub name, or
    the local directory the base was loaded from), loaded unquantized, so a QLoRA adapter merges
    into full-precision weights. The tokenizer is copied when the adapter directory has one.

    Args:
        run_or_checkpoint_dir: A directory with adapter_config.json (final/, checkpoint-N/), or a
            run directory whose final/ has one.
        out_dir: Where to write the merged model (loadable with `AutoModelForCausalLM`).
        base_model: Load this base instead of the one the adapter names.
        dtype: Dtype to load the base in ("auto": as saved).

    Returns:
        `out_dir` as a Path.

    Raises:
        CheckpointError: no adapter, no base model name, a base that cannot be loaded, or a
            method that cannot be merged (prompt learning).
    """
    import peft

    from .loading import load_pretrained

    source = adapter_dir(run_or_checkpoint_dir)
    config = peft.PeftConfig.from_pretrained(str(source))
    base = str(base_model or config.base_model_name_or_path or "")
    if not base:
        raise CheckpointError(
            f"the adapter in '{source}' does not name its base model (base_model_name_or_path is empty); "
            "pass the base model's directory or Hub name (--base)"
        )
    try:
        with quiet_hf_progress():
            model = load_pretrained(base, dtype=dtype)
    except (OSError, ValueError) as err:
        raise CheckpointError(
            f"cannot load the base model '{base}' of the adapter in '{source}' ({_first_line(err)}); "
            "pass its directory or Hub name (--base)"
        ) from None
    with _seeded_init(config), _quiet_alias_warning():
        adapted = peft.PeftModel.from_pretrained(model, str(source))
    if not hasattr(adapted.base_model, "merge_and_unload"):
        method = str(getattr(config.peft_type, "value", config.peft_type)).lower()
        raise CheckpointError(f"peft method {method} adds no weights that can be merged; export it without --merge")
    merged = adapted.merge_and_unload()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with quiet_hf_progress():
        merged.save_pretrained(out)
    if any((source / name).is_file() for name in _TOKENIZER_FILES):
        from transformers import AutoTokenizer

        AutoTokenizer.from_pretrained(source).save_pretrained(out)
    return out
