"""Build the `accelerate.Accelerator` a run needs from `TrainingArguments`.

Distributed engines (DDP, FSDP, DeepSpeed) are Accelerate's; this module only translates the HF
field names into Accelerate's plugins and checks what the device can do.
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import platform
import sys
from datetime import timedelta
from pathlib import Path
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

from .errors import ConfigError, did_you_mean


def _fsdp_plugin(args: Any) -> Any:
    if not args.fsdp:
        return None
    from accelerate import FullyShardedDataParallelPlugin

    options = set(args.fsdp)
    config = dict(args.fsdp_config or {})
    strategy = next(
        (
            s.upper()
            for s in ("full_shard", "shard_grad_op", "hybrid_shard", "hybrid_shard_zero2", "no_shard")
            if s in options
        ),
        "FULL_SHARD",
    )
    kwargs: dict[str, Any] = {"sharding_strategy": strategy}
    if "offload" in options:
        from torch.distributed.fsdp import CPUOffload

        kwargs["cpu_offload"] = CPUOffload(offload_params=True)
    if "auto_wrap" in options:
        kwargs["auto_wrap_policy"] = "transformer_based_wrap"
    # fsdp_config keys are Accelerate's plugin fields, with or without HF's "fsdp_" prefix
    kwargs.update({key.removeprefix("fsdp_"): value for key, value in config.items()})
    known = set(inspect.signature(FullyShardedDataParallelPlugin).parameters)
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ConfigError(
            f"training.fsdp_config key '{unknown[0]}' is not an Accelerate FSDP setting"
            f"{did_you_mean(unknown[0], sorted(known))}; see accelerate.FullyShardedDataParallelPlugin"
        )
    try:
        return FullyShardedDataParallelPlugin(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"training.fsdp_config is not valid for Accelerate: {str(err).splitlines()[0]}") from None


def check_engines(args: Any) -> None:
    """Refuse a DeepSpeed request this run cannot carry out (Accelerate would drop it without a word).

    Called by `build_accelerator`, and by the command line before any data or weights load.

    Raises:
        ConfigError: deepspeed without its package or without a CUDA GPU.
    """
    if not args.deepspeed:
        return
    if importlib.util.find_spec("deepspeed") is None:
        raise ConfigError(
            "training.deepspeed is set but the deepspeed package is not installed; pip install deepspeed "
            "(it needs a CUDA GPU), or drop training.deepspeed"
        )
    if args.use_cpu or not torch.cuda.is_available():
        raise ConfigError("training.deepspeed needs a CUDA GPU and this run has none; drop training.deepspeed")


def _deepspeed_plugin(args: Any) -> Any:
    if not args.deepspeed:
        return None
    check_engines(args)
    from accelerate import DeepSpeedPlugin

    config = args.deepspeed
    if isinstance(config, (str, Path)):
        config = json.loads(Path(config).read_text())
    return DeepSpeedPlugin(hf_ds_config=config)


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
    if args.fp16 and cpu:
        raise ConfigError(
            "training.fp16=True needs a CUDA GPU and none is available; use bf16=True on CPU, or drop fp16"
        )
    for tracker in args.report_to:
        if importlib.util.find_spec(tracker) is None:
            raise ConfigError(
                f"training.report_to names '{tracker}' but it is not installed; pip install {tracker} "
                f"(or trainformers[{tracker}]), or drop it from report_to"
            )
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
    if ddp:
        handlers.append(DistributedDataParallelKwargs(**ddp))
    dynamo = None
    if args.torch_compile:
        from accelerate.utils import TorchDynamoPlugin

        dynamo = TorchDynamoPlugin(
            backend=args.torch_compile_backend or "inductor", mode=args.torch_compile_mode or "default"
        )
    accel_config = dict(args.accelerator_config or {})
    accelerator = Accelerator(
        mixed_precision=mixed,
        cpu=cpu,
        gradient_accumulation_steps=1,
        dataloader_config=DataLoaderConfiguration(
            split_batches=accel_config.get("split_batches", False),
            even_batches=accel_config.get("even_batches", True),
            non_blocking=accel_config.get("non_blocking", False),
        ),
        log_with=list(args.report_to) or None,
        project_config=ProjectConfiguration(project_dir=args.output_dir, logging_dir=args.logging_dir),
        kwargs_handlers=handlers,
        fsdp_plugin=_fsdp_plugin(args),
        deepspeed_plugin=_deepspeed_plugin(args),
        dynamo_plugin=dynamo,
        rng_types=[],  # our samplers are seeded per epoch; nothing to synchronise
        step_scheduler_with_optimizer=False,
    )
    if args.fsdp and accelerator.distributed_type != DistributedType.FSDP:
        # Accelerate applies FSDP only under a distributed launch on supported devices, and otherwise
        # falls back (to DDP, or to no wrapper) without a word
        raise ConfigError(
            f"training.fsdp={' '.join(args.fsdp)} is not applied in this run (Accelerate set it up as "
            f"{accelerator.distributed_type.value}): FSDP needs a distributed launch (accelerate launch or torchrun "
            "with 2+ processes) on CUDA GPUs; drop training.fsdp"
        )
    if fp32_fallback and accelerator.is_main_process and not _said_no_cpu_bf16:
        print(NO_CPU_BF16, file=sys.stderr, flush=True)
        _said_no_cpu_bf16 = True
    return accelerator
