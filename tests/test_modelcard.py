"""Model cards: metadata, hyperparameters, results table, versions and the report plot."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from conftest import PadCollator, lm_rows, make_args, tiny_llama

from trainformers import CycleTrainingArguments, Trainer
from trainformers.modelcard import create_model_card, framework_versions
from trainformers.report import format_value


def front_matter(text: str) -> tuple[dict, str]:
    """The card's YAML header (parsed) and its body."""
    assert text.startswith("---\n")
    header, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(header), body


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    args = make_args(tmp_path_factory.mktemp("card"), eval_strategy="steps", eval_steps=3, warmup_steps=2)
    trainer = Trainer(
        model=tiny_llama(),
        args=args,
        data_collator=PadCollator(),
        train_dataset=lm_rows(16),
        eval_dataset=lm_rows(4, seed=1),
    )
    trainer.train()
    return trainer


def test_card_of_a_trained_model(trained):
    path = trained.create_model_card(
        language="en", license="apache-2.0", tags=["demo", "trainformers"], finetuned_from="org/base-model",
        dataset_tags="org/tiny-rows", dataset_args="default",
    )  # fmt: skip
    out = Path(trained.args.output_dir)
    assert path == out / "README.md"
    meta, body = front_matter(path.read_text())

    evals = [row for row in trained.state.log_history if "eval_loss" in row]
    assert meta["license"] == "apache-2.0" and meta["language"] == "en"
    assert meta["tags"] == ["trainformers", "demo"] and meta["base_model"] == "org/base-model"
    assert meta["datasets"] == ["org/tiny-rows"]
    (result,) = meta["model-index"][0]["results"]
    assert meta["model-index"][0]["name"] == out.name
    assert result["task"]["type"] == "text-generation"  # inferred from LlamaForCausalLM
    assert result["dataset"] == {"name": "org/tiny-rows", "type": "org/tiny-rows", "args": "default"}
    assert result["metrics"] == [{"type": "loss", "value": pytest.approx(evals[-1]["eval_loss"]), "name": "Loss"}]

    assert "fine-tuned from [org/base-model](https://huggingface.co/org/base-model)" in body
    for line in ("- learning_rate: 0.01", "- train_batch_size: 4", "- seed: 0", "- training_steps: 6",
                 "- lr_scheduler_type: linear", "- lr_scheduler_warmup_steps: 2"):  # fmt: skip
        assert line + "\n" in body, line
    assert "- training.eval_strategy: steps" in body  # other changed settings, from config_diff

    # one results row per evaluation, with the training loss logged at or before that step
    table = [line for line in body.splitlines() if line.startswith("| ")]
    assert table[0] == "| Training Loss | Epoch | Step | Validation Loss |"
    losses = {row["step"]: row["loss"] for row in trained.state.log_history if "loss" in row}
    cells = [(losses[r["step"]], r["epoch"], r["step"], r["eval_loss"]) for r in evals]
    assert table[1:] == ["| " + " | ".join(map(format_value, row)) + " |" for row in cells]

    versions = framework_versions()
    assert {"trainformers", "transformers", "torch", "accelerate"} <= set(versions)
    for name, version in versions.items():
        assert f"- {name} {version}\n" in body
    assert "](report.png)" in body and (out / "report.png").is_file() and (out / "report.md").is_file()


def test_card_without_results_or_dataset(tmp_path):
    """Before training: no eval metrics, so model-index lists no result and the table says so."""
    args = make_args(tmp_path)
    trainer = Trainer(model=tiny_llama(), args=args, data_collator=PadCollator(), train_dataset=lm_rows(4))
    meta, body = front_matter(create_model_card(trainer, model_name="my-model").read_text())
    assert meta == {"library_name": "transformers", "tags": ["trainformers"],
                    "model-index": [{"name": "my-model", "results": []}]}  # fmt: skip
    assert "# my-model" in body and "trained from scratch" in body
    assert "No training or evaluation results were logged." in body and "report.png" not in body


def test_card_of_a_cycle_run_by_duck_typing(tmp_path):
    """A CycleTrainer-like object: .args, .state, .models; per-direction losses in the table."""
    out = tmp_path / "cycle"
    out.mkdir()
    history = [
        {"loss_A": 2.0, "loss_B": 3.0, "loss": 2.5, "learning_rate": 1e-3, "epoch": 0.5, "step": 1},
        {"eval_A_to_B_exact_match": 0.5, "eval_reconstruction_loss_A": 1.25, "eval_runtime": 0.1, "step": 1},
    ]  # fmt: skip
    (out / "log.jsonl").write_text("".join(json.dumps(row) + "\n" for row in history))
    args = CycleTrainingArguments(output_dir=str(out), learning_rate=1e-3, cycle_directions="A", report_to="none")
    trainer = SimpleNamespace(
        args=args, state=SimpleNamespace(log_history=history), models={"A": tiny_llama(), "B": tiny_llama(seed=1)}
    )
    meta, body = front_matter(create_model_card(trainer, dataset="numbers", tasks="translation").read_text())
    (result,) = meta["model-index"][0]["results"]
    assert result["task"]["type"] == "translation" and result["dataset"]["name"] == "numbers"
    metrics = {m["type"]: m["value"] for m in result["metrics"]}
    assert metrics == {"A_to_B_exact_match": 0.5, "reconstruction_loss_A": 1.25}
    assert "A pair of models (`A/`, `B/`)" in body
    header = (
        "| Training Loss | Training Loss A | Training Loss B | Epoch | Step "
        "| A To B Exact Match | Reconstruction Loss A |"
    )
    assert header in body and "| 2.5 | 2 | 3 | – | 1 | 0.5 | 1.25 |" in body  # no epoch logged with the eval
    assert "- training.cycle_directions: A" in body  # a cycle setting changed from its default
    assert (out / "report.png").is_file() and "](report.png)" in body


def test_card_lists_peft_settings(tmp_path):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_llama(), LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"]))
    trainer = SimpleNamespace(args=make_args(tmp_path), state=SimpleNamespace(log_history=[]), model=model)
    body = front_matter(create_model_card(trainer).read_text())[1]
    assert "### PEFT" in body and "- default.r: 2\n" in body and "- default.lora_alpha: 4\n" in body
    assert '- default.target_modules: ["q_proj", "v_proj"]' in body


def test_only_the_main_process_writes(tmp_path):
    trainer = SimpleNamespace(
        args=make_args(tmp_path),
        state=SimpleNamespace(log_history=[]),
        model=tiny_llama(),
        is_world_process_zero=lambda: False,
    )
    assert not create_model_card(trainer).exists()
