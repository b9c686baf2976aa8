"""Quantized loading: the BitsAndBytesConfig we build, and one clear line (before any loading) where it can't run."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from conftest import PadCollator, lm_rows, make_args, tiny_llama
from transformers import AutoModelForCausalLM, BitsAndBytesConfig

from trainformers import ConfigError, DecoderLM, DecoderLMConfig, Trainer
from trainformers.config import ModelSection
from trainformers.models import loading
from trainformers.models.loading import load_pretrained, quantization_config

HAS_GPU_AND_BNB = torch.cuda.is_available() and importlib.util.find_spec("bitsandbytes") is not None


def test_4bit_section_maps_to_bitsandbytes_config():
    section = ModelSection(
        load_in_4bit=True, bnb_4bit_quant_type="fp4", bnb_4bit_compute_dtype="float16", bnb_4bit_use_double_quant=True
    )
    config = quantization_config(section)
    assert isinstance(config, BitsAndBytesConfig)
    assert config.load_in_4bit and not config.load_in_8bit
    assert config.bnb_4bit_quant_type == "fp4"
    assert config.bnb_4bit_compute_dtype == torch.float16
    assert config.bnb_4bit_use_double_quant is True


def test_8bit_mapping_and_nothing_asked():
    config = quantization_config({"load_in_8bit": True})
    assert isinstance(config, BitsAndBytesConfig) and config.load_in_8bit and not config.load_in_4bit
    assert quantization_config(ModelSection()) is None
    assert quantization_config({}) is None
    defaults = quantization_config({"load_in_4bit": True})  # the ModelSection defaults
    assert (defaults.bnb_4bit_quant_type, defaults.bnb_4bit_compute_dtype) == ("nf4", torch.bfloat16)
    assert defaults.bnb_4bit_use_double_quant is False
    with pytest.raises(ConfigError, match="Can't set both model.load_in_4bit and model.load_in_8bit"):
        quantization_config({"load_in_4bit": True, "load_in_8bit": True})


@pytest.fixture
def no_loading(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("from_pretrained must not be called when quantization cannot run")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", refuse)


@pytest.mark.parametrize("flag", ["load_in_4bit", "load_in_8bit"])
def test_quantization_without_a_gpu_is_one_line_before_loading(flag, monkeypatch, no_loading):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError) as info:
        load_pretrained("HuggingFaceTB/SmolLM2-135M", **{flag: True})
    message = str(info.value)
    assert message.startswith(f"model.{flag} needs bitsandbytes and a CUDA GPU (") and "no CUDA GPU found" in message
    assert "drop it to train in float32/bfloat16 on CPU" in message and "\n" not in message


def test_quantization_without_bitsandbytes_says_so(monkeypatch, no_loading):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    real = importlib.util.find_spec
    monkeypatch.setattr(
        loading.importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a)
    )
    with pytest.raises(
        ConfigError, match=r"model.load_in_4bit needs bitsandbytes and a CUDA GPU \(bitsandbytes is not installed\)"
    ):
        load_pretrained("any/model", load_in_4bit=True)
    # a ready-made config passed the transformers way is checked the same way
    with pytest.raises(ConfigError, match="model.load_in_8bit needs bitsandbytes"):
        load_pretrained("any/model", quantization_config=BitsAndBytesConfig(load_in_8bit=True))


def test_load_pretrained_loads_decoder_lm_and_llama_with_dtype(tmp_path):
    torch.manual_seed(0)
    DecoderLM(
        DecoderLMConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2)
    ).save_pretrained(tmp_path / "decoder")
    tiny_llama().save_pretrained(tmp_path / "llama")
    assert isinstance(load_pretrained(str(tmp_path / "decoder")), DecoderLM)
    model = load_pretrained(str(tmp_path / "llama"), dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16
    with pytest.raises(ConfigError, match="model.dtype='float33' is not a torch dtype"):
        load_pretrained(str(tmp_path / "llama"), dtype="float33")


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_GPU_AND_BNB, reason="needs a CUDA GPU and bitsandbytes")
def test_qlora_trains_a_4bit_model(tmp_path):
    from trainformers.models.peft import apply_peft

    tiny_llama().save_pretrained(tmp_path / "base")
    model = load_pretrained(str(tmp_path / "base"), load_in_4bit=True, bnb_4bit_compute_dtype="bfloat16")
    assert model.is_loaded_in_4bit
    model = apply_peft(model, {"r": 4, "target_modules": "all-linear"}, echo=None)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    args = make_args(tmp_path, max_steps=3, optim="adamw_torch", bf16=True)
    Trainer(model=model, args=args, train_dataset=lm_rows(), data_collator=PadCollator()).train()
    after = dict(model.named_parameters())
    assert before and all(not torch.equal(before[n], after[n].detach()) for n in before)
