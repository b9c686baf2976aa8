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

__all__ = ["PRESETS", "DecoderLM", "DecoderLMConfig", "DecoderLMOutput", "from_llama_state_dict", "register"]
