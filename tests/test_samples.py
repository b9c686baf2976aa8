"""Samples at every evaluation (`SampleCallback`, `model.generate_every_eval`): logged with the step,
greedy and deterministic, invisible to the training itself, sent to the trackers and the report."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import datasets
import pytest
import torch
from conftest import PadCollator, lm_rows, make_args, read_losses, tiny_llama, weights

from trainformers import SampleCallback, Trainer, TrainerCallback
from trainformers.config import DataSection, ModelSection, RunConfig, TrainingArguments
from trainformers.data import render_chat, tokenize_for_instruction
from trainformers.data.tokenizer import train_tokenizer
from trainformers.errors import ConfigError
from trainformers.samples import EVAL_PROMPT_TOKENS, eval_prompts, generate_samples, send_samples

TEXTS = ["The cat sat on the mat. What is two and two? Four, and the dog ran."] * 30


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(TEXTS, vocab_size=300)


def dropout_llama(vocab: int, seed: int = 0):
    model = tiny_llama(seed, vocab=vocab)
    for layer in model.model.layers:  # dropout draws from the RNG every step: a sample that moved it would show
        layer.self_attn.attention_dropout = 0.1
    return model


PROMPTS = ["The cat", [{"role": "user", "content": "What is two and two?"}], [5, 6, 7]]
RUN_ARGS = dict(eval_strategy="steps", eval_steps=2, max_steps=6, per_device_train_batch_size=4)


def trainer(tmp_path, tok, callbacks=None, **overrides):
    vocab = len(tok)
    return Trainer(
        dropout_llama(vocab),
        make_args(tmp_path, **{**RUN_ARGS, **overrides}),
        data_collator=PadCollator(),
        train_dataset=lm_rows(24, vocab=vocab),
        eval_dataset=lm_rows(8, seed=3, vocab=vocab),
        processing_class=tok,
        callbacks=callbacks,
    )


def sample_rows(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    return [row for row in rows if "samples" in row]


def test_samples_at_each_evaluation_greedy_and_training_unchanged(tmp_path, tok):
    on = trainer(tmp_path / "on", tok, [SampleCallback(PROMPTS, max_new_tokens=4)])
    on.train()
    off = trainer(tmp_path / "off", tok)
    off.train()
    again = trainer(tmp_path / "again", tok, [SampleCallback(PROMPTS, max_new_tokens=4)])
    again.train()

    rows = sample_rows(tmp_path / "on" / "run")
    assert [row["step"] for row in rows] == [2, 4, 6]  # one row per evaluation, at its step
    for row in rows:
        assert [s["prompt"] for s in row["samples"]] == ["The cat", "What is two and two?", tok.decode([5, 6, 7])]
        assert all(isinstance(s["completion"], str) for s in row["samples"])
    assert sample_rows(tmp_path / "again" / "run") == rows  # greedy: the same samples every run
    assert read_losses(tmp_path / "on" / "run") == read_losses(tmp_path / "off" / "run")  # RNG untouched
    for name, value in weights(on.model).items():
        assert torch.equal(value, weights(off.model)[name]), name
    assert on.model.training == off.model.training  # left in the mode it was found in
    # the log_history holds the row too (what trainer_state.json saves)
    assert [r["step"] for r in on.state.log_history if "samples" in r] == [2, 4, 6]


class Crash(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 4:
            raise KeyboardInterrupt("simulated crash")


def test_resume_with_samples_equals_an_uninterrupted_run_without(tmp_path, tok):
    resume_args = dict(save_strategy="steps", save_steps=3)
    full = trainer(tmp_path / "full", tok, **resume_args)
    full.train()
    crashed = trainer(tmp_path / "cut", tok, [SampleCallback(PROMPTS[:1], 3), Crash()], **resume_args)
    with pytest.raises(KeyboardInterrupt):
        crashed.train()
    resumed = trainer(tmp_path / "cut", tok, [SampleCallback(PROMPTS[:1], 3)], **resume_args)
    resumed.train(resume_from_checkpoint=True)
    assert read_losses(tmp_path / "cut" / "run") == read_losses(tmp_path / "full" / "run")
    for name, value in weights(resumed.model).items():
        assert torch.equal(value, weights(full.model)[name]), name
    assert [row["step"] for row in sample_rows(tmp_path / "cut" / "run")] == [2, 4, 6]  # step 4 redone once


def test_generate_samples_restores_the_mode_and_the_rng(tok):
    model = tiny_llama(vocab=len(tok))
    model.train()
    state = torch.get_rng_state()
    first = generate_samples(model, tok, PROMPTS, 5)
    assert model.training and torch.equal(torch.get_rng_state(), state)
    model.eval()
    assert generate_samples(model, tok, PROMPTS, 5) == first and not model.training
    assert [s["prompt"] for s in first] == ["The cat", "What is two and two?", tok.decode([5, 6, 7])]


class Scripted(torch.nn.Module):
    """Generates the same continuation whatever the prompt: "ab", EOS, "cd"."""

    def __init__(self, tok):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.tail = tok("ab", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        self.tail += tok("cd", add_special_tokens=False)["input_ids"]

    def generate(self, ids, **kwargs):
        self.kwargs = kwargs
        return torch.cat([ids, torch.tensor([self.tail])], dim=1)


def test_a_completion_ends_before_the_stop_token_and_decoding_is_greedy(tok):
    model = Scripted(tok)
    assert generate_samples(model, tok, ["The cat"], 5) == [{"prompt": "The cat", "completion": "ab"}]
    assert model.kwargs["do_sample"] is False and model.kwargs["eos_token_id"] == [tok.eos_token_id]


def test_sample_callback_checks_its_arguments_and_needs_a_tokenizer(tmp_path, tok):
    with pytest.raises(ConfigError, match="at least one prompt"):
        SampleCallback([])
    with pytest.raises(ConfigError, match="max_new_tokens"):
        SampleCallback(["x"], 0)
    t = Trainer(
        tiny_llama(vocab=len(tok)),
        make_args(tmp_path, **RUN_ARGS),
        data_collator=PadCollator(),
        train_dataset=lm_rows(8, vocab=len(tok)),
        eval_dataset=lm_rows(4, vocab=len(tok)),
        callbacks=[SampleCallback(["x"], 2)],
    )
    with pytest.raises(ConfigError, match="processing_class"):
        t.evaluate()


def test_eval_prompts_from_instruction_and_text_rows(tok):
    chats = [
        {"messages": [{"role": "user", "content": f"What is {i}?"}, {"role": "assistant", "content": f"{i}."}]}
        for i in range(3)
    ]
    tokenized, _ = tokenize_for_instruction(datasets.Dataset.from_list(chats), tok, max_length=128)
    prompts = eval_prompts(tokenized, 5)
    assert len(prompts) == 3  # fewer rows than asked: as many as there are
    for prompt, chat in zip(prompts, chats):  # the conversation up to its answer, with the generation prompt
        text = render_chat(chat["messages"][:1], tok, add_generation_prompt=True)
        assert prompt == tok(text, add_special_tokens=False)["input_ids"]
    text_rows = lm_rows(4, min_len=30, max_len=30, vocab=len(tok))  # labels == input_ids: text
    assert eval_prompts(text_rows, 2) == [row["input_ids"][:EVAL_PROMPT_TOKENS] for row in text_rows.select([0, 1])]
    blocks = datasets.Dataset.from_list([{"input_ids": list(range(40))}])  # no labels column
    assert eval_prompts(blocks.to_iterable_dataset(), 1) == [list(range(EVAL_PROMPT_TOKENS))]


def test_send_samples_to_table_text_and_other_trackers():
    calls = []
    table = SimpleNamespace(name="wandb", log_table=lambda *a, **k: calls.append(("table", a, k)))
    board = SimpleNamespace(name="tensorboard", log=lambda values, step: calls.append(("text", values, step)))
    other = SimpleNamespace(name="aim", log=lambda *a, **k: calls.append(("other", a, k)))
    send_samples([table, board, other], [{"prompt": "a_b", "completion": "c*d\ne"}], 7)
    assert calls[0] == (
        "table",
        ("samples",),
        {"columns": ["step", "prompt", "completion"], "data": [[7, "a_b", "c*d\ne"]], "step": 7},
    )
    assert calls[1] == ("text", {"samples": "**a\\_b** → c\\*d  \ne"}, 7)
    assert len(calls) == 2  # a tracker without text support gets nothing


def test_tensorboard_gets_the_samples_as_text(tmp_path, tok):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    t = trainer(tmp_path, tok, [SampleCallback(PROMPTS[:1], 3)], report_to=["tensorboard"], max_steps=2)
    t.train()
    t.accelerator.end_training()
    events = next(Path(t.args.logging_dir).rglob("events.out.tfevents.*")).parent
    acc = EventAccumulator(str(events), size_guidance={"tensors": 0})
    acc.Reload()
    (tag,) = [tag for tag in acc.Tags()["tensors"] if tag.startswith("samples")]
    (event,) = acc.Tensors(tag)
    assert event.step == 2 and b"The cat" in event.tensor_proto.string_val[0]


def test_report_lists_the_samples_of_each_evaluation(tmp_path):
    from trainformers.report import summarize_run, write_report

    rows = [
        {"loss": 3.0, "step": 1},
        {"eval_loss": 2.9, "step": 2},
        {"samples": [{"prompt": "Hi", "completion": "old"}], "step": 2},
        {"samples": [{"prompt": "Hi", "completion": "a | b\nc"}], "step": 4},
    ]
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    _, md = write_report(tmp_path)
    text = md.read_text()
    samples = text[text.index("## Samples") :]
    assert "| 2 | Hi | old |" in samples and "| 4 | Hi | a \\| b c |" in samples
    summary = summarize_run(tmp_path)
    assert summary["samples_step"] == 4 and summary["samples"] == rows[-1]["samples"]


# ---- the run file ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, message",
    [(0, ">= 1"), (True, ">= 1"), ([], "list of prompts"), ([1, 2], "list of prompts"), ({"a": 1}, "list of prompts")],
)
def test_generate_every_eval_values_are_checked(value, message):
    with pytest.raises(ConfigError, match=message):
        ModelSection(generate_every_eval=value)


def test_generate_every_eval_forms_and_contradictions():
    assert ModelSection(generate_every_eval="Once").generate_every_eval == ["Once"]
    assert ModelSection(generate_every_eval=3).generate_every_eval == 3
    with pytest.raises(ConfigError, match="sample_max_new_tokens"):
        ModelSection(generate_every_eval=2, sample_max_new_tokens=0)
    with pytest.raises(ConfigError, match="eval_strategy"):
        RunConfig(model=ModelSection(generate_every_eval=2), training=TrainingArguments(output_dir="x"))


def test_run_prompts_render_listed_prompts_as_user_turns_in_instruction_runs():
    from trainformers.samples import run_prompts

    steps = TrainingArguments(output_dir="x", eval_strategy="steps")
    text = RunConfig(model=ModelSection(generate_every_eval=["The"]), training=steps)
    assert run_prompts(text, None) == ["The"]
    chat = RunConfig(
        model=ModelSection(generate_every_eval=["Hi"]),
        data=DataSection(training_mode="instruction", system_prompt="Be brief."),
        training=steps,
    )
    assert run_prompts(chat, None) == [[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]]


SMALL = [
    "--model.hidden_size", "32", "--model.num_layers", "1", "--model.num_heads", "2", "--model.num_kv_heads", "1",
    "--model.vocab_size", "300", "--data.num_samples", "30", "--data.max_length", "32",
    "--training.logging_steps", "2", "--training.eval_steps", "2", "--training.save_steps", "4",
    "--model.sample_max_new_tokens", "5", "--training.max_steps", "4", "--training.report_to", "none",
]  # fmt: skip


def test_cli_pretraining_run_samples_the_eval_set_into_log_report_and_summary(tmp_path, capsys, monkeypatch):
    from trainformers.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["train", *SMALL, "--model.generate_every_eval", "2", "--training.output_dir", "run"]) == 0
    rows = sample_rows(tmp_path / "run")
    assert [row["step"] for row in rows] == [2, 4]
    assert all(len(row["samples"]) == 2 and row["samples"][0]["prompt"] for row in rows)
    assert rows[0]["samples"][0]["prompt"] == rows[1]["samples"][0]["prompt"]  # the same eval rows each time
    assert "## Samples" in (tmp_path / "run" / "report.md").read_text()
    assert "generate_every_eval: 2" in (tmp_path / "run" / "config.yaml").read_text()
    capsys.readouterr()
    assert main(["report", "run"]) == 0
    summary = json.loads(capsys.readouterr().out.rsplit("\nplot:", 1)[0])
    assert summary["samples_step"] == 4 and summary["samples"] == rows[-1]["samples"]


def test_cli_instruction_run_renders_listed_prompts_with_its_chat_template(tmp_path, capsys, monkeypatch):
    from test_chat_templates import TINY_INSTRUCT, write_chats

    from trainformers.cli import main

    monkeypatch.chdir(tmp_path)
    data = write_chats(tmp_path / "chats.jsonl")
    argv = ["train", *TINY_INSTRUCT, "--data.source", str(data), "--data.chat_template", "chatml"]
    argv += ["--model.generate_every_eval", '["What is 3+3?"]', "--model.sample_max_new_tokens", "3"]
    assert main([*argv, "--training.output_dir", "run"]) == 0, capsys.readouterr().err
    rows = sample_rows(tmp_path / "run")
    assert [row["step"] for row in rows] == [2, 4]
    assert [s["prompt"] for s in rows[0]["samples"]] == ["What is 3+3?"]


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_samples_on_two_processes_do_not_hang(tmp_path, strategy):
    """DDP: rank 0 generates while rank 1 waits at the next step; FSDP: both generate (the forward is
    collective), in step to the longest sample. Either way one row per evaluation, written once."""
    import yaml
    from test_cli_distributed import RUN, python

    run = {**RUN, "model": {**RUN["model"], "generate_every_eval": 2}}
    run["training"] = {**RUN["training"], "eval_strategy": "steps", "eval_steps": 2}
    run["training"] |= {"distributed_strategy": strategy, "num_gpus": 2}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump({**run, "training": {**run["training"], "output_dir": "out"}}))
    done = python("-m", "trainformers", "train", "run.yaml", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [row["step"] for row in sample_rows(tmp_path / "out")] == [2, 4]
