"""Collators against exact hand-written tensors, and the padding-free invariant through a real model."""

from __future__ import annotations

import logging

import pytest
import torch
from conftest import tiny_llama

from trainformers.data.collators import (
    CausalLMCollator,
    CompletionOnlyCollator,
    PaddingFreeCollator,
    Seq2SeqCollator,
    check_padding_free_model,
    pad_sequences,
)
from trainformers.errors import ConfigError, DataError

X = -100  # ignored label
ROWS = [{"input_ids": [5, 6, 7]}, {"input_ids": [8, 9, 10, 11, 12]}, {"input_ids": [13]}]
DOCS = [[5, 6, 7], [8], [9, 10, 11, 12]]  # lengths 3, 1, 4


def assert_batch(batch, expected):
    assert set(batch) == set(expected)
    for key, value in expected.items():
        assert batch[key].dtype == torch.long, key
        assert batch[key].tolist() == value, key


def test_pad_sequences_both_sides_and_multiple():
    assert pad_sequences([[1, 2], torch.tensor([3])], 0).tolist() == [[1, 2], [3, 0]]
    assert pad_sequences([[1, 2], [3]], -1, "left", 4).tolist() == [[-1, -1, 1, 2], [-1, -1, -1, 3]]


# --- CausalLMCollator -------------------------------------------------------------------------


def test_causal_right_padding_to_multiple_of_8_labels_copied():
    batch = CausalLMCollator(0)(ROWS)
    assert_batch(
        batch,
        {
            "input_ids": [[5, 6, 7, 0, 0, 0, 0, 0], [8, 9, 10, 11, 12, 0, 0, 0], [13, 0, 0, 0, 0, 0, 0, 0]],
            "attention_mask": [[1, 1, 1, 0, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0, 0]],
            "labels": [[5, 6, 7, X, X, X, X, X], [8, 9, 10, 11, 12, X, X, X], [13, X, X, X, X, X, X, X]],
        },
    )


def test_causal_left_padding_without_multiple():
    batch = CausalLMCollator(0, pad_to_multiple_of=None, padding_side="left")(ROWS)
    assert_batch(
        batch,
        {
            "input_ids": [[0, 0, 5, 6, 7], [8, 9, 10, 11, 12], [0, 0, 0, 0, 13]],
            "attention_mask": [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]],
            "labels": [[X, X, 5, 6, 7], [8, 9, 10, 11, 12], [X, X, X, X, 13]],
        },
    )


def test_causal_left_padding_to_multiple_of_8():
    batch = CausalLMCollator(0, padding_side="left")(ROWS[:2])
    assert_batch(
        batch,
        {
            "input_ids": [[0, 0, 0, 0, 0, 5, 6, 7], [0, 0, 0, 8, 9, 10, 11, 12]],
            "attention_mask": [[0, 0, 0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 1, 1, 1]],
            "labels": [[X, X, X, X, X, 5, 6, 7], [X, X, X, 8, 9, 10, 11, 12]],
        },
    )


def test_causal_given_labels_and_mask_kept_tensor_rows_accepted():
    rows = [
        {"input_ids": torch.tensor([5, 6, 7]), "labels": torch.tensor([X, 6, 7]), "attention_mask": [1, 1, 1]},
        {"input_ids": [8, 9, 10, 11, 12], "labels": [X, X, 10, 11, 12]},
    ]
    batch = CausalLMCollator(0, pad_to_multiple_of=None)(rows)
    assert_batch(
        batch,
        {
            "input_ids": [[5, 6, 7, 0, 0], [8, 9, 10, 11, 12]],
            "attention_mask": [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]],
            "labels": [[X, 6, 7, X, X], [X, X, 10, 11, 12]],
        },
    )


def test_causal_pad_equal_to_eos_keeps_the_eos_label():
    # GPT-2 style: pad id == eos id (2). The EOS ending each row must still be a target.
    batch = CausalLMCollator(2, pad_to_multiple_of=None)([{"input_ids": [5, 2]}, {"input_ids": [6, 7, 2]}])
    assert batch["labels"].tolist() == [[5, 2, X], [6, 7, 2]]
    assert batch["input_ids"].tolist() == [[5, 2, 2], [6, 7, 2]]


def test_causal_max_length_truncates_and_caps_the_rounding():
    batch = CausalLMCollator(0, max_length=4)(ROWS)
    assert_batch(
        batch,
        {
            "input_ids": [[5, 6, 7, 0], [8, 9, 10, 11], [13, 0, 0, 0]],
            "attention_mask": [[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]],
            "labels": [[5, 6, 7, X], [8, 9, 10, 11], [13, X, X, X]],
        },
    )


def test_causal_config_and_data_errors():
    with pytest.raises(ConfigError, match="padding_side 'middle'"):
        CausalLMCollator(0, padding_side="middle")
    with pytest.raises(ConfigError, match="tokenizer.pad_token"):
        CausalLMCollator(None)
    with pytest.raises(ConfigError, match="pad_to_multiple_of 0"):
        CausalLMCollator(0, pad_to_multiple_of=0)
    collate = CausalLMCollator(0)
    with pytest.raises(DataError, match="row 0 labels has 2 tokens but input_ids has 3"):
        collate([{"input_ids": [1, 2, 3], "labels": [1, 2]}])
    with pytest.raises(DataError, match="empty batch"):
        collate([])
    with pytest.raises(DataError, match="row 1 has no input_ids"):
        collate([{"input_ids": [1]}, {"text": "hi"}])
    with pytest.raises(DataError, match="row 0 input_ids is empty"):
        collate([{"input_ids": []}])


# --- PaddingFreeCollator ----------------------------------------------------------------------


def test_padding_free_exact_tensors():
    batch = PaddingFreeCollator()([{"input_ids": d} for d in DOCS])
    assert_batch(
        batch,
        {
            "input_ids": [[5, 6, 7, 8, 9, 10, 11, 12]],
            "position_ids": [[0, 1, 2, 0, 0, 1, 2, 3]],
            "labels": [[X, 6, 7, X, X, 10, 11, 12]],
        },
    )
    # No token dropped or duplicated: the single row is exactly the documents end to end.
    assert batch["input_ids"][0].tolist() == [t for d in DOCS for t in d]


def test_padding_free_given_labels_and_flash_kwargs():
    rows = [
        {"input_ids": [5, 6, 7], "labels": [X, X, 7], "attention_mask": [1, 1, 1]},
        {"input_ids": torch.tensor([8]), "labels": torch.tensor([8])},
        {"input_ids": [9, 10, 11, 12], "labels": [9, 10, X, 12]},
    ]
    batch = PaddingFreeCollator(return_flash_attn_kwargs=True)(rows)
    assert batch["labels"].tolist() == [[X, X, 7, X, X, 10, X, 12]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 0, 1, 2, 3]]
    assert batch["cu_seq_lens_q"].dtype == batch["cu_seq_lens_k"].dtype == torch.int32
    assert batch["cu_seq_lens_q"].tolist() == batch["cu_seq_lens_k"].tolist() == [0, 3, 4, 8]
    assert batch["max_length_q"] == batch["max_length_k"] == 4
    assert "attention_mask" not in batch


def test_padding_free_boundaries_are_the_ones_transformers_detects():
    from transformers.masking_utils import find_packed_sequence_indices

    batch = PaddingFreeCollator()([{"input_ids": d} for d in DOCS])
    assert find_packed_sequence_indices(batch["position_ids"]).tolist() == [[0, 0, 0, 1, 2, 2, 2, 2]]


def test_padding_free_rejects_padded_rows():
    with pytest.raises(DataError, match="row 1 attention_mask has zeros"):
        PaddingFreeCollator()([{"input_ids": [1, 2]}, {"input_ids": [3, 0], "attention_mask": [1, 0]}])


@pytest.fixture(scope="module")
def llama():
    return tiny_llama()


# flex_attention passes too (checked by hand: max logit difference 4e-8) but compiles a block
# mask for ~18 s on CPU, too slow for this suite.
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_padding_free_batch_equals_documents_run_alone(llama, attn):
    """Logits and token-weighted loss of one packed row equal those of each document alone.

    transformers 5.23 masks per document (from position_ids, with no attention_mask) for sdpa,
    eager and flex_attention alike, provided the model builds no cache: use_cache=False.
    The loss matches because the collator sets -100 on each document's first token.
    """
    llama.set_attn_implementation(attn)
    llama.config.use_cache = False
    check_padding_free_model(llama)
    batch = PaddingFreeCollator()([{"input_ids": d} for d in DOCS])
    with torch.no_grad():
        packed = llama(**batch)
        alone = [llama(input_ids=torch.tensor([d]), labels=torch.tensor([d])) for d in DOCS]
    torch.testing.assert_close(packed.logits[0], torch.cat([o.logits[0] for o in alone]), atol=1e-5, rtol=1e-5)
    # Document d contributes len(d) - 1 predicted tokens (a 1-token document none, its loss being NaN).
    weights = [len(d) - 1 for d in DOCS]
    expected = sum(w * o.loss for w, o in zip(weights, alone) if w) / sum(weights)
    torch.testing.assert_close(packed.loss, expected, atol=1e-5, rtol=1e-5)


def test_padding_free_leaks_across_documents_with_a_cache_or_a_mask(llama):
    """Pins the two ways documents silently attend to each other in transformers 5.23.

    With use_cache=True (LlamaConfig's default, even in train mode) the model builds a
    DynamicCache and `create_causal_mask` skips packed-sequence detection; an attention_mask
    (even all ones) skips it too. `check_padding_free_model` refuses the first.
    """
    llama.set_attn_implementation("sdpa")
    llama.train()
    batch = PaddingFreeCollator()([{"input_ids": d} for d in DOCS])
    with torch.no_grad():
        alone = torch.cat([llama(input_ids=torch.tensor([d]), use_cache=False).logits[0] for d in DOCS])
        with_cache = llama(**batch, use_cache=True).logits[0]
        with_mask = llama(**batch, attention_mask=torch.ones_like(batch["input_ids"]), use_cache=False).logits[0]
    llama.eval()
    doc1 = slice(0, 3)  # the first document sees nothing before it either way
    torch.testing.assert_close(with_cache[doc1], alone[doc1], atol=1e-5, rtol=1e-5)
    assert (with_cache[3:] - alone[3:]).abs().max() > 1e-3
    assert (with_mask[3:] - alone[3:]).abs().max() > 1e-3
    llama.config.use_cache = True
    with pytest.raises(ConfigError, match="model.config.use_cache is True"):
        check_padding_free_model(llama)
    llama.config.use_cache = False


def test_check_padding_free_model_rejects_unknown_attention():
    from types import SimpleNamespace

    model = SimpleNamespace(config=SimpleNamespace(use_cache=False, _attn_implementation="my_kernel"))
    with pytest.raises(ConfigError, match="attn_implementation 'my_kernel'"):
        check_padding_free_model(model)


# --- Seq2SeqCollator --------------------------------------------------------------------------

S2S_ROWS = [
    {"input_ids": [5, 6, 7, 1], "labels": [20, 21, 1]},
    {"input_ids": [8, 1], "labels": [22, 23, 24, 25, 1]},
]


def tiny_t5():
    from transformers import T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    config = T5Config(
        vocab_size=64,
        d_model=16,
        d_kv=8,
        d_ff=32,
        num_layers=1,
        num_heads=2,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    return T5ForConditionalGeneration(config)


def test_seq2seq_pads_inputs_and_labels_separately():
    batch = Seq2SeqCollator(0, pad_to_multiple_of=None, padding_side="left")(S2S_ROWS)
    assert_batch(
        batch,
        {
            "input_ids": [[5, 6, 7, 1], [0, 0, 8, 1]],
            "attention_mask": [[1, 1, 1, 1], [0, 0, 1, 1]],
            "labels": [[20, 21, 1, X, X], [22, 23, 24, 25, 1]],  # labels: always right, never pad ids
        },
    )


def test_seq2seq_decoder_input_ids_from_t5():
    model = tiny_t5()
    batch = Seq2SeqCollator(0, model=model)(S2S_ROWS)
    assert_batch(
        batch,
        {
            "input_ids": [[5, 6, 7, 1, 0, 0, 0, 0], [8, 1, 0, 0, 0, 0, 0, 0]],
            "attention_mask": [[1, 1, 1, 1, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0, 0]],
            "labels": [[20, 21, 1, X, X, X, X, X], [22, 23, 24, 25, 1, X, X, X]],
            "decoder_input_ids": [[0, 20, 21, 1, 0, 0, 0, 0], [0, 22, 23, 24, 25, 1, 0, 0]],
        },
    )
    assert not (batch["labels"] == 0).any()
    # Labels shifted right behind decoder_start_token_id, -100 read as the pad id.
    shifted = torch.cat([torch.zeros(2, 1, dtype=torch.long), batch["labels"][:, :-1]], dim=1)
    assert torch.equal(batch["decoder_input_ids"], shifted.masked_fill(shifted == X, 0))
    with torch.no_grad():
        assert torch.isfinite(model(**batch).loss)


def test_seq2seq_label_errors_and_no_labels():
    collate = Seq2SeqCollator(0)
    with pytest.raises(DataError, match="row 0 labels contain the pad id 0"):
        collate([{"input_ids": [5, 1], "labels": [20, 1, 0, 0]}])
    with pytest.raises(DataError, match="labels present in 1 of 2 rows"):
        collate([{"input_ids": [5], "labels": [20]}, {"input_ids": [6]}])
    assert set(collate([{"input_ids": [5, 1]}])) == {"input_ids", "attention_mask"}


# --- CompletionOnlyCollator -------------------------------------------------------------------

RESPONSE, HUMAN = [50, 51], [40, 41]


def test_completion_only_single_turn_ids(caplog):
    collate = CompletionOnlyCollator(0, RESPONSE, pad_to_multiple_of=None)
    rows = [
        {"input_ids": [10, 11, 50, 51, 20, 21, 2]},
        {"input_ids": [50, 51, 12, 50, 51, 22, 2]},  # masked up to the last occurrence
    ]
    with caplog.at_level(logging.WARNING):
        batch = collate(rows)
    assert_batch(
        batch,
        {
            "input_ids": [[10, 11, 50, 51, 20, 21, 2], [50, 51, 12, 50, 51, 22, 2]],
            "attention_mask": [[1] * 7, [1] * 7],
            "labels": [[X, X, X, X, 20, 21, 2], [X, X, X, X, X, 22, 2]],
        },
    )
    assert collate.rows_without_response == 0
    assert not caplog.records


def test_completion_only_multi_turn_ids_padded():
    collate = CompletionOnlyCollator(0, RESPONSE, instruction_template=HUMAN)
    rows = [
        {"input_ids": [40, 41, 10, 11, 50, 51, 20, 21, 2, 40, 41, 12, 50, 51, 22, 2]},
        {"input_ids": [40, 41, 13, 50, 51, 23, 2]},
    ]
    batch = collate(rows)
    assert_batch(
        batch,
        {
            "input_ids": [
                [40, 41, 10, 11, 50, 51, 20, 21, 2, 40, 41, 12, 50, 51, 22, 2],
                [40, 41, 13, 50, 51, 23, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            ],
            "attention_mask": [[1] * 16, [1] * 7 + [0] * 9],
            "labels": [
                [X, X, X, X, X, X, 20, 21, 2, X, X, X, X, X, 22, 2],
                [X, X, X, X, X, 23, 2, X, X, X, X, X, X, X, X, X],
            ],
        },
    )


def test_completion_only_row_without_response_is_counted_and_warned_once(caplog):
    collate = CompletionOnlyCollator(0, RESPONSE, pad_to_multiple_of=None)
    with caplog.at_level(logging.WARNING, logger="trainformers.data.collators"):
        first = collate([{"input_ids": [10, 11, 12]}, {"input_ids": [10, 50, 51, 20]}])
        second = collate([{"input_ids": [10, 50, 51]}])  # template at the very end: nothing to train
    assert first["labels"].tolist() == [[X, X, X, X], [X, X, X, 20]]
    assert second["labels"].tolist() == [[X, X, X]]
    assert collate.rows_without_response == 2
    assert len(caplog.records) == 1 and "rows_without_response" in caplog.records[0].getMessage()


@pytest.fixture(scope="module")
def tok():
    from trainformers.data.tokenizer import train_tokenizer

    texts = ["### Question: what is two plus two?\n### Answer: four", "### Question: name a colour\n### Answer: blue"]
    return train_tokenizer(texts * 20, vocab_size=300)


def encode(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def test_completion_only_string_templates(tok):
    parts = [  # (text, trained?)
        ("### Question: hi\n### Answer:", False),
        (" yes\n", True),
        ("### Question: and?\n### Answer:", False),
        (" no", True),
    ]
    ids = encode(tok, "".join(p for p, _ in parts))
    assert ids == [t for p, _ in parts for t in encode(tok, p)]  # byte-level BPE splits at the part boundaries
    expected = [t if train else X for p, train in parts for t in encode(tok, p)]
    multi = CompletionOnlyCollator(
        tok.pad_token_id, "### Answer:", instruction_template="### Question:", tokenizer=tok, pad_to_multiple_of=None
    )
    assert multi([{"input_ids": ids}])["labels"].tolist() == [expected]
    single = CompletionOnlyCollator(tok.pad_token_id, "### Answer:", tokenizer=tok, pad_to_multiple_of=None)
    n_prompt = len(encode(tok, "".join(p for p, _ in parts[:3])))
    assert single([{"input_ids": ids}])["labels"].tolist() == [[X] * n_prompt + encode(tok, " no")]


def test_completion_only_bpe_context_pitfall(tok):
    # "Answer:" alone tokenizes as "An"+"swer"+":", but inside text it is " Answer"+":": no match.
    ids = encode(tok, "### Question: hi\n### Answer: yes")
    alone = CompletionOnlyCollator(tok.pad_token_id, "Answer:", tokenizer=tok, pad_to_multiple_of=None)
    assert alone([{"input_ids": ids}])["labels"].tolist() == [[X] * len(ids)]
    assert alone.rows_without_response == 1
    # The fix: pass ids as they occur in context (encode with the preceding newline, drop it).
    in_context = encode(tok, "\n### Answer:")[1:]
    fixed = CompletionOnlyCollator(tok.pad_token_id, in_context, pad_to_multiple_of=None)
    labels = fixed([{"input_ids": ids}])["labels"][0].tolist()
    assert labels == [X] * (len(ids) - len(encode(tok, " yes"))) + encode(tok, " yes")
    assert fixed.rows_without_response == 0


def test_completion_only_config_errors(tok):
    with pytest.raises(ConfigError, match="response_template '### Answer:' is text but no tokenizer"):
        CompletionOnlyCollator(0, "### Answer:")
    with pytest.raises(ConfigError, match="response_template"):
        CompletionOnlyCollator(0, [])


def test_bin_packed_rows_exact_tensors():
    docs = [[11, 12, 13], [21], [31, 32, 33, 34], [41, 42]]
    batch = PaddingFreeCollator(max_length=5, pad_token_id=0)([{"input_ids": d} for d in docs])
    # first-fit decreasing by length: [31..34] + [21] | [11..13] + [41, 42]; dataset order inside a row
    assert batch["input_ids"].tolist() == [[21, 31, 32, 33, 34], [11, 12, 13, 41, 42]]
    assert batch["position_ids"].tolist() == [[0, 0, 1, 2, 3], [0, 1, 2, 0, 1]]
    assert batch["labels"].tolist() == [[-100, -100, 32, 33, 34], [-100, 12, 13, -100, 42]]
    uneven = PaddingFreeCollator(max_length=4, pad_token_id=0)([{"input_ids": d} for d in docs])
    # rows: [31..34] | [11..13]+[21] | [41, 42] + a 2-token pad pseudo-document
    assert uneven["input_ids"].tolist() == [[31, 32, 33, 34], [11, 12, 13, 21], [41, 42, 0, 0]]
    assert uneven["position_ids"][2].tolist() == [0, 1, 0, 1]
    assert uneven["labels"][2].tolist() == [-100, 42, -100, -100]
    with pytest.raises(DataError, match="exceeds the padding-free row length"):
        PaddingFreeCollator(max_length=3)([{"input_ids": [1, 2, 3, 4]}])


def test_bin_packed_batch_equals_documents_run_alone(llama):
    llama.set_attn_implementation("sdpa")
    llama.config.use_cache = False
    docs = [d for d in DOCS]
    batch = PaddingFreeCollator(max_length=6, pad_token_id=0)([{"input_ids": d} for d in docs])
    assert batch["input_ids"].shape[0] > 1
    with torch.no_grad():
        logits = llama(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
        for doc in docs:
            alone = llama(input_ids=torch.tensor([doc])).logits[0]
            # find the doc in the packed rows
            found = False
            for r in range(batch["input_ids"].shape[0]):
                row = batch["input_ids"][r].tolist()
                for start in range(len(row) - len(doc) + 1):
                    if row[start : start + len(doc)] == doc and batch["position_ids"][r, start] == 0:
                        torch.testing.assert_close(logits[r, start : start + len(doc)], alone, atol=1e-5, rtol=1e-5)
                        found = True
            assert found
