"""`Seq2SeqTrainer` and `Seq2SeqTrainingArguments`: the HF API for translation, summarisation, speech.

Training is `Trainer`'s loop unchanged. With `predict_with_generate`, `evaluate` and `predict` run
`generate` on each batch and hand the generated ids (padded with the pad id to the model's
generation `max_length`, as transformers does) to `compute_metrics`; the loss is still the teacher-forced one.
Generation settings come, in order, from the keywords of `evaluate`/`predict`, then
`generation_max_length`/`generation_num_beams`, then `generation_config`, then the model's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import TrainingArguments, arg
from .errors import ConfigError
from .trainer import Trainer


@dataclass
class Seq2SeqTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus the generation settings of transformers' `Seq2SeqTrainingArguments`."""

    sortish_sampler: bool = arg(False, "transformers' sortish sampler; refused here (use group_by_length).")
    predict_with_generate: bool = arg(False, "evaluate/predict generate text and hand its ids to compute_metrics.")
    generation_max_length: int | None = arg(None, "max_length of generate() in evaluate/predict; None: the model's.")
    generation_num_beams: int | None = arg(None, "num_beams of generate() in evaluate/predict; None: the model's.")
    generation_config: Any = arg(
        None, "A GenerationConfig, or the path or name of one, that replaces the model's generation settings."
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.sortish_sampler:
            raise ConfigError(
                "sortish_sampler=True is not supported; group_by_length=True batches rows of similar length"
            )
        for name in ("generation_max_length", "generation_num_beams"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"{name}={value!r} must be a positive integer or None")

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        config = self.generation_config
        if config is not None and hasattr(config, "to_dict"):
            out["generation_config"] = config.to_dict()
        return out


def load_generation_config(value: Any) -> Any:
    """A `GenerationConfig` from an object, a dict, or a directory/file/Hub name.

    Raises:
        ConfigError: it cannot be loaded.
    """
    from transformers import GenerationConfig

    if isinstance(value, GenerationConfig):
        return value
    if isinstance(value, dict):
        return GenerationConfig(**value)
    path = Path(str(value))
    try:
        if path.is_file():
            return GenerationConfig.from_pretrained(str(path.parent), config_file_name=path.name)
        return GenerationConfig.from_pretrained(str(value))
    except (OSError, ValueError) as err:
        raise ConfigError(f"generation_config={value!r} cannot be loaded ({str(err).splitlines()[0]})") from None


class Seq2SeqTrainer(Trainer):
    """`Trainer` whose evaluation can generate (`predict_with_generate`), as transformers' `Seq2SeqTrainer`."""

    args: Seq2SeqTrainingArguments

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._gen_kwargs: dict[str, Any] = {}
        config = getattr(self.args, "generation_config", None)
        if config is not None:
            self.model.generation_config = load_generation_config(config)

    def _generation_kwargs(self, given: dict[str, Any]) -> dict[str, Any]:
        kwargs = dict(given)
        if kwargs.get("max_length") is None and kwargs.get("max_new_tokens") is None:
            if getattr(self.args, "generation_max_length", None) is not None:
                kwargs["max_length"] = self.args.generation_max_length
        if kwargs.get("num_beams") is None and getattr(self.args, "generation_num_beams", None) is not None:
            kwargs["num_beams"] = self.args.generation_num_beams
        return {k: v for k, v in kwargs.items() if v is not None}

    def evaluate(
        self,
        eval_dataset: Any = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
        **gen_kwargs: Any,
    ) -> dict[str, float]:
        """`Trainer.evaluate`; the keywords (max_length, num_beams, ...) go to `generate`."""
        self._gen_kwargs = self._generation_kwargs(gen_kwargs)
        return super().evaluate(eval_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)

    def predict(
        self,
        test_dataset: Any,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "test",
        **gen_kwargs: Any,
    ) -> Any:
        """`Trainer.predict`; the keywords (max_length, num_beams, ...) go to `generate`."""
        self._gen_kwargs = self._generation_kwargs(gen_kwargs)
        return super().predict(test_dataset, ignore_keys=ignore_keys, metric_key_prefix=metric_key_prefix)

    def prediction_step(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        prediction_loss_only: bool,
        ignore_keys: list[str] | None = None,
        **gen_kwargs: Any,
    ) -> tuple[torch.Tensor | None, Any, Any]:
        """(loss, generated ids, labels) with `predict_with_generate`; else `Trainer.prediction_step`."""
        if not getattr(self.args, "predict_with_generate", False) or prediction_loss_only:
            return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)
        labels = inputs.get("labels")
        settings = {**self._gen_kwargs, **gen_kwargs} if gen_kwargs else dict(self._gen_kwargs)
        generation_inputs = {k: v for k, v in inputs.items() if k != "labels"}
        decoder_ids = inputs.get("decoder_input_ids")
        if labels is not None and decoder_ids is not None and decoder_ids.shape == labels.shape:
            # made from the labels (teacher forcing): generation must start from scratch
            generation_inputs.pop("decoder_input_ids")
            generation_inputs.pop("decoder_attention_mask", None)
        generator = self.accelerator.unwrap_model(model)
        with torch.no_grad(), self.accelerator.autocast():
            generated = generator.generate(**generation_inputs, **settings)
        width = self._padded_length(generator, generated)
        generated = self._pad_to(generated, width)
        loss = None
        if labels is not None:
            loss = super().prediction_step(model, inputs, True, ignore_keys)[0]
            labels = self._pad_to(labels, width)
        return loss, generated, labels

    def _padded_length(self, model: nn.Module, generated: torch.Tensor) -> int:
        """The width generated ids and labels are padded to, as transformers does: the model's generation
        config's max_length (or max_new_tokens + 1), whatever the call's own settings."""
        config = getattr(model, "generation_config", None)
        max_length = getattr(config, "max_length", None) or 20
        max_new = getattr(config, "max_new_tokens", None)
        if generated.shape[-1] < max_length:
            return int(max_length)
        if max_new is not None and generated.shape[-1] < max_new + 1:
            return int(max_new) + 1
        return int(generated.shape[-1])

    def _pad_to(self, tensor: torch.Tensor, width: int) -> torch.Tensor:
        if tensor.shape[-1] >= width:
            return tensor
        pad_id = getattr(self.processing_class, "pad_token_id", None)
        if pad_id is None:
            pad_id = getattr(getattr(self.model, "config", None), "pad_token_id", None)
        if pad_id is None:
            raise ConfigError(
                "predict_with_generate pads the generated ids, but neither the tokenizer nor the model config has a "
                "pad_token_id; set one"
            )
        padded = tensor.new_full((*tensor.shape[:-1], width), pad_id)
        padded[..., : tensor.shape[-1]] = tensor
        return padded
