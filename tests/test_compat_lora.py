"""CLIP and Whisper fine-tuned with LoRA, in the shape of the PEFT tutorials, on `transformers`' trainers
and on ours: the same loss rows, and only the adapter weights change.

The tutorials attach the adapters with `model.add_adapter(LoraConfig(...))`; transformers 5.24 needs
peft >= 0.22 for that, and this machine's index has 0.21.2, so the adapters are attached with
`peft.get_peft_model` (the same LoRA layers). `tests/test_peft.py` covers `add_adapter` where the
installed peft allows it (and its one-line refusal where it does not).
"""

from __future__ import annotations

import peft
import pytest
import torch
import transformers
from datasets import Dataset

import trainformers

KINDS = ["hf", "ours"]
LORA = dict(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)


def _settings(kind, tmp_path, **extra):
    settings = dict(
        output_dir=str(tmp_path / kind), max_steps=4, per_device_train_batch_size=4, per_device_eval_batch_size=4,
        learning_rate=1e-2, logging_steps=1, save_strategy="no", report_to="none", optim="adamw_torch", seed=0,
        remove_unused_columns=False, **extra,
    )  # fmt: skip
    if kind == "hf":
        settings["use_cpu"] = True
    return settings


def _frozen(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}


def _clip(kind, tmp_path):
    lib = transformers if kind == "hf" else trainformers
    torch.manual_seed(0)
    config = transformers.CLIPConfig(
        text_config=dict(
            vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
            max_position_embeddings=16, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        ),
        vision_config=dict(
            hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=8, patch_size=4
        ),
        projection_dim=8,
    )  # fmt: skip
    model = peft.get_peft_model(transformers.CLIPModel(config), peft.LoraConfig(**LORA))
    generator = torch.Generator().manual_seed(0)
    rows = [
        {"input_ids": torch.randint(3, 64, (6,), generator=generator).tolist(), "pixel_values": torch.rand(3, 8, 8, generator=generator).tolist()}
        for _ in range(16)
    ]  # fmt: skip

    def collate(examples):
        ids = torch.tensor([e["input_ids"] for e in examples])
        return {
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "pixel_values": torch.tensor([e["pixel_values"] for e in examples]),
            "return_loss": True,
        }

    frozen = _frozen(model)
    trainer = lib.Trainer(
        model=model, args=lib.TrainingArguments(**_settings(kind, tmp_path)), train_dataset=Dataset.from_list(rows),
        eval_dataset=Dataset.from_list(rows[:8]), data_collator=collate,
    )  # fmt: skip
    trainer.train()
    return trainer, trainer.evaluate(), frozen


def _whisper(kind, tmp_path):
    lib = transformers if kind == "hf" else trainformers
    torch.manual_seed(0)
    config = transformers.WhisperConfig(
        vocab_size=64, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, num_mel_bins=8, max_source_positions=8,
        max_target_positions=16, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1,
    )  # fmt: skip
    model = peft.get_peft_model(transformers.WhisperForConditionalGeneration(config), peft.LoraConfig(**LORA))
    generator = torch.Generator().manual_seed(0)
    rows = [
        {"input_features": torch.rand(8, 16, generator=generator).tolist(), "labels": torch.randint(3, 64, (5,), generator=generator).tolist()}
        for _ in range(16)
    ]  # fmt: skip

    def collate(examples):
        return {
            "input_features": torch.tensor([e["input_features"] for e in examples]),
            "labels": torch.tensor([e["labels"] for e in examples]),
        }

    frozen = _frozen(model)
    trainer = lib.Seq2SeqTrainer(
        model=model,
        args=lib.Seq2SeqTrainingArguments(**_settings(kind, tmp_path)),
        train_dataset=Dataset.from_list(rows),
        eval_dataset=Dataset.from_list(rows[:8]),
        data_collator=collate,
    )
    trainer.train()
    return trainer, trainer.evaluate(), frozen


@pytest.mark.parametrize("script", [_clip, _whisper], ids=["clip", "whisper"])
def test_lora_fine_tuning_matches_transformers_and_leaves_the_base_alone(tmp_path, script):
    runs = [script(kind, tmp_path) for kind in KINDS]
    losses = [[row["loss"] for row in trainer.state.log_history if "loss" in row] for trainer, _, _ in runs]
    assert len(losses[1]) == 4 and losses[1] == pytest.approx(losses[0], rel=1e-5)
    assert runs[1][1]["eval_loss"] == pytest.approx(runs[0][1]["eval_loss"], rel=1e-5)
    trainer, _, frozen = runs[1]
    for name, before in frozen.items():
        assert torch.equal(dict(trainer.model.named_parameters())[name], before), name
    trained = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trained and all("lora_" in n for n in trained)
