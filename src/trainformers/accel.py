"""Build the `accelerate.Accelerator` a run needs from `TrainingArguments`.

Distributed engines (DDP, FSDP, DeepSpeed) are Accelerate's; this module only translates the HF
field names into Accelerate's plugins and checks what the device can do.
"""

from __future__ import annotations

import importlib.util
import os
import platform
import sys
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import (
    DataLoaderConfiguration,
    DistributedDataParallelKwargs,
    DistributedType,
    InitProcessGroupKwargs,
    ProjectConfiguration,
)
from torch import nn

from .allocator import apply_malloc_policy
from .deepspeed_config import deepspeed_builds, load_deepspeed_config, resolve_deepspeed_config, zero_stage
from .errors import ConfigError
from .fsdp import fsdp_plugin, fsdp_settings
from .trackers import build_trackers, check_trackers


def _fsdp_request(args: Any, cpu: bool) -> Any:
    """Accelerate's FSDP plugin for this run: from `fsdp`/`fsdp_config`, else from `accelerate launch
    --use_fsdp` (its FSDP_* environment); None without FSDP."""
    settings = fsdp_settings(args.fsdp, args.fsdp_config)
    if settings is not None:
        return fsdp_plugin(settings, on_cpu=cpu)
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() != "true":
        return None
    from accelerate import FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin()  # read from the launcher's FSDP_* variables
    if cpu and plugin.fsdp_version != 2:
        raise ConfigError("accelerate launch --use_fsdp on CPU needs --fsdp_version 2 (FSDP1 runs only on CUDA GPUs)")
    return plugin


def _shard_on_cpu(plugin: Any, mixed_precision: str) -> None:
    """Make this process's Accelerate state FSDP, as Accelerate does on GPUs but refuses on CPUs.

    Accelerate's FSDP2 code (`fsdp2_prepare_model`, the no_sync and clipping paths, the state dict
    gathering) is device-neutral and runs on a gloo group; only its device check stops it. Setting
    the state it would set lets the CPU run the same code a GPU run does (tests/test_fsdp.py).
    """
    from accelerate.state import AcceleratorState, PartialState

    if mixed_precision != "no":
        plugin.set_mixed_precision(mixed_precision)
    state = AcceleratorState()
    state.fsdp_plugin = plugin
    state.distributed_type = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP


_ENGINE_VARIABLES = ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED")


def _reset_engine_state() -> None:
    """Forget the engine an earlier Accelerator of this process set up (FSDP, DeepSpeed).

    Accelerate keeps the distributed type in the process-wide `PartialState`, and an Accelerator
    built after an FSDP or DeepSpeed one would take that type over without its plugin. The type
    the launch itself gives is put back: multi-GPU on CUDA, multi-CPU for CPU processes under a launcher.
    """
    from accelerate.state import PartialState

    shared = PartialState._shared_state
    if shared.get("distributed_type") not in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        return
    device = shared.get("device")
    if device is not None and device.type == "cuda":
        shared["distributed_type"] = DistributedType.MULTI_GPU
    else:
        launched = shared.get("num_processes", 1) > 1 or "LOCAL_RANK" in os.environ  # torchrun's, one process too
        shared["distributed_type"] = DistributedType.MULTI_CPU if launched else DistributedType.NO


def check_liger(cpu: bool) -> None:
    """Refuse `use_liger_kernel` where Liger Kernel can't run (its kernels are Triton, CUDA only).

    Raises:
        ConfigError: the package is missing, or the run is on the CPU.
    """
    if importlib.util.find_spec("liger_kernel") is None:
        raise ConfigError(
            "training.use_liger_kernel=True but liger-kernel is not installed; pip install liger-kernel, or drop it "
            "(chunked_cross_entropy, on by default, already keeps the logits out of memory)"
        )
    if cpu:
        raise ConfigError(
            "training.use_liger_kernel=True needs a CUDA GPU (its kernels are Triton) and this run is on the CPU; "
            "drop it (chunked_cross_entropy, on by default, keeps the logits out of memory on CPU)"
        )


def check_engines(args: Any, *, launched: bool = True) -> None:
    """Refuse a DeepSpeed request this run cannot carry out (Accelerate would drop it without a word).

    Called by `build_accelerator`, and by the command line before any data or weights load.

    DeepSpeed runs on CUDA GPUs, and on CPU processes over gloo (how the suite tests it), always
    under a launcher (`accelerate launch`, `torchrun`, `deepspeed`), one process too.

    Args:
        args: The run's `TrainingArguments`.
        launched: This process is the one that trains (False: the command line, about to start them).

    Raises:
        ConfigError: deepspeed without its package or a launcher; a config section this trainer
            does not hand to DeepSpeed (optimizer, scheduler).
    """
    if not args.deepspeed:
        return
    if getattr(args, "nan_policy", "stop") == "skip_step":
        raise ConfigError(
            "nan_policy='skip_step' can't be honoured under DeepSpeed, whose engine steps inside the backward "
            "before the loss can be checked; use nan_policy: stop (stops before any checkpoint) or ignore"
        )
    _check_deepspeed_config(load_deepspeed_config(args.deepspeed))
    if importlib.util.find_spec("deepspeed") is None:
        raise ConfigError(
            "training.deepspeed is set but the deepspeed package is not installed; pip install deepspeed "
            "(or trainformers[deepspeed]), or drop training.deepspeed"
        )
    if launched and "LOCAL_RANK" not in os.environ:
        raise ConfigError(
            "training.deepspeed needs a distributed launch, one process too (accelerate launch, torchrun, or "
            "trainformers train --num-processes N); drop training.deepspeed to train without it"
        )


def _check_deepspeed_config(config: dict[str, Any]) -> None:
    owned = [name for name, present in zip(("optimizer", "scheduler"), deepspeed_builds(config)) if present]
    if owned:
        raise ConfigError(
            f"training.deepspeed has a '{owned[0]}' section; trainformers builds the optimizer and scheduler from "
            "training.optim / lr_scheduler_type (lr, betas, eps, weight_decay, warmup from the training arguments) "
            "and DeepSpeed wraps them: remove the section"
        )
    zero_stage(config)


def _deepspeed_plugin(args: Any) -> Any:
    if not args.deepspeed:
        return None
    check_engines(args)
    from accelerate import DeepSpeedPlugin

    return DeepSpeedPlugin(hf_ds_config=load_deepspeed_config(args.deepspeed))


def configure_deepspeed(accel: Any, args: Any, num_training_steps: int, model: nn.Module) -> int:
    """Complete the DeepSpeed config of `accel` from the training arguments, before the model is prepared.

    Called once the number of optimizer steps is known; the config may come from
    `training.deepspeed` or from `accelerate launch --use_deepspeed`. "auto" values are filled,
    contradictions refused (`deepspeed_config.resolve_deepspeed_config`); ZeRO-3 is told to gather
    its weights when saving, so that `final/` is one consolidated model.

    Returns:
        The ZeRO stage.

    Raises:
        ConfigError: a contradiction, an "auto" left unfilled, or ZeRO-3 told not to gather on save.
    """
    config = accel.state.deepspeed_plugin.deepspeed_config
    _check_deepspeed_config(config)  # a config from accelerate launch --deepspeed_config_file is first seen here
    resolved = resolve_deepspeed_config(
        config,
        args,
        world_size=accel.num_processes,
        num_training_steps=num_training_steps,
        warmup_steps=args.get_warmup_steps(num_training_steps),
        hidden_size=getattr(getattr(model, "config", None), "hidden_size", None),
    )
    stage = zero_stage(resolved)
    if stage == 3:
        zero = resolved["zero_optimization"]
        if zero.setdefault("stage3_gather_16bit_weights_on_model_save", True) is not True:
            raise ConfigError(
                "deepspeed zero_optimization.stage3_gather_16bit_weights_on_model_save=false: final/ could not hold "
                "the consolidated model; set it true (or leave it out)"
            )
    config.update(resolved)
    return stage


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 in hardware: AVX512-BF16 or AMX on x86, BF16 on Arm.

    Only then is bf16 autocast faster than fp32. oneDNN also accepts bf16 on AVX512 CPUs without
    those instructions (`torch.ops.mkldnn._is_mkldnn_bf16_supported()` is True there) but emulates
    it, and torch's own bf16 matmul without oneDNN is slower still; neither counts.
    """
    if not torch.backends.mkldnn.is_available():
        return False
    x86 = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private torch helpers; absent means no
    if any(getattr(torch.cpu, name, lambda: False)() for name in x86):
        return True
    if platform.machine().lower() in ("aarch64", "arm64"):
        try:  # on Arm, oneDNN's bf16 check is the BF16 extension itself
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return False


_said_emulated_bf16 = False


def emulated_bf16_notice(models: Iterable[nn.Module | None], device: torch.device) -> str | None:
    """One line when a model holds bfloat16 weights on a CPU without native bf16 matmul, else None.

    Not a fallback, the weights' dtype is the user's, but a cost nobody expects: every matmul with
    those weights is emulated there, 5-170x slower than fp32 (bench/cpu_bf16_matmul.py; the
    gradient of the inputs, a non-transposed matmul, is the worst). Loading the model in fp32 is
    the speed fix; bf16 still halves the memory of a frozen base.
    """
    global _said_emulated_bf16
    if _said_emulated_bf16 or device.type != "cpu" or cpu_has_native_bf16():
        return None
    bf16 = {id(p): p.numel() for m in models if m is not None for p in m.parameters() if p.dtype == torch.bfloat16}
    held = sum(bf16.values())  # a MACCT base serves both sides: counted once
    if not held:
        return None
    _said_emulated_bf16 = True  # once per process, not once per hyperparameter-search trial
    return (
        f"the model holds {held / 1e6:.1f}M bfloat16 parameters and this CPU has no native bf16 matmul "
        "(AVX512-BF16 or AMX, or Arm BF16): each bf16 matmul is emulated, 5-170x slower than fp32 "
        "(docs/benchmarks.md); load the model in float32 for speed, keep bf16 only to save memory"
    )


def start_notices(cpu_malloc: str, models: Iterable[nn.Module | None], device: torch.device) -> str | None:
    """What a trainer says as `train()` starts (both trainers): the malloc policy it applied, when
    chosen (`allocator.apply_malloc_policy`), and bf16 weights on an emulating CPU; None for nothing."""
    lines = [apply_malloc_policy(cpu_malloc), emulated_bf16_notice(models, device)]
    return "\n".join(line for line in lines if line) or None


NO_CPU_BF16 = "bf16=True: this CPU has no native bf16 matmul (needs AVX512-BF16 or AMX, or Arm BF16); training in fp32"
_said_no_cpu_bf16 = False  # the line is printed once per process, not once per hyperparameter-search trial


def build_accelerator(args: Any) -> Accelerator:
    """An Accelerator configured from `args`.

    Gradient accumulation is done by the trainer (it needs the window's label count before the
    first forward), so Accelerate is told 1 and never rescales the loss.

    `bf16=True` on a CPU without native bf16 matmul (`cpu_has_native_bf16`) trains in fp32, and
    the main process says so in one line: autocast there would only add casts.

    Raises:
        ConfigError: fp16 without a CUDA device.
    """
    global _said_no_cpu_bf16
    from accelerate.state import AcceleratorState

    # Accelerate keeps one state per process and takes plugins (compile, precision, FSDP) only from
    # the first Accelerator; drop that, keeping the process group, so each Trainer gets its own
    AcceleratorState._reset_state(reset_partial_state=False)
    cpu = bool(args.use_cpu) or not torch.cuda.is_available()
    if not torch.cuda.is_available():
        # what DeepSpeed would pick itself, said up front: else importing it (transformers does, to
        # save a model) prints a "Setting accelerator to CPU" warning into every run's output
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    deepspeed = bool(args.deepspeed) or os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    if deepspeed and args.use_cpu:
        raise ConfigError("training.deepspeed with use_cpu=True: DeepSpeed would take the GPUs anyway; drop one")
    if args.fp16 and cpu:
        raise ConfigError(
            "training.fp16=True needs a CUDA GPU and none is available; use bf16=True on CPU, or drop fp16"
        )
    if args.use_liger_kernel:
        check_liger(cpu)
    check_trackers(args)
    mixed = "bf16" if args.bf16 else "fp16" if args.fp16 else "no"
    fp32_fallback = mixed == "bf16" and cpu and not cpu_has_native_bf16()
    if fp32_fallback:
        mixed = "no"
    if args.tf32 is not None and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = bool(args.tf32)
        torch.backends.cudnn.allow_tf32 = bool(args.tf32)
    ddp = {
        key: getattr(args, f"ddp_{key}")
        for key in ("find_unused_parameters", "bucket_cap_mb", "broadcast_buffers", "static_graph")
        if getattr(args, f"ddp_{key}", None) is not None
    }
    handlers: list[Any] = [InitProcessGroupKwargs(timeout=timedelta(seconds=args.ddp_timeout))]
    if args.ddp_backend and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Accelerate only initialises a process group when launched distributed; naming a
        # backend in a single process would make it ask an uninitialised group for its size
        handlers[0].backend = args.ddp_backend
    elif deepspeed and cpu:
        # Without a backend Accelerate counts one process on a CUDA-less machine while DeepSpeed
        # starts its own group of all of them: every rank would think itself the only one
        handlers[0].backend = "gloo"
    if ddp:
        handlers.append(DistributedDataParallelKwargs(**ddp))
    dynamo = None
    if args.torch_compile:
        from accelerate.utils import TorchDynamoPlugin

        dynamo = TorchDynamoPlugin(
            backend=args.torch_compile_backend or "inductor", mode=args.torch_compile_mode or "default"
        )
    accel_config = dict(args.accelerator_config or {})
    _reset_engine_state()
    fsdp = _fsdp_request(args, cpu)
    launcher_env = {name: os.environ.get(name) for name in _ENGINE_VARIABLES}
    accelerator = Accelerator(
        mixed_precision=mixed,
        # Accelerate starts DeepSpeed only off its CPU mode; without CUDA the engine then runs on
        # the CPU over gloo
        cpu=cpu and not deepspeed,
        # DeepSpeed's engine accumulates itself (the step kernel tells it where a window ends)
        gradient_accumulation_steps=args.gradient_accumulation_steps if deepspeed else 1,
        dataloader_config=DataLoaderConfiguration(
            split_batches=accel_config.get("split_batches", False),
            even_batches=accel_config.get("even_batches", True),
            non_blocking=accel_config.get("non_blocking", False),
        ),
        log_with=build_trackers(args) or None,  # HF names: W&B project, MLflow experiment, run name
        project_config=ProjectConfiguration(project_dir=args.output_dir, logging_dir=args.logging_dir),
        kwargs_handlers=handlers,
        fsdp_plugin=fsdp,
        deepspeed_plugin=_deepspeed_plugin(args),
        dynamo_plugin=dynamo,
        rng_types=[],  # our samplers are seeded per epoch; nothing to synchronise
        step_scheduler_with_optimizer=False,
    )
    # Accelerate records a plugin it was given in the environment, where the next Accelerator of
    # this process (another Trainer, another trial) would read it back as a request
    for name, value in launcher_env.items():
        if value is None:
            os.environ.pop(name, None)
    engine = accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED) or fsdp is not None
    if engine and args.save_on_each_node:  # asked for by the launcher's flags (the arguments refuse it earlier)
        raise ConfigError(
            "save_on_each_node=True with FSDP or DeepSpeed: their per-rank checkpoint files need a disk every "
            "machine shares; drop save_on_each_node"
        )
    if deepspeed and accelerator.distributed_type != DistributedType.DEEPSPEED:
        raise ConfigError(
            f"DeepSpeed is not applied in this run (Accelerate set it up as {accelerator.distributed_type.value}); "
            "launch with accelerate launch, torchrun or deepspeed, or drop training.deepspeed"
        )
    if fsdp is not None and accelerator.distributed_type != DistributedType.FSDP:
        if accelerator.distributed_type != DistributedType.MULTI_CPU:
            # Accelerate applies FSDP only under a distributed launch, and otherwise falls back
            # (to DDP, or to no wrapper) without a word
            raise ConfigError(
                f"training.fsdp is not applied in this run (Accelerate set it up as "
                f"{accelerator.distributed_type.value}): FSDP needs a distributed launch (accelerate launch, torchrun, "
                "or trainformers train --num-processes N; one GPU too); drop training.fsdp"
            )
        _shard_on_cpu(fsdp, mixed)
    if fp32_fallback and accelerator.is_main_process and not _said_no_cpu_bf16:
        print(NO_CPU_BF16, file=sys.stderr, flush=True)
        _said_no_cpu_bf16 = True
    return accelerator
