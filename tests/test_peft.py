"""PEFT: only adapters train, every peft method passes through, adapters save/reload/resume/merge exactly.

Tiny random Llama models (conftest) on CPU; each training run is a few optimizer steps.
"""

from __future__ import annotations

import math
import shutil

import pytest
import torch
import transformers
from conftest import PadCollator, lm_rows, make_args, tiny_llama, weights
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from trainformers import CheckpointError, ConfigError, Trainer
from trainformers.cli import main
from trainformers.models.peft import (
    adapter_methods_problem,
    apply_peft,
    build_peft_config,
    merge_and_save,
    peft_methods,
    use_adapter,
)

QV = ["q_proj", "v_proj"]
# peft 0.21 reads transformers' deprecated alias whenever it wraps a model (apply_peft silences it too)
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")


def add_adapter(model, config, name: str) -> None:
    """transformers' own `add_adapter`; where it refuses the installed peft (5.24 wants 0.22, newer than
    any published peft), check that this is the refusal, then mark the test an expected failure."""
    problem = adapter_methods_problem()
    if problem is None:
        model.add_adapter(config, adapter_name=name)
        return
    with pytest.raises(ValueError, match="version of PEFT you are using is not compatible"):
        model.add_adapter(config, adapter_name=name)
    pytest.xfail(problem)


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def train(model, tmp_path, name: str = "run", **overrides) -> Trainer:
    args = make_args(tmp_path, output_dir=str(tmp_path / name), **overrides)
    trainer = Trainer(model=model, args=args, train_dataset=lm_rows(), data_collator=PadCollator())
    trainer.train()
    return trainer


def assert_only_trainable_changed(model, before: dict[str, torch.Tensor]) -> None:
    """TRL's check: every trainable parameter moved, every frozen one is bit-identical."""
    after = dict(model.named_parameters())
    trainable = [n for n, p in after.items() if p.requires_grad]
    assert trainable
    for name, param in after.items():
        same = torch.equal(before[name], param.detach())
        assert same != param.requires_grad, f"{name}: requires_grad={param.requires_grad} but changed={not same}"


def params(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_lora_starts_as_the_base_model_and_trains_only_adapters(tmp_path):
    ids = torch.randint(3, 64, (2, 12))
    base = tiny_llama()
    reference = logits(base, ids)
    model = apply_peft(base, {"r": 4, "lora_alpha": 8, "target_modules": "all-linear", "modules_to_save": ["lm_head"]})
    assert torch.equal(logits(model, ids), reference)  # lora_B starts at zero: the adapted model is the base
    before = params(model)
    train(model, tmp_path)
    assert_only_trainable_changed(model, before)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all("lora_" in n or "modules_to_save" in n for n in names)
    assert any("lm_head.modules_to_save" in n for n in names)
    assert len([n for n in names if "lora_A" in n]) == 2 * 7  # all-linear: q k v o gate up down, 2 layers, not lm_head


def test_apply_peft_prints_the_trainable_parameter_line():
    lines = []
    apply_peft(tiny_llama(), {"r": 2, "target_modules": QV}, echo=lines.append)
    assert len(lines) == 1 and lines[0].startswith("peft lora adapter 'default': ") and "trainable of" in lines[0]


VARIANTS = {
    "dora": {"r": 4, "target_modules": QV, "use_dora": True},
    "rslora": {"r": 4, "target_modules": QV, "use_rslora": True},
    "pissa": {"r": 4, "target_modules": QV, "init_lora_weights": "pissa"},
    "pissa_niter": {"r": 4, "target_modules": QV, "init_lora_weights": "pissa_niter_4"},
    "olora": {"r": 4, "target_modules": QV, "init_lora_weights": "olora"},
    "gaussian": {
        "r": 4,
        "target_modules": QV,
        "init_lora_weights": "gaussian",
        "lora_dropout": 0.1,
        "bias": "lora_only",
    },
    "all_linear": {"r": 4, "target_modules": "all-linear"},
    "regex": {"r": 4, "target_modules": r".*\.(q|v)_proj"},
    "layers": {"r": 4, "target_modules": QV, "layers_to_transform": [1], "layers_pattern": "layers"},
    "ia3": {"method": "ia3", "target_modules": ["k_proj", "v_proj", "down_proj"], "feedforward_modules": ["down_proj"]},
    "lokr": {"method": "lokr", "r": 4, "target_modules": QV},
    "loha": {"method": "loha", "r": 4, "target_modules": QV},
    "vera": {"method": "vera", "r": 4, "target_modules": QV},
    "prompt_tuning": {"method": "prompt_tuning", "num_virtual_tokens": 4},
    "prefix_tuning": {"method": "prefix-tuning", "num_virtual_tokens": 4},
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_peft_variant_trains_its_adapter_only(name, tmp_path):
    model = apply_peft(tiny_llama(), VARIANTS[name], echo=None)
    before = params(model)
    trainer = train(model, tmp_path, max_steps=4)
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    assert losses and all(math.isfinite(loss) for loss in losses)
    assert_only_trainable_changed(model, before)


def test_rank_and_alpha_patterns_reach_the_layers():
    config = build_peft_config(
        {"r": 4, "lora_alpha": 8, "target_modules": QV, "rank_pattern": {"q_proj": 2}, "alpha_pattern": {"v_proj": 32}}
    )
    model = apply_peft(tiny_llama(), config, echo=None)
    layer = model.base_model.model.model.layers[0].self_attn
    assert layer.q_proj.lora_A["default"].weight.shape[0] == 2 and layer.q_proj.scaling["default"] == 8 / 2
    assert layer.v_proj.lora_A["default"].weight.shape[0] == 4 and layer.v_proj.scaling["default"] == 32 / 4


def test_transformers_add_adapter_trains_with_our_trainer(tmp_path):
    model = tiny_llama()
    add_adapter(model, LoraConfig(r=4, target_modules=QV), "x")
    model.set_adapter("x")
    before = params(model)
    train(model, tmp_path, max_steps=4)
    assert_only_trainable_changed(model, before)
    assert all(".x." in n for n, p in model.named_parameters() if p.requires_grad)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    """A LoRA run on a base saved to disk (so the adapter names it), with a tokenizer and checkpoints 3 and 6."""
    from trainformers.data import default_corpus
    from trainformers.data.tokenizer import train_tokenizer

    root = tmp_path_factory.mktemp("lora")
    tokenizer = train_tokenizer(default_corpus()[:20], vocab_size=300)
    tiny_llama(vocab=len(tokenizer)).save_pretrained(root / "base")
    model = apply_peft(
        AutoModelForCausalLM.from_pretrained(root / "base"), {"r": 4, "target_modules": "all-linear"}, echo=None
    )
    args = make_args(root, max_steps=6, save_strategy="steps", save_steps=3)
    rows = lm_rows(vocab=len(tokenizer))
    trainer = Trainer(
        model=model, args=args, train_dataset=rows, data_collator=PadCollator(), processing_class=tokenizer
    )
    trainer.train()
    trainer.save_model(str(root / "run" / "final"))
    return root, model, len(tokenizer)


def fresh_lora(root):
    return apply_peft(
        AutoModelForCausalLM.from_pretrained(root / "base"), {"r": 4, "target_modules": "all-linear"}, echo=None
    )


def test_checkpoints_hold_only_the_adapter_and_reload_with_plain_peft(lora_run):
    root, model, vocab = lora_run
    for folder in ("checkpoint-3", "checkpoint-6", "final"):
        files = {p.name for p in (root / "run" / folder).iterdir()}
        assert {"adapter_model.safetensors", "adapter_config.json"} <= files, folder
        assert "model.safetensors" not in files, folder
    ids = torch.randint(3, vocab, (2, 12))
    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(root / "base"), root / "run" / "final")
    assert torch.equal(logits(reloaded, ids), logits(model, ids))


def test_resume_from_a_lora_checkpoint_reproduces_the_run(lora_run, tmp_path):
    root, model, vocab = lora_run
    run = tmp_path / "run"
    shutil.copytree(root / "run" / "checkpoint-3", run / "checkpoint-3")  # as if killed after step 3
    resumed = fresh_lora(root)
    args = make_args(tmp_path, max_steps=6, save_strategy="steps", save_steps=3)
    trainer = Trainer(model=resumed, args=args, train_dataset=lm_rows(vocab=vocab), data_collator=PadCollator())
    trainer.train(resume_from_checkpoint=True)
    assert trainer.state.global_step == 6
    expected, got = weights(model), weights(resumed)
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_merged_export_equals_adapter_inference(lora_run, tmp_path, capsys):
    root, model, vocab = lora_run
    ids = torch.randint(3, vocab, (2, 12))
    expected = logits(model, ids)
    merge_and_save(root / "run" / "final", tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert not isinstance(merged, PeftModel) and not (tmp_path / "merged" / "adapter_config.json").exists()
    torch.testing.assert_close(logits(merged, ids), expected, atol=1e-5, rtol=0)
    assert len(AutoTokenizer.from_pretrained(tmp_path / "merged")) == vocab  # the tokenizer came along

    assert main(["export", str(root / "run"), "--merge", "--out", str(tmp_path / "cli")]) == 0
    assert "merged model" in capsys.readouterr().out
    torch.testing.assert_close(
        logits(AutoModelForCausalLM.from_pretrained(tmp_path / "cli"), ids), expected, atol=1e-5, rtol=0
    )


def test_export_without_merge_copies_model_files_not_training_state(lora_run, tmp_path):
    root, _, _ = lora_run
    assert main(["export", str(root / "run" / "checkpoint-3"), "--out", str(tmp_path / "adapter")]) == 0
    files = {p.name for p in (tmp_path / "adapter").iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json"} <= files
    assert not files & {
        "optimizer.safetensors",
        "scheduler.safetensors",
        "trainer_state.json",
        "training_args.json",
        "rng_state_0.safetensors",
    }


def test_export_of_a_full_model_copies_it(tmp_path):
    tiny_llama().save_pretrained(tmp_path / "run" / "final")
    (tmp_path / "run" / "final" / "training_args.json").write_text("{}")
    assert main(["export", str(tmp_path / "run" / "final")]) == 0  # default --out: RUN_DIR/export
    assert {p.name for p in (tmp_path / "run" / "export").iterdir()} == {
        "config.json",
        "generation_config.json",
        "model.safetensors",
    }


def test_export_errors_are_one_line(lora_run, tmp_path, capsys):
    root, _, _ = lora_run
    full = tmp_path / "full"
    tiny_llama().save_pretrained(full)
    capsys.readouterr()  # the save's progress bar
    cases = [
        (["export", str(full), "--merge", "--out", str(tmp_path / "a")], "--merge needs a PEFT adapter"),
        (["export", str(tmp_path / "nope")], "is not a directory"),
        (["export", str(root / "run"), "--out", str(full)], "is not empty"),
        (["export", str(root / "run"), "--base", str(full), "--out", str(tmp_path / "b")], "add --merge"),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err


def test_merge_names_the_fix_when_the_base_is_unknown(tmp_path):
    model = apply_peft(tiny_llama(), {"r": 2, "target_modules": QV}, echo=None)  # built from a config: no name
    model.save_pretrained(tmp_path / "adapter")
    with pytest.raises(CheckpointError, match="does not name its base model") as info:
        merge_and_save(tmp_path / "adapter", tmp_path / "out")
    assert "\n" not in str(info.value)


def test_merge_refuses_a_prompt_learning_adapter(tmp_path):
    tiny_llama().save_pretrained(tmp_path / "base")
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    apply_peft(base, {"method": "prompt_tuning", "num_virtual_tokens": 2}, echo=None).save_pretrained(tmp_path / "pt")
    with pytest.raises(CheckpointError, match="peft method prompt_tuning adds no weights that can be merged"):
        merge_and_save(tmp_path / "pt", tmp_path / "out")


def test_gradient_checkpointing_still_trains_the_adapters(tmp_path):
    """transformers #26221: reentrant checkpointing + frozen embeddings -> no gradient reaches the adapters."""
    model = apply_peft(tiny_llama(), {"r": 4, "target_modules": QV}, echo=None)
    before = params(model)
    train(
        model, tmp_path, max_steps=3, gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": True}
    )
    assert_only_trainable_changed(model, before)


def test_apply_peft_enables_input_grads_under_checkpointing():
    ids = torch.randint(3, 64, (2, 10))

    def checkpointed():
        base = tiny_llama()
        base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": True})
        base.disable_input_require_grads()  # what a model or transformers release without the hook leaves you with
        return base

    plain = get_peft_model(checkpointed(), LoraConfig(r=4, target_modules=QV, task_type="CAUSAL_LM"))
    plain.base_model.model.disable_input_require_grads()
    plain.train()
    with (
        pytest.raises(RuntimeError, match="does not require grad"),
        pytest.warns(UserWarning, match="None of the inputs"),
    ):
        plain(input_ids=ids, labels=ids).loss.backward()  # the trap itself
    model = apply_peft(checkpointed(), {"r": 4, "target_modules": QV}, echo=None)
    model.train()
    model(input_ids=ids, labels=ids).loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_use_adapter_switches_and_restores_even_on_error():
    model = apply_peft(tiny_llama(), {"r": 2, "target_modules": QV}, adapter_name="A", echo=None)
    apply_peft(model, {"r": 2, "target_modules": QV}, adapter_name="B", echo=None)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    with pytest.raises(KeyError), use_adapter(model, "B"):
        assert model.active_adapter == "B"
        assert all(p.requires_grad == (".B." in n) for n, p in model.named_parameters() if "lora_" in n)
        raise KeyError("boom")
    assert model.active_adapter == "A"
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    with pytest.raises(ConfigError, match=r"adapter 'BB' not found \(did you mean 'B'\?\)"), use_adapter(model, "BB"):
        pass


def test_use_adapter_on_a_transformers_model_with_add_adapter():
    model = tiny_llama()
    add_adapter(model, LoraConfig(r=2, target_modules=QV), "x")
    with pytest.warns(UserWarning, match="multiple adapters"):
        model.add_adapter(LoraConfig(r=2, target_modules=QV), adapter_name="y")
    model.set_adapter("x")
    with pytest.raises(ValueError), use_adapter(model, "y"):
        assert model.active_adapters() == ["y"]
        raise ValueError("boom")
    assert model.active_adapters() == ["x"]


def test_a_transformers_that_needs_a_newer_peft_is_named_in_one_line(monkeypatch):
    import importlib.metadata

    import transformers.integrations.peft as integration

    real_version = importlib.metadata.version
    monkeypatch.setattr(integration, "MIN_PEFT_VERSION", "0.22.0")
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.21.2" if name == "peft" else real_version(name))
    problem = adapter_methods_problem()
    assert problem == (
        f"transformers {transformers.__version__} needs peft >= 0.22.0 for model.add_adapter/load_adapter/set_adapter, "
        "but peft 0.21.2 is installed; pip install 'peft>=0.22.0', or wrap the model with "
        "trainformers.models.apply_peft (or peft.get_peft_model), which works with peft 0.21.2"
    )
    with pytest.raises(ConfigError) as info:  # the hint no longer points at add_adapter, which can't work
        with use_adapter(tiny_llama(), "A"):
            pass
    assert str(info.value) == f"adapter 'A' not found; {problem}"
    monkeypatch.setattr(integration, "MIN_PEFT_VERSION", "0.21.2")
    assert adapter_methods_problem() is None


def test_build_peft_config_passes_fields_through():
    config = build_peft_config({"r": 8, "lora_alpha": 16, "target_modules": ["q_proj"], "use_dora": True})
    assert isinstance(config, LoraConfig)
    assert (config.r, config.lora_alpha, config.use_dora, config.task_type) == (8, 16, True, "CAUSAL_LM")
    assert build_peft_config(config) is config
    assert type(build_peft_config({"method": "IA3"})).__name__ == "IA3Config"
    assert {"lora", "ia3", "lokr", "loha", "boft", "vera", "adalora", "prefix_tuning", "prompt_tuning"} <= set(
        peft_methods()
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"r": 8, "lora_alph": 16},
            r"unknown key 'peft.lora_alph' for peft.method lora \(did you mean 'peft.lora_alpha'\?\)",
        ),
        ({"method": "ia3", "r": 8}, r"unknown key 'peft.r' for peft.method ia3"),
        (
            {"method": "lorra"},
            r"peft.method='lorra' is not a PEFT method \(did you mean 'lora'\?\); choose one of: .*ia3",
        ),
        ({"peft_type": "LORA"}, r"peft.peft_type is set by peft; choose the method with peft.method"),
        ({"layers_pattern": "layers"}, r"peft \(lora\): When `layers_pattern` is specified"),
        ({"loftq_config": {"bits": 4}}, r"peft.loftq_config: "),
        ([("r", 8)], r"peft must be a mapping"),
    ],
)
def test_build_peft_config_errors_are_one_line(options, message):
    with pytest.raises(ConfigError, match=message) as info:
        build_peft_config(options)
    assert "\n" not in str(info.value)


def test_loftq_config_mapping_becomes_a_loftq_config():
    import importlib.util

    options = {"init_lora_weights": "loftq", "loftq_config": {"loftq_bits": 4, "loftq_iter": 2}}
    if importlib.util.find_spec("scipy") is None:  # peft needs scipy for LoftQ: the error says so
        with pytest.raises(ConfigError, match="scipy"):
            build_peft_config(options)
    else:
        assert build_peft_config(options).loftq_config == {"loftq_bits": 4, "loftq_iter": 2}
