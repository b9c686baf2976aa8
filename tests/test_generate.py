"""`trainformers generate`: streams what `model.generate` produces, from any saved model directory."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from trainformers.cli import main
from trainformers.data import default_corpus, render_chat
from trainformers.data.tokenizer import END_TOKEN, train_tokenizer

PROMPT = "The assert statement"


def save_tiny_model(out, *, chat_tokens: bool = False):
    tokenizer = train_tokenizer(default_corpus()[:30], vocab_size=300, chat_tokens=chat_tokens)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return model, tokenizer


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    out = tmp_path_factory.mktemp("model")
    model, tokenizer = save_tiny_model(out)
    return out, model, tokenizer


def greedy_reference(model, tokenizer, text: str, n: int, stop: list[int], **encode) -> str:
    ids = tokenizer(text, return_tensors="pt", **encode)["input_ids"]
    with torch.no_grad():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=n,
            do_sample=False,
            eos_token_id=stop,
            pad_token_id=tokenizer.pad_token_id,
        )
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def test_greedy_streams_exactly_what_generate_returns(saved, capsys):
    out, model, tokenizer = saved
    expected = greedy_reference(model, tokenizer, PROMPT, 20, [tokenizer.eos_token_id])
    assert expected  # the random model does say something
    assert main(["generate", str(out), PROMPT, "--greedy", "--max-new-tokens", "20"]) == 0
    first = capsys.readouterr()
    assert first.out == PROMPT + expected + "\n"
    assert "greedy" in first.err
    # temperature 0 is greedy too, whatever the seed
    assert main(["generate", str(out), PROMPT, "--temperature", "0", "--max-new-tokens", "20", "--seed", "7"]) == 0
    assert capsys.readouterr().out == first.out


def test_sampling_is_seeded(saved, capsys):
    out, _, _ = saved
    runs = []
    for seed in (1, 1, 2):
        assert (
            main(
                [
                    "generate",
                    str(out),
                    PROMPT,
                    "--seed",
                    str(seed),
                    "--max-new-tokens",
                    "30",
                    "--top-k",
                    "50",
                    "--top-p",
                    "0.95",
                    "--temperature",
                    "1.5",
                ]
            )
            == 0
        )
        runs.append(capsys.readouterr().out)
    assert runs[0] == runs[1] != runs[2]
    assert all(r.startswith(PROMPT) for r in runs)


def test_a_run_directory_uses_final(saved, tmp_path, capsys):
    out, _, _ = saved
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    for f in out.iterdir():
        (run / "final" / f.name).write_bytes(f.read_bytes())
    assert main(["generate", str(run), PROMPT, "--greedy", "--max-new-tokens", "5"]) == 0
    via_run = capsys.readouterr().out
    assert main(["generate", str(out), PROMPT, "--greedy", "--max-new-tokens", "5"]) == 0
    assert capsys.readouterr().out == via_run


def test_chat_uses_the_tokenizer_template_and_stops_at_end(tmp_path, capsys):
    model, tokenizer = save_tiny_model(tmp_path, chat_tokens=True)
    prompt = render_chat([{"role": "user", "content": "Hi"}], tokenizer, add_generation_prompt=True)
    assert prompt == "<|user|>\nHi<|end|>\n<|assistant|>\n"
    stop = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(END_TOKEN)]
    expected = greedy_reference(model, tokenizer, prompt, 15, stop, add_special_tokens=False)
    assert main(["generate", str(tmp_path), "Hi", "--chat", "--greedy", "--max-new-tokens", "15"]) == 0
    assert capsys.readouterr().out == prompt + expected + "\n"


def test_chat_falls_back_to_the_default_template(saved, capsys):
    out, model, tokenizer = saved
    assert tokenizer.chat_template is None
    prompt = "<|user|>\nHi\n<|assistant|>\n"  # DEFAULT_CHAT_TEMPLATE, as plain text
    expected = greedy_reference(model, tokenizer, prompt, 10, [tokenizer.eos_token_id])
    assert main(["generate", str(out), "Hi", "--chat", "--greedy", "--max-new-tokens", "10"]) == 0
    assert capsys.readouterr().out == prompt + expected + "\n"


def test_missing_or_empty_directory_is_one_line(tmp_path, capsys):
    assert main(["generate", str(tmp_path / "nope"), "hi"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: checkpoint") and "is not a directory" in err and err.count("\n") == 1
    (tmp_path / "run" / "checkpoint-4").mkdir(parents=True)
    (tmp_path / "run" / "checkpoint-4" / "config.json").write_text("{}")
    assert main(["generate", str(tmp_path / "run"), "hi"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no model in") and "checkpoint-4" in err and err.count("\n") == 1


def test_a_directory_without_weights_is_one_line(saved, tmp_path, capsys):
    out, _, _ = saved
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((out / name).read_bytes())
    assert main(["generate", str(tmp_path), "hi"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot load a causal LM from") and err.count("\n") == 1, err
