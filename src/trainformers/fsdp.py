"""FSDP settings: the HF/axolotl `fsdp` options and `fsdp_config` keys, read once, checked, and
turned into Accelerate's `FullyShardedDataParallelPlugin`.

The engine is PyTorch's `fully_shard` (FSDP2), applied by Accelerate. Where Accelerate will not
apply it because the device is the CPU (it takes FSDP only on accelerators), `accel.py` still
hands the model to Accelerate's FSDP2 path, which runs on a gloo process group as it is: the CPU
is how the suite tests sharding, not a fallback.

`fsdp_config` keys are accepted with or without the `fsdp_` prefix (transformers strips it,
axolotl and `accelerate config` files carry it). Booleans may be strings ("true"), as in those files.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import ConfigError, did_you_mean

WRAP_POLICIES = ("TRANSFORMER_BASED_WRAP", "SIZE_BASED_WRAP", "NO_WRAP")
STATE_DICT_TYPES = ("SHARDED_STATE_DICT", "FULL_STATE_DICT")
SHARDING_STRATEGIES = ("FULL_SHARD", "SHARD_GRAD_OP", "NO_SHARD", "HYBRID_SHARD", "HYBRID_SHARD_ZERO2")
_V1_ONLY = ("backward_prefetch", "forward_prefetch", "limit_all_gathers")
# FSDP2 always behaves as these FSDP1 settings do when true: saying so is accepted, asking otherwise is not
_V2_ALWAYS_TRUE = ("use_orig_params", "sync_module_states")
KNOWN_KEYS = (
    "version",
    "reshard_after_forward",
    "offload_params",
    "cpu_offload",
    "auto_wrap_policy",
    "transformer_layer_cls_to_wrap",
    "min_num_params",
    "activation_checkpointing",
    "cpu_ram_efficient_loading",
    "state_dict_type",
    "sharding_strategy",
    *_V1_ONLY,
    *_V2_ALWAYS_TRUE,
    "xla",
    "xla_fsdp_v2",
    "xla_fsdp_grad_ckpt",
)


@dataclass(frozen=True)
class FsdpSettings:
    """What an FSDP run asked for, in one place (read by `accel.py` and the checkpoint code).

    Attributes:
        version: 2 (`fully_shard`, the default, as in transformers 5) or 1 (CUDA only).
        reshard_after_forward: Free the gathered parameters after the forward (FULL_SHARD) or keep
            them until the backward (SHARD_GRAD_OP).
        sharding_strategy: FSDP1's strategy name (FSDP2 expresses it as `reshard_after_forward`).
        offload_params: Keep parameters, gradients and optimizer state in host memory.
        auto_wrap_policy: Which sub-modules become their own FSDP unit.
        wrap_classes: Layer class names for TRANSFORMER_BASED_WRAP (None: the model's `_no_split_modules`).
        min_num_params: The size threshold of SIZE_BASED_WRAP.
        activation_checkpointing: Recompute each wrapped layer's activations in the backward.
        cpu_ram_efficient_loading: Only rank 0 holds the full weights before sharding.
        state_dict_type: How checkpoints hold the model: each rank its shard, or one consolidated file.
        v1_extras: FSDP1-only plugin settings, passed on when version is 1.
    """

    version: int = 2
    reshard_after_forward: bool = True
    sharding_strategy: str = "FULL_SHARD"
    offload_params: bool = False
    auto_wrap_policy: str = "TRANSFORMER_BASED_WRAP"
    wrap_classes: tuple[str, ...] | None = None
    min_num_params: int = 0
    activation_checkpointing: bool = False
    cpu_ram_efficient_loading: bool = False
    state_dict_type: str = "SHARDED_STATE_DICT"
    v1_extras: tuple[tuple[str, Any], ...] = ()

    @property
    def sharded_checkpoints(self) -> bool:
        return self.state_dict_type == "SHARDED_STATE_DICT"


def _flag(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ConfigError(f"training.fsdp_config {key}={value!r} must be true or false")


def _pick(key: str, value: Any, choices: tuple[str, ...]) -> str:
    name = str(value).upper()
    if name not in choices:
        raise ConfigError(
            f"training.fsdp_config {key}={value!r} is not one of {', '.join(choices)}{did_you_mean(name, choices)}"
        )
    return name


def normalise_fsdp_config(config: dict[str, Any] | None) -> dict[str, Any]:
    """`fsdp_config` with the `fsdp_` prefixes dropped, every key checked (a did-you-mean for the rest).

    Raises:
        ConfigError: an unknown key, or one given twice (with and without the prefix).
    """
    out: dict[str, Any] = {}
    for raw, value in (config or {}).items():
        key = str(raw).removeprefix("fsdp_")
        if key == "transformer_cls_names_to_wrap":  # Accelerate's own name for it
            key = "transformer_layer_cls_to_wrap"
        if key not in KNOWN_KEYS:
            raise ConfigError(
                f"training.fsdp_config key '{raw}' is not an FSDP setting{did_you_mean(key, KNOWN_KEYS)}; "
                f"the keys are {', '.join(KNOWN_KEYS)}"
            )
        if key in out and out[key] != value:
            raise ConfigError(f"training.fsdp_config gives '{key}' twice (with and without 'fsdp_'); keep one")
        out[key] = value
    return out


def fsdp_settings(options: list[str], config: dict[str, Any] | None) -> FsdpSettings | None:
    """The run's FSDP settings from `fsdp` (HF's option words) and `fsdp_config`; None without FSDP.

    Raises:
        ConfigError: a value out of range, an FSDP1-only setting under FSDP2, XLA, or a sharding
            strategy FSDP2 has no equivalent for.
    """
    if not options:
        return None
    cfg = normalise_fsdp_config(config)
    version = cfg.get("version", 2)
    if str(version) not in ("1", "2"):
        raise ConfigError(f"training.fsdp_config version={version!r} must be 1 or 2 (2 is fully_shard, the default)")
    version = int(version)
    for key in ("xla", "xla_fsdp_v2", "xla_fsdp_grad_ckpt"):
        if key in cfg and _flag(key, cfg[key]):
            raise ConfigError(f"training.fsdp_config {key}=true: XLA FSDP is not supported by trainformers; drop it")
    strategy = _pick("sharding_strategy", cfg.get("sharding_strategy", "FULL_SHARD"), SHARDING_STRATEGIES)
    words = [w for w in options if w.upper() in SHARDING_STRATEGIES]
    if len(set(words)) > 1:
        raise ConfigError(f"training.fsdp names two sharding strategies ({', '.join(words)}); keep one")
    if words:
        if "sharding_strategy" in cfg and words[0].upper() != strategy:
            raise ConfigError(
                f"training.fsdp={words[0]} contradicts fsdp_config sharding_strategy={strategy}; keep one"
            )
        strategy = words[0].upper()
    reshard = strategy != "SHARD_GRAD_OP"
    if "reshard_after_forward" in cfg:
        reshard = _flag("reshard_after_forward", cfg["reshard_after_forward"])
        if (words or "sharding_strategy" in cfg) and reshard != (strategy != "SHARD_GRAD_OP"):
            raise ConfigError(
                f"training.fsdp_config reshard_after_forward={reshard} contradicts the sharding strategy {strategy} "
                "(FULL_SHARD reshards, SHARD_GRAD_OP does not); keep one"
            )
    if version == 2 and strategy not in ("FULL_SHARD", "SHARD_GRAD_OP"):
        hint = "use DDP (drop training.fsdp)" if strategy == "NO_SHARD" else "use FULL_SHARD, or version 1 on CUDA"
        raise ConfigError(f"FSDP2 has no {strategy} sharding strategy; {hint}")
    offload = any(_flag(k, cfg[k]) for k in ("offload_params", "cpu_offload") if k in cfg) or "offload" in options
    policy = _pick("auto_wrap_policy", cfg.get("auto_wrap_policy", "TRANSFORMER_BASED_WRAP"), WRAP_POLICIES)
    classes = cfg.get("transformer_layer_cls_to_wrap")
    if isinstance(classes, str):
        classes = [c.strip() for c in classes.split(",") if c.strip()]
    min_params = cfg.get("min_num_params", 0)
    if not isinstance(min_params, int) or isinstance(min_params, bool) or min_params < 0:
        raise ConfigError(f"training.fsdp_config min_num_params={min_params!r} must be a whole number >= 0")
    if policy == "SIZE_BASED_WRAP" and min_params == 0:
        raise ConfigError("training.fsdp_config auto_wrap_policy=SIZE_BASED_WRAP needs min_num_params > 0")
    if policy != "SIZE_BASED_WRAP" and min_params:
        raise ConfigError(
            f"training.fsdp_config min_num_params={min_params} applies only to auto_wrap_policy=SIZE_BASED_WRAP "
            f"(this run wraps by {policy}); set that policy or drop min_num_params"
        )
    extras: list[tuple[str, Any]] = []
    for key in _V1_ONLY:
        if key in cfg:
            if version == 2:
                raise ConfigError(
                    f"training.fsdp_config {key} is an FSDP1 setting; FSDP2 (version 2) prefetches on its own: drop it"
                )
            extras.append((key, cfg[key] if key == "backward_prefetch" else _flag(key, cfg[key])))
    for key in _V2_ALWAYS_TRUE:
        if key in cfg:
            value = _flag(key, cfg[key])
            if version == 2 and not value:
                raise ConfigError(
                    f"training.fsdp_config {key}=false is an FSDP1 setting; FSDP2 always does it: drop it"
                )
            if version == 1:
                extras.append((key, value))
    return FsdpSettings(
        version=version,
        reshard_after_forward=reshard,
        sharding_strategy=strategy,
        offload_params=offload,
        auto_wrap_policy=policy,
        wrap_classes=tuple(classes) if classes else None,
        min_num_params=min_params,
        activation_checkpointing=_flag("activation_checkpointing", cfg.get("activation_checkpointing", False)),
        cpu_ram_efficient_loading=_flag("cpu_ram_efficient_loading", cfg.get("cpu_ram_efficient_loading", False)),
        state_dict_type=_pick("state_dict_type", cfg.get("state_dict_type", "SHARDED_STATE_DICT"), STATE_DICT_TYPES),
        v1_extras=tuple(extras),
    )


def fsdp_plugin(settings: FsdpSettings, *, on_cpu: bool) -> Any:
    """Accelerate's plugin for `settings`.

    Raises:
        ConfigError: a setting the CPU cannot carry out (FSDP1, offloading to the memory the
            parameters are already in).
    """
    from accelerate import FullyShardedDataParallelPlugin

    if on_cpu and settings.version == 1:
        raise ConfigError("training.fsdp_config version=1 runs only on CUDA GPUs; use version 2 (the default) on CPU")
    if on_cpu and settings.offload_params:
        raise ConfigError(
            "training.fsdp offload: this run is on the CPU, where the parameters already are; drop offload_params"
        )
    kwargs: dict[str, Any] = {
        "fsdp_version": settings.version,
        "auto_wrap_policy": settings.auto_wrap_policy.lower(),
        "activation_checkpointing": settings.activation_checkpointing,
        "cpu_ram_efficient_loading": settings.cpu_ram_efficient_loading,
        "state_dict_type": settings.state_dict_type,
        **dict(settings.v1_extras),
    }
    if settings.version == 2:
        kwargs["reshard_after_forward"] = settings.reshard_after_forward
    else:
        kwargs["sharding_strategy"] = settings.sharding_strategy
    if settings.offload_params:
        kwargs["cpu_offload"] = True
    if settings.wrap_classes:
        kwargs["transformer_cls_names_to_wrap"] = list(settings.wrap_classes)
    if settings.auto_wrap_policy == "SIZE_BASED_WRAP":
        kwargs["min_num_params"] = settings.min_num_params
    try:
        return FullyShardedDataParallelPlugin(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"training.fsdp_config is not valid for Accelerate: {str(err).splitlines()[0]}") from None
