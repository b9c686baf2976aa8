"""CycleTrainer: every pairing trains, MACCT touches only adapters, exact resume, accumulation
equivalence, evaluation metrics and the constructor's errors (tiny random-init models, CPU)."""

from __future__ import annotations

import copy

import pytest
import torch
from cycle_helpers import DeterministicCycleTrainer, cycle_args, demo, tiny_causal, tiny_t5, tokenizer
from datasets import Dataset

from trainformers import ConfigError, CycleTrainer, CycleTrainingArguments, DataError, TrainerCallback
from trainformers.cycle.metrics import text_metrics
from trainformers.cycle.streams import DomainStream, rank_rows
from trainformers.losses import lm_loss

LORA = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}


def _data():
    d = demo()
    return {"train_dataset_A": d.unpaired_A, "train_dataset_B": d.unpaired_B}


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _changed(before, model):
    after = model.state_dict()
    return [k for k, v in before.items() if not torch.equal(v, after[k])]


def _losses(trainer, key="loss"):
    return [row[key] for row in trainer.state.log_history if key in row and "train_loss" not in row]


PAIRINGS = {
    "causal+causal": (tiny_causal, tiny_causal),
    "seq2seq+seq2seq": (tiny_t5, tiny_t5),
    "causal+seq2seq": (tiny_causal, tiny_t5),
    "seq2seq+causal": (tiny_t5, tiny_causal),
}


@pytest.mark.parametrize("pairing", list(PAIRINGS))
def test_each_pairing_trains_and_both_losses_fall(tmp_path, pairing):
    make_a, make_b = PAIRINGS[pairing]
    models = {"A": make_a(0), "B": make_b(1)}
    before = {s: _weights(m) for s, m in models.items()}
    args = cycle_args(tmp_path, max_steps=16, logging_steps=4, learning_rate=1e-2)
    trainer = CycleTrainer(args, models=models, tokenizers=tokenizer(), **_data())
    assert trainer.uses_fast_path("A") == (pairing == "causal+causal")
    out = trainer.train()
    assert out.global_step == 16 and trainer.state.global_step == 16
    for side in "AB":
        losses = _losses(trainer, f"loss_{side}")
        assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
        assert losses[-1] < losses[0], (side, losses)
        assert _changed(before[side], models[side])
    # train_dataset_B (48 rows, 12 windows of 4) wrapped into its second epoch; A (64) did not
    assert trainer._streams["B"].epoch == 1 and trainer._streams["A"].epoch == 0
    assert out.training_loss == pytest.approx(sum(_losses(trainer)) / 4)


def test_different_tokenizers_each_model_gets_its_own_vocabulary(tmp_path):
    from trainformers.data import train_tokenizer

    d = demo()
    tok_b = train_tokenizer(list(d.unpaired_A["text"]) + list(d.unpaired_B["text"]), 290)
    models = {"A": tiny_causal(0), "B": tiny_t5(1, tok=tok_b)}
    trainer = CycleTrainer(
        cycle_args(tmp_path, max_steps=2), models=models, tokenizers={"A": tokenizer(), "B": tok_b}, **_data()
    )
    assert not trainer.uses_fast_path("A") and not trainer.uses_fast_path("B")
    targets = list(d.unpaired_A["text"][:4])  # model B's targets are domain-A texts
    sources = trainer._generate(trainer.sides["A"], list(d.unpaired_B["text"][:4]))
    batch = trainer.build_batch("B", sources, targets)
    labels = batch["labels"]
    assert int(labels.max()) < len(tok_b)
    for row, target in zip(labels.tolist(), [targets[i] for i in batch.kept]):
        assert tok_b.decode([t for t in row if t != -100], skip_special_tokens=True) == target
        assert [t for t in row if t != -100][-1] == tok_b.eos_token_id
    trainer.train()


def test_fast_path_batch_equals_text_path_on_real_generations(tmp_path):
    tok = tokenizer()
    args = cycle_args(
        tmp_path,
        do_sample_B=True,
        temperature_B=0.7,
        prompt_template_A="B: {text} =",
        sep_seq=" ",
        warmup_paired_steps=30,
        max_steps=30,
        learning_rate=1e-2,
    )
    trainer = CycleTrainer(
        args,
        models={"A": tiny_causal(0), "B": tiny_causal(1)},
        tokenizers=tok,
        paired_dataset=demo().paired_train,
        **_data(),
    )
    trainer.train()  # supervised steps only: model B learns to write number words
    assert trainer.uses_fast_path("A")
    targets = list(demo().unpaired_B["text"][:16])
    torch.manual_seed(3)
    ids = trainer._generate(trainer.sides["B"], targets)
    # the paths agree whenever re-encoding the decoded text gives the same ids (module docs)
    canonical = [
        i for i, row in enumerate(ids) if row and tok(tok.decode(row), add_special_tokens=False)["input_ids"] == row
    ]
    assert len(canonical) >= 4
    fast = trainer.build_batch("A", [ids[i] for i in canonical], [targets[i] for i in canonical])
    text = trainer.sides["A"].builder.from_texts(
        [tok.decode(ids[i]) for i in canonical], [targets[i] for i in canonical]
    )
    assert fast.keys() == text.keys()
    for key in fast:
        assert torch.equal(fast[key], text[key]), key


def test_macct_trains_only_the_adapters_and_starts_at_the_base_model(tmp_path):
    from peft import PeftModel

    base = tiny_causal(0)
    before = _weights(base)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        base_logits = base(ids).logits
    trainer = CycleTrainer(
        cycle_args(tmp_path, max_steps=3), models=base, tokenizers=tokenizer(), peft_configs=LORA, **_data()
    )
    assert trainer.macct and isinstance(trainer.models["A"], PeftModel) and trainer.models["A"] is trainer.models["B"]
    peft_model = trainer.models["A"]
    for adapter in "AB":
        peft_model.set_adapter(adapter)
        with torch.no_grad():
            torch.testing.assert_close(peft_model(ids).logits, base_logits)  # LoRA B starts at zero
    lora_before = {k: v.clone() for k, v in peft_model.state_dict().items() if "lora_" in k}
    trainer.train()
    after = peft_model.state_dict()
    base_after = {
        k.replace("base_model.model.", "", 1).replace(".base_layer", ""): v
        for k, v in after.items()
        if "lora_" not in k
    }
    for name, value in before.items():
        assert torch.equal(value, base_after[name]), name  # frozen base: bit-identical
    changed = {k for k, v in lora_before.items() if not torch.equal(v, after[k])}
    assert any(".A." in k for k in changed) and any(".B." in k for k in changed)
    # each optimizer holds only its own adapter
    names = {id(p): n for n, p in peft_model.named_parameters()}
    for side in "AB":
        own = {names[id(p)] for p in trainer.sides[side].params}
        assert own and all(f".{side}." in n for n in own)


def test_macct_restores_the_active_adapter_when_a_step_raises(tmp_path, monkeypatch):
    trainer = CycleTrainer(
        cycle_args(tmp_path), models=tiny_causal(0), tokenizers=tokenizer(), peft_configs=LORA, **_data()
    )
    model = trainer.models["A"]
    model.set_adapter("B")
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    seen = []

    def boom(side, *args):
        seen.append(model.active_adapter)
        raise RuntimeError("boom")

    monkeypatch.setattr(trainer, "_window_loss", boom)
    with pytest.raises(RuntimeError, match="boom"):
        trainer.train()
    assert seen == ["A"]  # model A's step ran with adapter A active
    assert model.active_adapter == "B"
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags


def test_macct_from_a_peft_model_with_adapters_a_and_b(tmp_path):
    from trainformers.models.peft import apply_peft

    model = apply_peft(tiny_causal(0), LORA, adapter_name="A", echo=None)
    apply_peft(model, LORA, adapter_name="B", echo=None)
    trainer = CycleTrainer(cycle_args(tmp_path, max_steps=2), models=model, tokenizers=tokenizer(), **_data())
    assert trainer.macct
    trainer.train()


class StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


@pytest.mark.parametrize("macct", [False, True], ids=["two-models", "macct"])
def test_resume_equals_uninterrupted(tmp_path, macct):
    def run(out, stop=None, resume=None):
        args = cycle_args(
            tmp_path,
            output_dir=str(tmp_path / out),
            max_steps=6,
            save_strategy="steps",
            save_steps=3,
            do_sample_A=True,
            do_sample_B=True,
            temperature_A=1.3,
            logging_steps=2,
        )
        models = tiny_causal(0) if macct else {"A": tiny_causal(0), "B": tiny_t5(1)}
        trainer = CycleTrainer(
            args,
            models=models,
            tokenizers=tokenizer(),
            peft_configs=LORA if macct else None,
            callbacks=[StopAt(stop)] if stop else None,
            **_data(),
        )
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    full = run("full")
    run("cut", stop=3)
    resumed = run("cut", resume=True)
    assert resumed.state.global_step == 6
    for key in ("loss_A", "loss_B"):
        assert _losses(full, key) == _losses(resumed, key)
    for side in "AB":
        a, b = full.models[side].state_dict(), resumed.models[side].state_dict()
        for name in a:
            assert torch.equal(a[name], b[name]), (side, name)
    checkpoint = tmp_path / "cut" / "checkpoint-3"
    assert {p.name for p in checkpoint.iterdir()} >= {
        "A",
        "B",
        "optimizer_A.safetensors",
        "optimizer_B.safetensors",
        "scheduler_A.safetensors",
        "loop_state_0.json",
        "trainer_state.json",
        "rng_state_0.safetensors",
    }


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    def run(batch, accum, out):
        args = cycle_args(
            tmp_path,
            output_dir=str(tmp_path / out),
            per_device_train_batch_size=batch,
            gradient_accumulation_steps=accum,
            max_steps=3,
            learning_rate=1e-2,
        )
        models = {"A": tiny_causal(0), "B": tiny_t5(1)}
        trainer = DeterministicCycleTrainer(args, models=models, tokenizers=tokenizer(), **_data())
        trainer.train()
        return trainer

    big, small = run(8, 1, "big"), run(2, 4, "small")
    for key in ("loss_A", "loss_B"):
        assert _losses(big, key) == pytest.approx(_losses(small, key), rel=1e-5)
    for side in "AB":
        a, b = big.models[side].state_dict(), small.models[side].state_dict()
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=1e-4, atol=1e-6, msg=name)


def test_only_direction_a_trains_model_a(tmp_path):
    models = {"A": tiny_causal(0), "B": tiny_causal(1)}
    before = {s: _weights(m) for s, m in models.items()}
    trainer = CycleTrainer(
        cycle_args(tmp_path, cycle_directions="A", max_steps=2),
        models=models,
        tokenizers=tokenizer(),
        train_dataset_B=demo().unpaired_B,
    )  # model A needs only real B texts
    trainer.train()
    assert _changed(before["A"], models["A"]) and not _changed(before["B"], models["B"])
    assert _losses(trainer, "loss_A") and not _losses(trainer, "loss_B")


def test_paired_warmup_and_mixing(tmp_path):
    d = demo()
    args = cycle_args(tmp_path, max_steps=6, logging_steps=2, warmup_paired_steps=2, paired_mix_every=2)
    trainer = CycleTrainer(
        args,
        models={"A": tiny_causal(0), "B": tiny_causal(1)},
        tokenizers=tokenizer(),
        paired_dataset=d.paired_train,
        **_data(),
    )
    assert [trainer._step_kind(s) for s in range(6)] == ["paired", "paired", "cycle", "paired", "cycle", "paired"]
    trainer.train()
    rows = [r for r in trainer.state.log_history if "loss_A" in r]
    assert rows[0]["paired_steps"] == 2 and rows[0]["generation_seconds_per_step"] == 0
    assert rows[1]["paired_steps"] == 1 and rows[1]["generation_seconds_per_step"] > 0


def test_text_metrics_hand_checked():
    preds, refs = ["three hundred", "forty two", "7"], ["three  Hundred", "forty one", "7"]
    m = text_metrics(["exact_match", "bleu", "chrf"], preds, refs)
    assert m["exact_match"] == pytest.approx(2 / 3)
    assert text_metrics(["bleu", "chrf"], ["a b c d e"], ["a b c d e"]) == {
        "bleu": pytest.approx(100),
        "chrf": pytest.approx(100),
    }
    assert text_metrics(["chrf"], ["xyz"], ["abc"])["chrf"] == 0
    with pytest.raises(DataError, match="2 predictions but 1"):
        text_metrics(["exact_match"], ["a", "b"], ["a"])


def test_evaluate_reconstruction_loss_is_the_token_mean_and_metrics_per_direction(tmp_path):
    d = demo()
    calls = []

    class Oracle(DeterministicCycleTrainer):
        def translate(self, side, texts, batch_size=None):
            lookup = dict(zip(d.paired_eval["text_A"], d.paired_eval["text_B"])) if side == "A" else {}
            return [lookup.get(t, "nonsense") for t in texts]  # A->B perfect, B->A always wrong

    def compute_metrics(pred):
        calls.append((list(pred.predictions), list(pred.label_ids)))
        return {"n": len(pred.predictions)}

    eval_a = Dataset.from_dict({"text": list(d.paired_eval["text_A"])})
    args = cycle_args(tmp_path, per_device_eval_batch_size=3, metrics=["exact_match", "chrf"])
    trainer = Oracle(
        args,
        models={"A": tiny_causal(0), "B": tiny_t5(1)},
        tokenizers=tokenizer(),
        eval_dataset_A=eval_a,
        paired_eval_dataset=d.paired_eval,
        compute_metrics=compute_metrics,
        **_data(),
    )
    metrics = trainer.evaluate()
    assert metrics["eval_A_to_B_exact_match"] == 1.0 and metrics["eval_B_to_A_exact_match"] == 0.0
    assert metrics["eval_A_to_B_chrf"] == pytest.approx(100)
    assert metrics["eval_A_to_B_n"] == metrics["eval_B_to_A_n"] == 8 and len(calls) == 2
    assert calls[0][1] == list(d.paired_eval["text_B"])
    # A -> B -> A on model B over all 8 rows at once: the token mean, not a mean of batch means
    texts = list(eval_a["text"])
    sources = trainer._generate(trainer.sides["A"], texts)
    batch = trainer.build_batch("B", sources, texts)
    model_b = trainer.models["B"].eval()
    with torch.no_grad():
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        logits = model_b(
            **inputs, decoder_input_ids=trainer._decoder_inputs(trainer.sides["B"], batch["labels"])
        ).logits
    expected = lm_loss(logits, batch["labels"], shift=False)
    assert metrics["eval_reconstruction_loss_A"] == pytest.approx(float(expected), rel=1e-5)
    assert metrics["eval_loss"] == metrics["eval_reconstruction_loss_A"]


def test_save_model_writes_a_and_b_loadable_with_plain_transformers(tmp_path):
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    models = {"A": tiny_causal(0), "B": tiny_t5(1)}
    trainer = CycleTrainer(cycle_args(tmp_path, max_steps=2), models=models, tokenizers=tokenizer(), **_data())
    trainer.train()
    trainer.save_model(str(tmp_path / "final"))
    ids = torch.tensor([[5, 6, 7, 8]])
    loaded_a = AutoModelForCausalLM.from_pretrained(tmp_path / "final" / "A")
    loaded_b = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "final" / "B")
    assert AutoTokenizer.from_pretrained(tmp_path / "final" / "B").eos_token_id == tokenizer().eos_token_id
    with torch.no_grad():
        torch.testing.assert_close(loaded_a.eval()(ids).logits, models["A"].eval()(ids).logits, rtol=0, atol=0)
        torch.testing.assert_close(
            loaded_b.eval()(ids, decoder_input_ids=ids).logits,
            models["B"].eval()(ids, decoder_input_ids=ids).logits,
            rtol=0,
            atol=0,
        )


def test_macct_save_model_writes_two_peft_adapters(tmp_path):
    from peft import PeftModel

    trainer = CycleTrainer(
        cycle_args(tmp_path, max_steps=2), models=tiny_causal(0), tokenizers=tokenizer(), peft_configs=LORA, **_data()
    )
    trainer.train()
    trainer.save_model(str(tmp_path / "final"))
    ids = torch.tensor([[5, 6, 7, 8]])
    model = trainer.models["A"].eval()
    for side in "AB":
        loaded = PeftModel.from_pretrained(tiny_causal(0), tmp_path / "final" / side).eval()
        model.set_adapter(side)
        with torch.no_grad():
            torch.testing.assert_close(loaded(ids).logits, model(ids).logits)


# ---- streams ----------------------------------------------------------------------------------


def test_streams_cycle_independently_and_resume_by_position():
    stream = DomainStream(10, seed=0, window=4, name="train_dataset_A")
    first = [stream.next_window() for _ in range(2)]
    assert sorted(first[0] + first[1]) != list(range(10)) and len(set(first[0] + first[1])) == 8
    third = stream.next_window()  # 2 rows left: a new epoch (a new order) begins
    assert stream.epoch == 1 and stream.position == 4 and third != first[0]
    copy_ = DomainStream(10, seed=0, window=4, name="x")
    copy_.load_state_dict(stream.state_dict())
    assert copy_.next_window() == stream.next_window()
    with pytest.raises(DataError, match="saved with 10 rows"):
        DomainStream(12, seed=0, window=4, name="x").load_state_dict(stream.state_dict())
    with pytest.raises(DataError, match="train_dataset_B has 3 rows but one step needs 4"):
        DomainStream(3, seed=0, window=4, name="train_dataset_B")
    window = list(range(8))  # 2 micro-batches x 2 ranks x 2 rows
    assert [rank_rows(window, m, 2, r, 2) for m in range(2) for r in range(2)] == [[0, 1], [2, 3], [4, 5], [6, 7]]


# ---- constructor errors ------------------------------------------------------------------------


def test_constructor_errors_are_clear(tmp_path):
    from trainformers.models.peft import apply_peft

    tok, d, args = tokenizer(), demo(), cycle_args(tmp_path)
    pair = {"A": tiny_causal(0), "B": tiny_causal(1)}
    with pytest.raises(DataError, match="train_dataset_B is missing: model A trains on real domain-B texts"):
        CycleTrainer(args, models=pair, tokenizers=tok, train_dataset_A=d.unpaired_A)
    with pytest.raises(ConfigError, match=r"exactly the keys 'A' and 'B', got \['A', 'C'\]"):
        CycleTrainer(args, models={"A": pair["A"], "C": pair["B"]}, tokenizers=tok, **_data())
    with pytest.raises(ConfigError, match="use_macct=True needs ONE base model"):
        CycleTrainer(cycle_args(tmp_path, use_macct=True), models=pair, tokenizers=tok, **_data())
    with pytest.raises(ConfigError, match=r"adapters are \['default'\], not 'A' and 'B'"):
        CycleTrainer(
            cycle_args(tmp_path, use_macct=True),
            models=apply_peft(tiny_causal(0), LORA, echo=None),
            tokenizers=tok,
            **_data(),
        )
    with pytest.raises(ConfigError, match="use_macct=True needs peft_configs"):
        CycleTrainer(cycle_args(tmp_path, use_macct=True), models=tiny_causal(0), tokenizers=tok, **_data())
    with pytest.raises(ConfigError, match="same object"):
        CycleTrainer(args, models={"A": pair["A"], "B": pair["A"]}, tokenizers=tok, **_data())
    with pytest.raises(ConfigError, match="tokenizers dict must have exactly the keys"):
        CycleTrainer(args, models=pair, tokenizers={"A": tok}, **_data())
    with pytest.raises(ConfigError, match="needs tokenizers="):
        CycleTrainer(args, models=pair, **_data())
    with pytest.raises(ConfigError, match="needs models="):
        CycleTrainer(args, tokenizers=tok, **_data())
    with pytest.raises(DataError, match="train_dataset_A has no column 'text'"):
        CycleTrainer(
            args,
            models=pair,
            tokenizers=tok,
            train_dataset_A=Dataset.from_dict({"sentence": ["a"]}),
            train_dataset_B=d.unpaired_B,
        )
    with pytest.raises(ConfigError, match="warmup_paired_steps=2 .* need paired_dataset"):
        CycleTrainer(cycle_args(tmp_path, warmup_paired_steps=2), models=pair, tokenizers=tok, **_data())
    with pytest.raises(ConfigError, match="need paired references"):
        CycleTrainer(cycle_args(tmp_path, metrics=["chrf"]), models=pair, tokenizers=tok, **_data())
    with pytest.raises(ConfigError, match="pass models= or its alias model=, not both"):
        CycleTrainer(args, models=pair, model=pair, tokenizers=tok, **_data())


def test_tokenizer_without_pad_gets_eos_and_without_eos_is_an_error(tmp_path):
    tok = copy.deepcopy(tokenizer())
    tok.pad_token = None
    assert tok.pad_token_id is None
    trainer = CycleTrainer(cycle_args(tmp_path, max_steps=1), model=tiny_causal(0), tokenizer=tok, **_data())
    assert tok.pad_token_id == tok.eos_token_id
    trainer.train()
    bare = copy.deepcopy(tokenizer())
    bare.pad_token = None
    bare.eos_token = None
    with pytest.raises(ConfigError, match="tokenizer A has neither a pad nor an EOS token"):
        CycleTrainer(cycle_args(tmp_path), models=tiny_causal(0), tokenizers={"A": bare, "B": tokenizer()}, **_data())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"cycle_directions": "AB"}, "cycle_directions='AB' is not supported"),
        ({"prompt_template_A": "Translate:"}, "prompt_template_A='Translate:' must contain '{text}' exactly once"),
        ({"min_new_tokens_B": 9, "max_new_tokens_B": 8}, "min_new_tokens_B=9 is above max_new_tokens_B=8"),
        ({"top_p_A": 0}, "top_p_A=0 must be in"),
        ({"metrics": ["rouge"]}, "metrics='rouge' is not supported"),
        ({"max_new_tokens_ratio_A": -1}, "max_new_tokens_ratio_A=-1 must be > 0"),
        ({"use_macct": "yes"}, "use_macct='yes' must be true, false or null"),
    ],
)
def test_cycle_arguments_validate(tmp_path, overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        CycleTrainingArguments(output_dir=str(tmp_path), **overrides)
    with pytest.raises(ConfigError, match="unknown field 'cycle_direction'.*cycle_directions"):
        CycleTrainingArguments(output_dir=str(tmp_path), cycle_direction="A")


def test_inputs_from_a_path_pretokenized_rows_a_collator_and_a_custom_builder(tmp_path):
    tok, d = tokenizer(), demo()
    model_dir = tmp_path / "saved"
    tiny_causal(0).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    ids_a = Dataset.from_dict(
        {"input_ids": [tok(t, add_special_tokens=False)["input_ids"] for t in d.unpaired_A["text"]]}
    )
    calls = []

    def builder(synthetic, targets, tokenizer_, direction, args):
        calls.append(direction)
        enc = tokenizer_([f"{s} = {t}" for s, t in zip(synthetic, targets)], return_tensors="pt", padding=True)
        return {**enc, "labels": enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)}

    trainer = CycleTrainer(
        cycle_args(tmp_path, max_steps=2, gradient_checkpointing=True),
        models=str(model_dir),
        train_dataset_A=ids_a,
        train_dataset_B=list(d.unpaired_B["text"]),
        data_collator_B=lambda rows: [r["text"].strip() for r in rows],
        prepare_cycle_inputs=builder,
    )
    assert trainer._texts("A", _rows(ids_a, 2)) == list(d.unpaired_A["text"][:2])  # input_ids decoded
    assert not trainer.uses_fast_path("A")  # a custom builder replaces both built-in paths
    trainer.train()
    assert calls == ["A->B", "B->A", "A->B", "B->A"]  # the direction the trained model learns


def _rows(dataset, n):
    return [dataset[i] for i in range(n)]


def test_macct_with_gradient_checkpointing_trains_the_adapters(tmp_path):
    trainer = CycleTrainer(
        cycle_args(tmp_path, max_steps=2, gradient_checkpointing=True),
        models=tiny_causal(0),
        tokenizers=tokenizer(),
        peft_configs={**LORA, "use_dora": True},
        **_data(),
    )
    model = trainer.models["A"]
    before = {k: v.clone() for k, v in model.state_dict().items() if "lora_" in k}
    trainer.train()
    after = model.state_dict()
    assert any("lora_magnitude" in k for k in before)  # DoRA honoured
    assert {k for k in before if not torch.equal(before[k], after[k])}


def test_run_file_translation_task_from_a_parallel_jsonl(tmp_path):
    import json

    from trainformers.cycle.run import load_cycle_config, run_cycle

    words = ["red", "fox", "cat", "dog", "sun", "sky", "big", "old"]
    rows = [{"en": f"{a} {b}", "up": f"{a} {b}".upper()} for a in words for b in words]
    source = tmp_path / "parallel.jsonl"
    source.write_text("\n".join(json.dumps(r) for r in rows))
    config = tmp_path / "run.yaml"
    config.write_text(
        "model_A: {preset: nano, vocab_size: 290, max_position_embeddings: 64}\n"
        f"data: {{task: translation, source: '{source}', options: {{lang_A: en, lang_B: up, eval_size: 8}}}}\n"
        f"training: {{output_dir: '{tmp_path / 'out'}', max_steps: 2, per_device_train_batch_size: 4, "
        "metrics: [exact_match], max_new_tokens_A: 6, max_new_tokens_B: 6, report_to: [], disable_tqdm: true}\n"
    )
    cfg = load_cycle_config(config, ["--training.learning_rate", "1e-3"])
    assert cfg.training.learning_rate == 1e-3 and cfg.model_B is None
    result = run_cycle(cfg)
    assert "eval_A_to_B_exact_match" in result["metrics"] and "eval_reconstruction_loss_B" in result["metrics"]
    assert (tmp_path / "out" / "final" / "B" / "model.safetensors").is_file()
    with pytest.raises(ConfigError, match="unknown key 'data.sorce'.*data.source"):
        load_cycle_config(config, ["--data.sorce", "x"])
    with pytest.raises(ConfigError, match="data.task='ner' needs data.source"):
        load_cycle_config(None, ["--data.task", "ner"])


def _decoder_lm(seed=0):
    from trainformers.models import DecoderLM, DecoderLMConfig

    torch.manual_seed(seed)
    tok = tokenizer()
    return DecoderLM(
        DecoderLMConfig(
            vocab_size=len(tok),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=64,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )
    )


@pytest.mark.parametrize("make", [tiny_causal, tiny_t5, _decoder_lm], ids=["llama", "t5", "decoder_lm"])
def test_cycle_loss_equals_the_models_own_loss(tmp_path, make):
    # a regression test: DecoderLM (registered with the Auto classes at runtime) once trained on
    # unshifted labels, learning to copy its input: the loss fell, every output was garbage
    model = make(0)
    trainer = DeterministicCycleTrainer(
        cycle_args(tmp_path), models={"A": model, "B": tiny_causal(1)}, tokenizers=tokenizer(), **_data()
    )
    targets = list(demo().unpaired_B["text"][:4])
    batch = trainer.build_batch("A", trainer._generate(trainer.sides["B"], targets), targets)
    side = trainer.sides["A"]
    from trainformers.losses import count_label_items

    with torch.no_grad():
        ours = trainer._window_loss(side, model.eval(), batch, count_label_items(batch, shift=side.shift))
        theirs = model(**batch).loss
    assert float(ours) == pytest.approx(float(theirs), rel=1e-5)


def test_cycle_run_writes_its_report_and_model_card(tmp_path):
    trainer = CycleTrainer(
        cycle_args(tmp_path, max_steps=2, report_at_end=True),
        models={"A": tiny_causal(0), "B": tiny_t5(1)},
        tokenizers=tokenizer(),
        **_data(),
    )
    trainer.train()
    run = tmp_path / "run"
    assert (run / "report.png").is_file() and "loss_A" in (run / "report.md").read_text()
    card = trainer.create_model_card(language="en", tags=["cycle"])
    text = card.read_text()
    assert card == run / "README.md" and "cycle" in text and "learning_rate" in text


@pytest.mark.parametrize("improves", [True, False])
def test_a_plateau_scheduler_steps_on_each_evaluation_for_both_models(tmp_path, improves):
    # metric-driven schedulers step on evaluations, not optimizer steps; both loops share that code
    d = demo()
    args = cycle_args(
        tmp_path,
        max_steps=3,
        eval_strategy="steps",
        eval_steps=1,
        metric_for_best_model="loss",
        lr_scheduler_type="reduce_lr_on_plateau",
        lr_scheduler_kwargs={"patience": 0, "factor": 0.5, "mode": "min" if improves else "max"},
    )
    trainer = DeterministicCycleTrainer(
        args,
        models={"A": tiny_causal(0), "B": tiny_t5(1)},
        tokenizers=tokenizer(),
        eval_dataset_A=Dataset.from_dict({"text": list(d.paired_eval["text_A"])}),
        **_data(),
    )
    trainer.train()
    evaluations = [row["eval_loss"] for row in trainer.state.log_history if "eval_loss" in row]
    assert len(evaluations) == 3
    for side in "AB":
        scheduler = trainer.sides[side].scheduler
        assert scheduler.last_epoch == 3  # stepped once per evaluation
        # with mode "max" a falling loss never improves: patience 0 halves the rate after each
        # evaluation but the first (which sets the best)
        if not improves:
            assert trainer.sides[side].optimizer.param_groups[0]["lr"] == pytest.approx(args.learning_rate * 0.25)


@pytest.mark.parametrize(
    "field", ["push_to_hub", "auto_find_batch_size", "group_by_length", "include_num_input_tokens_seen"]
)
def test_inherited_fields_the_cycle_does_not_carry_out_are_refused_in_one_line(tmp_path, field):
    from trainformers.cycle.config import NOT_IN_CYCLE

    with pytest.raises(ConfigError) as info:
        cycle_args(tmp_path, **{field: True})
    accepted, instead = NOT_IN_CYCLE[field]
    assert str(info.value).startswith(f"{field}=") and f"leave it at {accepted!r} ({instead})" in str(info.value)
    assert "\n" not in str(info.value)


def test_nan_inf_filter_is_off_for_cycle_runs_and_refused_on(tmp_path):
    assert cycle_args(tmp_path).logging_nan_inf_filter is False
    with pytest.raises(ConfigError, match=r"^logging_nan_inf_filter=True is not supported by CycleTrainer"):
        cycle_args(tmp_path, logging_nan_inf_filter=True)
    with pytest.raises(ConfigError, match=r"^train_sampling_strategy='sequential' is not supported"):
        cycle_args(tmp_path, train_sampling_strategy="sequential")


def test_label_smoothing_reaches_the_cycle_loss(tmp_path):
    losses = {}
    for smoothing in (0.0, 0.3):
        trainer = DeterministicCycleTrainer(
            cycle_args(tmp_path / str(smoothing), max_steps=1, label_smoothing_factor=smoothing),
            models={"A": tiny_causal(0), "B": tiny_t5(1)},
            tokenizers=tokenizer(),
            **_data(),
        )
        trainer.train()
        losses[smoothing] = next(row for row in trainer.state.log_history if "loss_A" in row)
    # the same first batch from the same weights: only the smoothing differs (near-uniform
    # predictions of a random model can score better against the smoothed target, so no direction)
    for key in ("loss_A", "loss_B"):
        assert abs(losses[0.3][key] - losses[0.0][key]) > 1e-3
