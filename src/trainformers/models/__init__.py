"""Models: `DecoderLM`, the from-scratch decoder, registered with the Auto classes on import."""

from trainformers.models.decoder_lm import (
    PRESETS,
    DecoderLM,
    DecoderLMConfig,
    DecoderLMOutput,
    from_llama_state_dict,
    register,
)

register()

from trainformers.models.loading import load_pretrained, quantization_config  # noqa: E402
from trainformers.models.peft import apply_peft, build_peft_config, merge_and_save, use_adapter  # noqa: E402

__all__ = [
    "PRESETS",
    "DecoderLM",
    "DecoderLMConfig",
    "DecoderLMOutput",
    "apply_peft",
    "build_peft_config",
    "from_llama_state_dict",
    "load_pretrained",
    "merge_and_save",
    "quantization_config",
    "register",
    "use_adapter",
]
