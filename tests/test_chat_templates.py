"""Named chat templates: exact renderings, exact label masks, their special tokens, the CLI end to end.

The expected strings are written by hand from each family's published format (the model's
tokenizer_config.json chat template on the Hub, Stanford Alpaca's and FastChat's prompt code), with
this byte-only tokenizer's `<|bos|>`/`<|eos|>` in place of the family's BOS/EOS.
"""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
from test_chat import CONVO, TEXTS

from trainformers.config import DataSection
from trainformers.data import CHAT_TEMPLATES, encode_chat, render_chat, setup_chat_template, stop_token_ids
from trainformers.data.chat import tokenize_for_instruction
from trainformers.data.chat_templates import resolve_chat_template
from trainformers.data.tokenizer import train_tokenizer
from trainformers.errors import ConfigError

# name -> (the whole conversation, the answers' spans as trained, system + user with the generation prompt)
EXPECTED = {
    "chatml": (
        "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n4.<|im_end|>\n<|im_start|>user\nAnd 3+3?<|im_end|>\n"
        "<|im_start|>assistant\n6.<|im_end|>\n",
        ["4.<|im_end|>\n", "6.<|im_end|>\n"],
        "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n"
        "<|im_start|>assistant\n",
    ),
    "llama3": (
        "<|bos|><|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n4.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nAnd 3+3?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n6.<|eot_id|>",
        ["4.<|eot_id|>", "6.<|eot_id|>"],
        "<|bos|><|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
    ),
    "llama2": (
        "<|bos|>[INST] <<SYS>>\nYou are terse.\n<</SYS>>\n\nWhat is 2+2? [/INST] 4. <|eos|>"
        "<|bos|>[INST] And 3+3? [/INST] 6. <|eos|>",
        [" 4. <|eos|>", " 6. <|eos|>"],
        "<|bos|>[INST] <<SYS>>\nYou are terse.\n<</SYS>>\n\nWhat is 2+2? [/INST]",
    ),
    "mistral": (
        "<|bos|>[INST] You are terse.\n\nWhat is 2+2? [/INST]4.<|eos|>[INST] And 3+3? [/INST]6.<|eos|>",
        ["4.<|eos|>", "6.<|eos|>"],
        "<|bos|>[INST] You are terse.\n\nWhat is 2+2? [/INST]",
    ),
    "zephyr": (
        "<|system|>\nYou are terse.<|eos|>\n<|user|>\nWhat is 2+2?<|eos|>\n<|assistant|>\n4.<|eos|>\n"
        "<|user|>\nAnd 3+3?<|eos|>\n<|assistant|>\n6.<|eos|>\n",
        ["4.<|eos|>\n", "6.<|eos|>\n"],
        "<|system|>\nYou are terse.<|eos|>\n<|user|>\nWhat is 2+2?<|eos|>\n<|assistant|>\n",
    ),
    "gemma": (
        "<|bos|><start_of_turn>user\nYou are terse.\n\nWhat is 2+2?<end_of_turn>\n"
        "<start_of_turn>model\n4.<end_of_turn>\n<start_of_turn>user\nAnd 3+3?<end_of_turn>\n"
        "<start_of_turn>model\n6.<end_of_turn>\n",
        ["4.<end_of_turn>\n", "6.<end_of_turn>\n"],
        "<|bos|><start_of_turn>user\nYou are terse.\n\nWhat is 2+2?<end_of_turn>\n<start_of_turn>model\n",
    ),
    "phi3": (
        "<|system|>\nYou are terse.<|end|>\n<|user|>\nWhat is 2+2?<|end|>\n<|assistant|>\n4.<|end|>\n"
        "<|user|>\nAnd 3+3?<|end|>\n<|assistant|>\n6.<|end|>\n",
        ["4.<|end|>\n", "6.<|end|>\n"],
        "<|system|>\nYou are terse.<|end|>\n<|user|>\nWhat is 2+2?<|end|>\n<|assistant|>\n",
    ),
    "alpaca": (
        "<|bos|>You are terse.\n\n### Instruction:\nWhat is 2+2?\n\n### Response:\n4.<|eos|>"
        "\n\n### Instruction:\nAnd 3+3?\n\n### Response:\n6.<|eos|>",
        ["4.<|eos|>", "6.<|eos|>"],
        "<|bos|>You are terse.\n\n### Instruction:\nWhat is 2+2?\n\n### Response:\n",
    ),
    "vicuna": (
        "<|bos|>You are terse. USER: What is 2+2? ASSISTANT: 4.<|eos|>USER: And 3+3? ASSISTANT: 6.<|eos|>",
        [" 4.<|eos|>", " 6.<|eos|>"],
        "<|bos|>You are terse. USER: What is 2+2? ASSISTANT:",
    ),
}


@pytest.fixture(scope="module")
def byte_tok():
    return train_tokenizer(TEXTS, vocab_size=259)  # bytes + 3 specials: one ASCII char = one token


def set_up(name: str):
    tokenizer = train_tokenizer(TEXTS, vocab_size=259)
    setup_chat_template(tokenizer, name)
    return tokenizer


def test_every_named_template_is_pinned():
    assert set(EXPECTED) == set(CHAT_TEMPLATES)
    assert {"chatml", "llama3", "llama2", "mistral", "zephyr", "gemma", "phi3", "alpaca", "vicuna"} <= set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_named_template_renders_a_two_turn_conversation_exactly(byte_tok, name):
    full, _, prompt = EXPECTED[name]
    assert render_chat(CONVO, byte_tok, chat_template=name) == full
    assert render_chat(CONVO[:2], byte_tok, chat_template=name, add_generation_prompt=True) == prompt
    # the name and its Jinja source are the same template
    assert render_chat(CONVO, byte_tok, chat_template=CHAT_TEMPLATES[name].template) == full


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_named_template_labels_exactly_the_answers(name):
    tokenizer = set_up(name)
    full, spans, _ = EXPECTED[name]
    segments, rest = [], full
    for span in spans:  # the text cut at each answer span, in order
        before, found, rest = rest.partition(span)
        assert found, (span, rest)
        segments += [(before, False), (span, True)]
    segments.append((rest, False))
    ids, labels = [], []
    for text, trained in segments:
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        ids += piece
        labels += piece if trained else [-100] * len(piece)
    assert encode_chat(CONVO, tokenizer, chat_template=name) == (ids, labels)
    for token in CHAT_TEMPLATES[name].special_tokens:  # every marker is one token, trained or not
        assert len(tokenizer(token, add_special_tokens=False)["input_ids"]) == 1


def test_alpaca_and_vicuna_write_their_default_system_text(byte_tok):
    turns = CONVO[1:3]
    assert render_chat(turns, byte_tok, chat_template="alpaca") == (
        "<|bos|>Below is an instruction that describes a task. Write a response that appropriately completes "
        "the request.\n\n### Instruction:\nWhat is 2+2?\n\n### Response:\n4.<|eos|>"
    )
    assert render_chat(turns, byte_tok, chat_template="vicuna") == (
        "<|bos|>A chat between a curious user and an artificial intelligence assistant. The assistant gives "
        "helpful, detailed, and polite answers to the user's questions. USER: What is 2+2? ASSISTANT: 4.<|eos|>"
    )


def test_a_role_the_template_has_not_is_a_data_error(byte_tok):
    from trainformers.errors import DataError

    tool = [{"role": "user", "content": "x"}, {"role": "tool", "content": "y"}]
    with pytest.raises(DataError, match="no tool role"):
        render_chat(tool, byte_tok, chat_template="llama2")
    assert "<|im_start|>tool\ny" in render_chat(tool, byte_tok, chat_template="chatml")


def test_unknown_name_is_one_line_with_did_you_mean_and_the_names():
    with pytest.raises(ConfigError) as err:
        DataSection(chat_template="chatm")
    message = str(err.value)
    assert "\n" not in message and "did you mean 'chatml'" in message
    assert all(name in message for name in CHAT_TEMPLATES)
    assert DataSection(chat_template=" ChatML ").chat_template == " ChatML "  # kept as written, resolved by name
    jinja = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert DataSection(chat_template=jinja).chat_template == jinja  # Jinja syntax: a template of its own
    assert resolve_chat_template(jinja) == jinja


def test_every_name_is_in_the_fields_help():
    import dataclasses

    (help_text,) = (f.metadata["help"] for f in dataclasses.fields(DataSection) if f.name == "chat_template")
    assert all(name in help_text for name in CHAT_TEMPLATES)


def test_setup_adds_the_missing_tokens_once_and_sets_the_template(tmp_path):
    from transformers import AutoTokenizer

    tokenizer = train_tokenizer(TEXTS, vocab_size=259)
    assert setup_chat_template(tokenizer, "chatml") == ["<|im_start|>", "<|im_end|>"]
    assert len(tokenizer) == 261 and tokenizer.chat_template == CHAT_TEMPLATES["chatml"].template
    assert setup_chat_template(tokenizer, "chatml") == []  # idempotent: a resumed run gets the same ids
    assert stop_token_ids(None, tokenizer) == [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")]
    tokenizer.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert render_chat(CONVO, again) == EXPECTED["chatml"][0]  # the saved tokenizer renders as training did
    assert again("<|im_end|>", add_special_tokens=False)["input_ids"] == [tokenizer.convert_tokens_to_ids("<|im_end|>")]


def test_setup_without_a_name_keeps_the_tokenizers_own_or_writes_the_default():
    from trainformers.data import DEFAULT_CHAT_TEMPLATE
    from trainformers.data.tokenizer import CHAT_TEMPLATE

    plain = train_tokenizer(TEXTS, vocab_size=259)
    assert setup_chat_template(plain) == [] and plain.chat_template == DEFAULT_CHAT_TEMPLATE
    chat = train_tokenizer(TEXTS, vocab_size=300, chat_tokens=True)
    assert setup_chat_template(chat) == [] and chat.chat_template == CHAT_TEMPLATE


def test_a_named_template_needs_its_tokens_in_the_tokenizer(byte_tok):
    rows = datasets.Dataset.from_list([{"messages": CONVO}])
    with pytest.raises(ConfigError, match=r"<\|im_start\|>, <\|im_end\|>.*setup_chat_template"):
        tokenize_for_instruction(rows, byte_tok, max_length=256, chat_template="chatml")
    tokenized, stats = tokenize_for_instruction(rows, set_up("chatml"), max_length=256, chat_template="chatml")
    assert len(tokenized) == 1 and "chat template: chatml" in stats.notes


def test_pretrained_model_grows_its_embeddings_for_added_tokens(tmp_path):
    """A pretrained model whose tokenizer lacks chatml's tokens: both grow, generation stops at <|im_end|>."""
    from trainformers import DecoderLM, DecoderLMConfig
    from trainformers.config import ModelSection, RunConfig, TrainingArguments
    from trainformers.run import _setup_chat_template, build_model

    base = train_tokenizer(TEXTS, vocab_size=259)
    DecoderLM(DecoderLMConfig.preset("nano", vocab_size=len(base))).save_pretrained(tmp_path / "base")
    base.save_pretrained(tmp_path / "base")
    config = RunConfig(
        model=ModelSection(name_or_path=str(tmp_path / "base")),
        data=DataSection(training_mode="instruction", chat_template="chatml"),
        training=TrainingArguments(output_dir=str(tmp_path / "out"), report_to="none"),
    )
    tokenizer = train_tokenizer(TEXTS, vocab_size=259)
    _setup_chat_template(config, tokenizer)
    model = build_model(config, tokenizer)
    assert model.get_input_embeddings().num_embeddings == len(tokenizer) == 261
    assert model.generation_config.eos_token_id == [tokenizer.eos_token_id, 260]
    config.peft = {"r": 4}  # under LoRA the new rows would stay untrained: refused in one line
    with pytest.raises(ConfigError, match="modules_to_save"):
        _setup_chat_template(config, train_tokenizer(TEXTS, vocab_size=259))
    config.peft = {"r": 4, "modules_to_save": ["embed_tokens", "lm_head"]}
    _setup_chat_template(config, train_tokenizer(TEXTS, vocab_size=259))


def write_chats(path: Path, n: int = 24) -> Path:
    rows = [
        {"messages": [{"role": "user", "content": f"What is {i}+{i}?"}, {"role": "assistant", "content": str(2 * i)}]}
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


TINY_INSTRUCT = [
    "--data.training_mode", "instruction",
    "--model.hidden_size", "32", "--model.num_layers", "1", "--model.num_heads", "2", "--model.num_kv_heads", "1",
    "--model.vocab_size", "300", "--model.sample_prompt", "''",
    "--data.max_length", "64", "--data.validation_split_percentage", "25",
    "--training.max_steps", "4", "--training.logging_steps", "1", "--training.per_device_train_batch_size", "4",
    "--training.eval_strategy", "steps", "--training.eval_steps", "2", "--training.save_strategy", "no",
    "--training.report_to", "none", "--training.report_at_end", "false",
]  # fmt: skip


def test_cli_trains_with_a_named_template_and_saves_it(tmp_path, capsys, monkeypatch):
    """`--data.chat_template chatml` from scratch: the run's tokenizer gets chatml's tokens and template,
    final/ holds them, and `generate --chat` renders the prompt the same way."""
    from transformers import AutoTokenizer

    from trainformers.cli import main

    monkeypatch.chdir(tmp_path)
    data = write_chats(tmp_path / "chats.jsonl")
    code = main(["train", *TINY_INSTRUCT, "--data.source", str(data), "--data.chat_template", "chatml",
                 "--training.output_dir", "run"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    final = tmp_path / "run" / "final"
    tokenizer = AutoTokenizer.from_pretrained(final)
    assert tokenizer.chat_template == CHAT_TEMPLATES["chatml"].template
    assert {"<|im_start|>", "<|im_end|>"} <= set(tokenizer.get_added_vocab())
    config = json.loads((final / "config.json").read_text())
    assert config["vocab_size"] == len(tokenizer)
    generation = json.loads((final / "generation_config.json").read_text())
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in generation["eos_token_id"]
    assert "chatml" in (tmp_path / "run" / "config.yaml").read_text()
    capsys.readouterr()
    assert main(["generate", "run", "Hi", "--chat", "--greedy", "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.startswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_cli_unknown_template_name_is_one_line(tmp_path, capsys, monkeypatch):
    from trainformers.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["train", *TINY_INSTRUCT, "--data.chat_template", "lama3", "--training.output_dir", "run"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "did you mean 'llama3'" in err
    assert not (tmp_path / "run").exists()
