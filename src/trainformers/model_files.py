"""Model weight files in Hugging Face's format: saved, read back, checked and recast.

`save_model_files` writes what `from_pretrained` loads (safetensors + config.json, or a PEFT
adapter); `load_model_files` reads a checkpoint's weights into a live model; `safetensors_problem`
checks a weights file without reading its tensors (`checkpoint.checkpoint_problem`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import CheckpointError
from .state import write_json
from .state_files import short_error

MODEL_SHARDS = "model_shards"  # a sharded model's DCP folder (sharded.py)
SHARD_MARKER = ".metadata"  # written by DCP's coordinator once every rank's shard is in


def _is_peft(model: nn.Module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:
        return False
    return isinstance(model, PeftModel)


def save_model_files(
    model: nn.Module,
    out_dir: str | os.PathLike,
    *,
    state_dict: dict[str, torch.Tensor] | None = None,
    is_main: bool = True,
) -> None:
    """Save weights in HF format: `save_pretrained` when the model has it, safetensors otherwise."""
    out_dir = Path(out_dir)
    should_save_here = getattr(model, "should_save_on_this_rank", None)
    if is_main and should_save_here is not None and not should_save_here(True):
        _save_hf_files_off_rank_zero(model, out_dir)
        return
    save_pretrained: Any = getattr(model, "save_pretrained", None)
    if save_pretrained is not None:
        with quiet_hf_progress():
            save_pretrained(out_dir, state_dict=state_dict, is_main_process=is_main)
        return
    if is_main:
        from safetensors.torch import save_file, save_model

        out_dir.mkdir(parents=True, exist_ok=True)
        if state_dict is None:
            save_model(model, str(out_dir / "model.safetensors"))
        else:
            save_file({k: v.contiguous() for k, v in state_dict.items()}, str(out_dir / "model.safetensors"))


def cast_saved_weights(folder: str | os.PathLike, dtype: torch.dtype) -> None:
    """Rewrite the floating-point tensors of each safetensors file in `folder` as `dtype`
    (`model.save_dtype`); config.json's dtype follows. Each file is replaced atomically."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    folder = Path(folder)
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata()
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in load_file(str(path)).items()}
        tmp = path.with_name(path.name + ".tmp")
        save_file(tensors, str(tmp), metadata=metadata)
        os.replace(tmp, path)
    config_path = folder / "config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text(encoding="utf-8"))
        key = "torch_dtype" if "torch_dtype" in config and "dtype" not in config else "dtype"
        config[key] = str(dtype).removeprefix("torch.")
        write_json(config, config_path)


def _save_hf_files_off_rank_zero(model: nn.Module, out_dir: Path) -> None:
    """What `save_pretrained` writes, from a process that is not rank 0 (`save_on_each_node`).

    transformers 5's `save_pretrained` writes nothing outside global rank 0 whatever
    `is_main_process` says (`should_save_on_this_rank`), so the main process of every other
    machine writes the same files itself: the configuration and the weights (tied ones once).
    """
    from safetensors.torch import save_model

    out_dir.mkdir(parents=True, exist_ok=True)
    config: Any = model.config
    config.save_pretrained(out_dir)
    generation = getattr(model, "generation_config", None)
    if generation is not None and getattr(model, "can_generate", lambda: False)():
        generation.save_pretrained(out_dir)
    save_model(model, str(out_dir / "model.safetensors"), metadata={"format": "pt"})


@contextmanager
def quiet_hf_progress() -> Iterator[None]:
    """transformers draws a one-shard progress bar per save; in a training loop it is noise."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def read_weights(ckpt_dir: Path) -> dict[str, torch.Tensor]:
    """The consolidated weights in `ckpt_dir` (model.safetensors, or the shards its index names), on the CPU.

    Raises:
        CheckpointError: there are none.
    """
    from safetensors.torch import load_file

    if (ckpt_dir / "model.safetensors").is_file():
        return load_file(str(ckpt_dir / "model.safetensors"))
    if (ckpt_dir / "model.safetensors.index.json").is_file():
        index = json.loads((ckpt_dir / "model.safetensors.index.json").read_text())
        state: dict[str, torch.Tensor] = {}
        for shard in sorted(set(index["weight_map"].values())):
            state.update(load_file(str(ckpt_dir / shard)))
        return state
    if (ckpt_dir / MODEL_SHARDS / SHARD_MARKER).is_file():
        raise CheckpointError(
            f"'{ckpt_dir}' holds FSDP model shards; load it in a run with the same fsdp settings, or use its final/"
        )
    raise CheckpointError(f"no model weights (model.safetensors) in '{ckpt_dir}'; is it a trainformers checkpoint?")


def load_model_files(model: nn.Module, ckpt_dir: str | os.PathLike) -> None:
    """Load weights saved by `save_model_files` into `model`, in place.

    Tied weights are saved once; a parameter missing from the file is accepted only when it
    shares storage with one that was loaded.

    Raises:
        CheckpointError: no weights in the directory, or their names do not match the model.
    """
    from safetensors.torch import load_file

    ckpt_dir = Path(ckpt_dir)
    adapter_file = ckpt_dir / "adapter_model.safetensors"
    if adapter_file.is_file() and _is_peft(model):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(str(adapter_file)))
        return
    if adapter_file.is_file() and getattr(model, "_hf_peft_config_loaded", False):
        # transformers' own add_adapter(): the adapter lives in the model, saved in PEFT format
        from peft import set_peft_model_state_dict

        adapters: Any = getattr(model, "active_adapters", None)
        active = adapters()[0] if adapters is not None else "default"
        set_peft_model_state_dict(model, load_file(str(adapter_file)), adapter_name=active)
        return
    state = read_weights(ckpt_dir)
    result = model.load_state_dict(state, strict=False)
    loaded = {t.data_ptr() for name, t in model.state_dict().items() if name in state}
    params = model.state_dict()
    untied = [k for k in result.missing_keys if params[k].data_ptr() not in loaded]
    if untied or result.unexpected_keys:
        raise CheckpointError(
            f"weights in '{ckpt_dir}' don't match the model (missing {untied[:3]}, unexpected "
            f"{result.unexpected_keys[:3]}); resume with the same model configuration"
        )


def safetensors_problem(path: Path, shapes: Mapping[str, tuple[int, ...]] | None = None) -> str | None:
    """'empty', 'truncated or damaged (...)' or 'of another model (...)' for a bad safetensors file; None when whole."""
    from safetensors import SafetensorError, safe_open

    if path.stat().st_size == 0:
        return "empty"
    try:
        with safe_open(str(path), framework="pt") as f:
            saved = {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        return f"truncated or damaged ({short_error(err)})"
    for name, shape in saved.items():
        want = (shapes or {}).get(name)
        if want is not None and tuple(want) != shape:
            return f"of another model ({name} is {list(shape)} there, {list(want)} here)"
    return None
