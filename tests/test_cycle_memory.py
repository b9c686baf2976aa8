"""MACCT memory invariants (bench/macct_memory.py measures them at 360M): one base, shared by both
adapters and never copied; no gradient and no optimizer state for a frozen parameter; nothing
(generation caches, logged tensors) kept from one step to the next; a bf16 base stays bf16."""

from __future__ import annotations

import gc

import pytest
import torch
from cycle_helpers import cycle_args, demo, tiny_causal, tokenizer

from trainformers import CycleTrainer, TrainerCallback

LORA = {"r": 4, "lora_alpha": 8, "target_modules": "all-linear"}


def _data():
    d = demo()
    return {"train_dataset_A": d.unpaired_A, "train_dataset_B": d.unpaired_B}


def _live_tensors() -> tuple[int, int]:
    """(distinct storages, their bytes) of every tensor the garbage collector can reach."""
    gc.collect()
    seen: dict[int, int] = {}
    for obj in gc.get_objects():
        if type(obj) is torch.Tensor or type(obj) is torch.nn.Parameter:
            storage = obj.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
    return len(seen), sum(seen.values())


class _Watch(TrainerCallback):
    """Just before every optimizer step: which frozen parameters hold a gradient or optimizer state;
    after every cycle step: the live tensors."""

    def __init__(self) -> None:
        self.trainer: CycleTrainer | None = None
        self.frozen_with_grad: list[str] = []
        self.frozen_with_state: list[str] = []
        self.live: list[tuple[int, int]] = []

    def on_train_begin(self, *args, **kwargs):
        trainer = self.trainer
        assert trainer is not None
        for s in trainer.trained:
            kernel, step = trainer.sides[s].kernel, trainer.sides[s].kernel.step

            def checked(step=step, side=trainer.sides[s]):
                own = {id(p) for p in side.params}
                for name, p in side.model.named_parameters():
                    if id(p) in own:
                        continue
                    if p.grad is not None:
                        self.frozen_with_grad.append(name)
                    if p in side.optimizer.state:
                        self.frozen_with_state.append(name)
                step()

            kernel.step = checked

    def on_step_end(self, *args, **kwargs):
        self.live.append(_live_tensors())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32-base", "bf16-base"])
def test_macct_holds_one_base_and_state_only_for_the_adapters(tmp_path, dtype):
    base = tiny_causal(0).to(dtype)
    storages = {n: p.untyped_storage().data_ptr() for n, p in base.named_parameters()}
    watch = _Watch()
    trainer = CycleTrainer(
        cycle_args(tmp_path, max_steps=5, logging_steps=1),
        models=base,
        tokenizers=tokenizer(),
        peft_configs=LORA,
        callbacks=[watch],
        **_data(),
    )
    watch.trainer = trainer
    trainer.train()
    model = trainer.models["A"]
    assert model is trainer.models["B"] and trainer.sides["A"].wrapped is trainer.sides["B"].wrapped
    # no second copy of the base: every base weight is still the storage the caller built
    for name, p in model.named_parameters():
        if "lora_" not in name:
            original = name.replace("base_model.model.", "", 1).replace(".base_layer", "")
            assert p.untyped_storage().data_ptr() == storages.pop(original), name
            assert p.dtype == dtype and not p.requires_grad, name
        else:
            assert p.dtype == torch.float32, name  # adapters, their gradients and AdamW state in fp32
    assert not storages  # every base weight found (tied embeddings: once)
    assert watch.frozen_with_grad == [] and watch.frozen_with_state == []
    for s in "AB":
        state = trainer.sides[s].optimizer.state
        assert state and all(".lora_" in n and f".{s}." in n for n, p in model.named_parameters() if p in state)
    assert all(p.grad is None for p in model.parameters())
    # from the second step on (optimizer state exists) nothing accumulates: no generation cache,
    # no logged tensor with its graph
    assert len(watch.live) == 5 and len(set(watch.live[1:])) == 1, watch.live
