"""Optimizer parameter groups: decay rules, per-pattern settings, LoRA+, and how they survive scheduling."""

from __future__ import annotations

import re
import warnings

import peft
import pytest
import torch
from conftest import PadCollator, lm_rows, make_args, tiny_llama
from torch import nn

from trainformers import Trainer
from trainformers.errors import ConfigError
from trainformers.optim import (
    create_optimizer,
    create_scheduler,
    describe_param_groups,
    param_groups,
)

CPU = torch.device("cpu")


class WithMemory(nn.Module):
    """A language model plus a `memory` submodule of our own (a Linear with a bias)."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm
        self.memory = nn.Linear(16, 16)

    def forward(self, **batch):
        return self.lm(**batch)


def lora(model: nn.Module, targets=("q_proj", "v_proj"), **config) -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # transformers' is_gradient_checkpointing deprecation
        return peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=list(targets), **config))


def settings(groups, model) -> dict[str, tuple[float, float, str]]:
    """Parameter name -> (lr, weight_decay, group name), read back from optimizer groups."""
    names = {id(p): n for n, p in model.named_parameters()}
    out = {}
    for group in groups:
        for p in group["params"]:
            assert names[id(p)] not in out, f"{names[id(p)]} is in two groups"
            out[names[id(p)]] = (group.get("initial_lr", group["lr"]), group["weight_decay"], group["name"])
    return out


def expected(model, rules, lr, decay, ratio=None) -> dict[str, tuple[float, float]]:
    """The documented rules, written out plainly: first match wins, ndim < 2 never decays, B x ratio."""
    out = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        rule = next((r for r in rules if re.search(r["pattern"], name)), {})
        p_lr, p_decay = rule.get("lr", lr), rule.get("weight_decay", decay)
        if ratio and ("lora_B" in name or "lora_embedding_B" in name):
            p_lr *= ratio
        out[name] = (p_lr, p_decay if p.ndim >= 2 else 0.0)
    return out


# ---- defaults ------------------------------------------------------------------------------------


def test_default_groups_skip_frozen_and_never_decay_biases_or_norms():
    model = WithMemory(tiny_llama())
    model.lm.model.embed_tokens.weight.requires_grad_(False)
    got = settings(param_groups(model, learning_rate=1e-3, weight_decay=0.1), model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(got) == trainable and "lm.model.embed_tokens.weight" not in got
    no_decay = {n for n, (_, wd, _) in got.items() if wd == 0.0}
    assert no_decay == {n for n, p in model.named_parameters() if p.requires_grad and p.ndim < 2}
    assert {"memory.bias", "lm.model.norm.weight", "lm.model.layers.0.input_layernorm.weight"} <= no_decay
    assert got["memory.weight"] == (1e-3, 0.1, "decay") and got["memory.bias"] == (1e-3, 0.0, "no_decay")
    assert all(lr == 1e-3 for lr, _, _ in got.values())


def test_groups_come_from_args_and_empty_ones_are_dropped(tmp_path):
    model = tiny_llama()
    for p in model.parameters():
        p.requires_grad_(p.ndim >= 2)  # no trainable vector: no "no_decay" group
    groups = param_groups(model, make_args(tmp_path, learning_rate=3e-4, weight_decay=0.05))
    assert [(g["name"], g["lr"], g["weight_decay"], g["pattern"]) for g in groups] == [("decay", 3e-4, 0.05, None)]


def test_nothing_trainable_is_a_config_error(tmp_path):
    model = tiny_llama().requires_grad_(False)
    with pytest.raises(ConfigError, match="no trainable parameters"):
        create_optimizer(model, make_args(tmp_path, param_groups=[{"pattern": "q_proj", "lr": 1e-3}]), CPU)


# ---- param_groups patterns ------------------------------------------------------------------------


def test_each_parameter_gets_its_first_matching_pattern_settings(tmp_path):
    rules = [
        {"pattern": r"layers\.0\.self_attn", "lr": 1e-3, "weight_decay": 0.5},  # overlaps the next one
        {"pattern": r"self_attn", "lr": 2e-3},  # no weight_decay: the default
        {"pattern": r"norm", "weight_decay": 0.3},  # norms still don't decay; no lr: the default
    ]
    model = tiny_llama()
    args = make_args(tmp_path, learning_rate=1e-4, weight_decay=0.01, param_groups=rules, optim="adamw_torch_fused")
    opt = create_optimizer(model, args, CPU)
    got = settings(opt.param_groups, model)
    assert {n: (lr, wd) for n, (lr, wd, _) in got.items()} == expected(model, rules, 1e-4, 0.01)
    assert got["model.layers.0.self_attn.q_proj.weight"][:2] == (1e-3, 0.5)  # first match wins
    assert got["model.layers.1.self_attn.q_proj.weight"][:2] == (2e-3, 0.01)
    assert got["model.norm.weight"] == (1e-4, 0.0, r"pattern:norm (no_decay)")
    assert got["lm_head.weight"] == (1e-4, 0.01, "decay")  # unmatched: the defaults
    assert [g["name"] for g in opt.param_groups] == [
        "decay",
        r"pattern:layers\.0\.self_attn (decay)",
        "pattern:self_attn (decay)",
        "pattern:norm (no_decay)",
    ]
    assert all(g["fused"] for g in opt.param_groups)


def test_a_pattern_that_matches_no_parameter_is_a_one_line_config_error(tmp_path):
    args = make_args(tmp_path, param_groups=[{"pattern": "q_prj", "lr": 1e-3}])
    with pytest.raises(ConfigError, match=r"param_groups\[0\]\.pattern 'q_prj' matches no parameter") as err:
        create_optimizer(tiny_llama(), args, CPU)
    assert "did you mean 'q_proj'" in str(err.value) and "\n" not in str(err.value)


def test_a_pattern_shadowed_by_an_earlier_one_is_a_config_error():
    rules = [{"pattern": "self_attn", "lr": 1e-3}, {"pattern": "q_proj", "lr": 2e-3}]
    with pytest.raises(ConfigError, match=r"param_groups\[1\].*param_groups\[0\] \('self_attn'\).*first match"):
        param_groups(tiny_llama(), learning_rate=1e-4, groups=rules)


def test_a_pattern_that_matches_only_frozen_parameters_warns():
    model = tiny_llama()
    model.lm_head.weight.requires_grad_(False)
    with pytest.warns(UserWarning, match="'lm_head' matches only frozen parameters"):
        groups = param_groups(model, learning_rate=1e-4, groups=[{"pattern": "lm_head", "lr": 1e-3}])
    assert [g["name"] for g in groups] == ["decay", "no_decay"]


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"learning_rate": "auto"}, r"learning_rate='auto' must be a number >= 0; 'auto' must be replaced"),
        ({"learning_rate": None}, r"learning_rate is not set"),
        ({"groups": [{"pattern": "q_proj", "lr": "fast"}]}, r"param_groups\[0\]\.lr='fast' must be a number"),
        ({"groups": [{"pattern": "q_proj", "weight_decay": -1}]}, r"param_groups\[0\]\.weight_decay=-1"),
        ({"groups": [{"pattern": "q_proj", "momentum": 0.9}]}, r"unknown keys \['momentum'\]"),
        ({"loraplus_lr_ratio": 0}, r"loraplus_lr_ratio=0 would stop the LoRA B matrices"),
    ],
)
def test_bad_settings_are_config_errors(overrides, match):
    with pytest.raises(ConfigError, match=match):
        param_groups(tiny_llama(), **{"learning_rate": 1e-4, **overrides})


def test_a_yaml_style_string_lr_is_read_as_a_number():
    # YAML 1.1 reads `lr: 1e-3` (no dot) as the string "1e-3"
    groups = param_groups(tiny_llama(), learning_rate=1e-4, groups=[{"pattern": "q_proj", "lr": "1e-3"}])
    assert [g["lr"] for g in groups if g["pattern"] == "q_proj"] == [1e-3]


def test_the_callers_optimizer_lr_is_the_base_lr(tmp_path):
    model = tiny_llama()
    args = make_args(tmp_path, learning_rate=1e-4, param_groups=[{"pattern": "q_proj", "lr": 1e-3}])
    opt = create_optimizer(model, args, CPU, (torch.optim.SGD, {"lr": 0.1}))
    assert {g["name"]: g["lr"] for g in opt.param_groups} == {
        "decay": 0.1,
        "no_decay": 0.1,
        "pattern:q_proj (decay)": 1e-3,
    }


# ---- the README example: LoRA adapters, a memory module of our own, the rest ---------------------

# README, "Parameter groups and LoRA+": same values
README_LR, README_DECAY = 1e-5, 0.01
README_GROUPS = [
    {"pattern": "lora_", "lr": 2e-4, "weight_decay": 0.0},
    {"pattern": r"^memory\.", "lr": 1e-3},
]


def test_readme_example_lora_memory_and_the_rest(tmp_path):
    model = WithMemory(lora(tiny_llama(), modules_to_save=["lm_head"]))
    args = make_args(tmp_path, learning_rate=README_LR, weight_decay=README_DECAY, param_groups=README_GROUPS)
    opt = create_optimizer(model, args, CPU)
    got = settings(opt.param_groups, model)
    assert {n: (lr, wd) for n, (lr, wd, _) in got.items()} == expected(model, README_GROUPS, README_LR, README_DECAY)
    lora_names = [n for n in got if "lora_" in n]
    assert len(lora_names) == 8 and all(got[n][:2] == (2e-4, 0.0) for n in lora_names)
    assert got["memory.weight"] == (1e-3, 0.01, r"pattern:^memory\. (decay)")
    assert got["memory.bias"] == (1e-3, 0.0, r"pattern:^memory\. (no_decay)")
    # the rest: the trainable copy of lm_head (modules_to_save) at the base lr; frozen weights nowhere
    rest = [n for n, (_, _, g) in got.items() if g == "decay"]
    assert rest == ["lm.base_model.model.lm_head.modules_to_save.default.weight"]
    assert got[rest[0]][:2] == (1e-5, 0.01)
    assert set(got) == {n for n, p in model.named_parameters() if p.requires_grad}


# ---- LoRA+ ------------------------------------------------------------------------------------------


def test_loraplus_scales_b_matrices_only():
    model = lora(tiny_llama(), targets=("q_proj", "v_proj", "embed_tokens"))
    groups = param_groups(model, learning_rate=1e-4, weight_decay=0.1, loraplus_lr_ratio=16)
    got = settings(groups, model)
    assert {n: (lr, wd) for n, (lr, wd, _) in got.items()} == expected(model, [], 1e-4, 0.1, ratio=16)
    b = [n for n in got if "lora_B" in n or "lora_embedding_B" in n]
    a = [n for n in got if "lora_A" in n or "lora_embedding_A" in n]
    assert len(b) == len(a) == 5 and len(got) == 10
    assert "base_model.model.model.embed_tokens.lora_embedding_B.default" in b
    assert all(got[n] == (pytest.approx(16e-4), 0.1, "lora_B (loraplus)") for n in b)  # B keeps its decay
    assert all(got[n] == (1e-4, 0.1, "decay") for n in a)


def test_loraplus_multiplies_a_pattern_lr(tmp_path):
    model = lora(tiny_llama())
    model.base_model.model.model.norm.weight.requires_grad_(True)  # an unmatched vector: base lr, no ratio
    rules = [{"pattern": "lora_", "lr": 2e-4}]
    args = make_args(tmp_path, learning_rate=1e-5, weight_decay=0.01, param_groups=rules, loraplus_lr_ratio=8)
    opt = create_optimizer(model, args, CPU)
    got = settings(opt.param_groups, model)
    assert {n: (lr, wd) for n, (lr, wd, _) in got.items()} == expected(model, rules, 1e-5, 0.01, ratio=8)
    assert {g["name"]: g["lr"] for g in opt.param_groups} == {
        "no_decay": 1e-5,
        "pattern:lora_ (decay)": 2e-4,
        "pattern:lora_ (lora_B loraplus)": pytest.approx(16e-4),
    }


def test_loraplus_without_lora_b_matrices_is_a_config_error():
    with pytest.raises(ConfigError, match=r"loraplus_lr_ratio=16 but the model has none of the LoRA B"):
        param_groups(tiny_llama(), learning_rate=1e-4, loraplus_lr_ratio=16)


# ---- scheduling and the optimizer step ------------------------------------------------------------


def test_each_group_reaches_its_own_lr_after_linear_warmup(tmp_path):
    rules = [{"pattern": "lora_", "lr": 2e-4}]
    args = make_args(
        tmp_path,
        learning_rate=1e-5,
        param_groups=rules,
        loraplus_lr_ratio=4,
        warmup_steps=3,
        lr_scheduler_type="linear",
        optim="adamw_torch_fused",
    )
    model = lora(tiny_llama(), modules_to_save=["lm_head"])
    opt = create_optimizer(model, args, CPU)
    peak = {g["name"]: g["lr"] for g in opt.param_groups}
    assert peak == {
        "decay": 1e-5,
        "pattern:lora_ (decay)": 2e-4,
        "pattern:lora_ (lora_B loraplus)": pytest.approx(8e-4),
    }
    sched = create_scheduler(opt, args, num_training_steps=10)
    assert all(g["lr"] == 0.0 for g in opt.param_groups)
    for step in range(1, 4):
        opt.step()
        sched.step()
        assert {g["name"]: g["lr"] for g in opt.param_groups} == pytest.approx(
            {k: v * step / 3 for k, v in peak.items()}
        )
    assert {g["name"]: g["lr"] for g in opt.param_groups} == pytest.approx(peak)  # the end of warmup: the peaks
    assert describe_param_groups(opt.param_groups, model).count("0.0008") == 1  # the table shows peaks


def test_fused_adamw_applies_each_group_lr(tmp_path):
    # AdamW's first step moves every weight by lr * g / (|g| + eps) ~ lr (no decay here): one lr per group
    rules = [{"pattern": "q_proj", "lr": 1e-2}, {"pattern": "mlp", "lr": 1e-4}]
    model = tiny_llama()
    args = make_args(
        tmp_path,
        learning_rate=1e-3,
        weight_decay=0.0,
        param_groups=rules,
        optim="adamw_torch_fused",
        adam_epsilon=1e-12,
    )
    opt = create_optimizer(model, args, CPU)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = torch.randint(3, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    for name, p in model.named_parameters():
        moved = (p.detach() - before[name]).abs()
        lr = 1e-2 if "q_proj" in name else 1e-4 if "mlp" in name else 1e-3
        seen = moved[p.grad.abs() > 1e-6]
        assert torch.allclose(seen, torch.full_like(seen, lr), rtol=1e-3), name


# ---- the table -------------------------------------------------------------------------------------


def test_describe_param_groups_lists_names_counts_and_lrs():
    model = WithMemory(lora(tiny_llama()))
    groups = param_groups(model, learning_rate=1e-5, weight_decay=0.01, groups=README_GROUPS, loraplus_lr_ratio=16)
    table = describe_param_groups(groups, model)
    lines = table.splitlines()
    assert lines[0].split() == ["group", "pattern", "tensors", "parameters", "lr", "weight_decay"]
    rows = {line[: lines[0].index("pattern")].strip(): line.split()[-4:] for line in lines[1:-1]}
    assert rows == {
        "pattern:lora_ (decay)": ["4", "256", "0.0002", "0"],  # lora_A: 4 x (4 x 16)
        "pattern:lora_ (lora_B loraplus)": ["4", "192", "0.0032", "0"],  # lora_B: 2 x (16 x 4) + 2 x (8 x 4)
        r"pattern:^memory\. (decay)": ["1", "256", "0.001", "0.01"],
        r"pattern:^memory\. (no_decay)": ["1", "16", "0.001", "0"],
    }
    total = sum(p.numel() for p in model.parameters())
    assert lines[-1] == f"trainable: 720 of {total:,} parameters ({100 * 720 / total:.2f}%) in 10 tensors"
    assert len({len(line) for line in lines[:-1]}) == 1  # aligned: the numbers are right-justified


def test_describe_works_on_groups_without_our_keys():
    model = nn.Linear(3, 2)
    table = describe_param_groups(torch.optim.SGD(model.parameters(), lr=0.5).param_groups)
    assert table.splitlines()[1].split() == ["group", "0", "-", "2", "8", "0.5", "0"]


# ---- through the Trainer ------------------------------------------------------------------------------


def test_trainer_builds_and_trains_with_the_configured_groups(tmp_path, capsys):
    model = lora(tiny_llama())
    rules = [{"pattern": r"layers\.1\.", "lr": 5e-3}]
    args = make_args(
        tmp_path,
        learning_rate=1e-2,
        weight_decay=0.1,
        param_groups=rules,
        loraplus_lr_ratio=2,
        max_steps=2,
        optim="adamw_torch_fused",
    )
    trainer = Trainer(model, args, data_collator=PadCollator(), train_dataset=lm_rows(8))
    opt = trainer.create_optimizer()
    got = settings(opt.param_groups, model)
    assert {n: (lr, wd) for n, (lr, wd, _) in got.items()} == expected(model, rules, 1e-2, 0.1, ratio=2)
    assert [g["name"] for g in opt.param_groups] == [
        "decay",
        "lora_B (loraplus)",
        r"pattern:layers\.1\. (decay)",
        r"pattern:layers\.1\. (lora_B loraplus)",
    ]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer.optimizer = None  # train() builds it and prints the table
    trainer.train()
    assert r"pattern:layers\.1\. (lora_B loraplus)" in capsys.readouterr().out
    inner = getattr(trainer.optimizer, "optimizer", trainer.optimizer)
    assert {g["name"]: g["initial_lr"] for g in inner.param_groups} == {
        "decay": 1e-2,
        "lora_B (loraplus)": 2e-2,
        r"pattern:layers\.1\. (decay)": 5e-3,
        r"pattern:layers\.1\. (lora_B loraplus)": 1e-2,
    }
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]) != p.requires_grad, name  # trainable changed, frozen didn't
