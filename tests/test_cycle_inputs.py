"""Cycle-training batches (`trainformers.cycle.inputs`) on exact tensors.

The character tokenizer (`char_*`, vocabulary 259: specials + bytes, no merges) gives hand-writable
ids: <|bos|> 0, <|eos|> 1, <|pad|> 2, a printable ASCII character c -> ord(c) - 30
(a=67 b=68 c=69 A=35 B=36 C=37 D=38 ':'=28), '\\n' -> 201, ' ' -> 223.
"""

import copy

import pytest
import torch
from tokenizers.processors import TemplateProcessing

from trainformers.cycle.inputs import (
    CycleBatchBuilder,
    decode_generations,
    extract_generated_ids,
    prepare_causal_batch,
    prepare_causal_batch_from_ids,
    prepare_seq2seq_batch,
)
from trainformers.data import train_tokenizer

BOS, EOS, PAD, NL = 0, 1, 2, 201
X = -100

WORDS = [
    "the",
    "cat",
    "sat",
    "on",
    "a",
    "mat",
    "dog",
    "ran",
    "far",
    "away",
    "red",
    "blue",
    "green",
    "fox",
    "jumps",
    "over",
    "lazy",
]
CORPUS = [" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))] * 5
CORPUS += [s.upper() for s in CORPUS]


def _llama_style(tok):
    tok = copy.deepcopy(tok)
    tok.backend_tokenizer.post_processor = TemplateProcessing(single="<|bos|> $A", special_tokens=[("<|bos|>", BOS)])
    return tok


def _t5_style(tok):
    tok = copy.deepcopy(tok)
    tok.backend_tokenizer.post_processor = TemplateProcessing(single="$A <|eos|>", special_tokens=[("<|eos|>", EOS)])
    return tok


@pytest.fixture(scope="module")
def char_gpt2():
    return train_tokenizer(["ab cd"], 259)


@pytest.fixture(scope="module")
def char_llama(char_gpt2):
    return _llama_style(char_gpt2)


@pytest.fixture(scope="module")
def char_t5(char_gpt2):
    return _t5_style(char_gpt2)


@pytest.fixture(scope="module")
def bpe_gpt2():
    return train_tokenizer(CORPUS, 400)


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def bpe_any(request, bpe_gpt2):
    return bpe_gpt2 if request.param == "gpt2" else _llama_style(bpe_gpt2)


def _t(rows):
    return torch.tensor(rows, dtype=torch.long)


def _assert_batch(batch, input_ids, attention_mask, labels):
    assert torch.equal(batch["input_ids"], _t(input_ids)), batch["input_ids"].tolist()
    assert torch.equal(batch["attention_mask"], _t(attention_mask)), batch["attention_mask"].tolist()
    assert torch.equal(batch["labels"], _t(labels)), batch["labels"].tolist()


def _assert_eos_labelled_everywhere(batch, eos=EOS):
    for row in batch["labels"]:
        real = row[row != X]
        assert real.numel() > 0 and real[-1].item() == eos


def _assert_same(a, b):
    for key in ("input_ids", "attention_mask", "labels"):
        assert torch.equal(a[key], b[key]), (key, a[key].tolist(), b[key].tolist())
    assert a.kept == b.kept and a.num_dropped == b.num_dropped


# -- causal, text path -----------------------------------------------------------------------


def test_causal_gpt2_style_exact(char_gpt2):
    batch = prepare_causal_batch(["ab", "a"], ["A", "ABCD"], char_gpt2)
    _assert_batch(
        batch,
        [[67, 68, NL, 35, EOS, PAD, PAD, PAD], [67, NL, 35, 36, 37, 38, EOS, PAD]],
        [[1, 1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1, 0]],
        [[X, X, X, 35, EOS, X, X, X], [X, X, 35, 36, 37, 38, EOS, X]],
    )
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert batch.kept == [0, 1] and batch.num_dropped == 0


def test_causal_longest_row_keeps_eos_without_padding_room(char_gpt2):
    batch = prepare_causal_batch(["ab", "a"], ["A", "ABCD"], char_gpt2, pad_to_multiple_of=None)
    _assert_batch(
        batch,
        [[67, 68, NL, 35, EOS, PAD, PAD], [67, NL, 35, 36, 37, 38, EOS]],
        [[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1]],
        [[X, X, X, 35, EOS, X, X], [X, X, 35, 36, 37, 38, EOS]],
    )


def test_causal_llama_style_bos_first_and_unlabelled(char_llama):
    assert char_llama("a")["input_ids"] == [BOS, 67]
    batch = prepare_causal_batch(["ab", "a"], ["A", "ABCD"], char_llama, pad_to_multiple_of=None)
    _assert_batch(
        batch,
        [[BOS, 67, 68, NL, 35, EOS, PAD, PAD], [BOS, 67, NL, 35, 36, 37, 38, EOS]],
        [[1, 1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1]],
        [[X, X, X, X, 35, EOS, X, X], [X, X, X, 35, 36, 37, 38, EOS]],
    )


def test_causal_template_and_sep_masked(char_gpt2):
    batch = prepare_causal_batch(
        ["b"],
        ["C"],
        char_gpt2,
        prompt_template="a:{text}",
        sep="\n",
        pad_to_multiple_of=None,
    )
    _assert_batch(batch, [[67, 28, 68, NL, 37, EOS]], [[1] * 6], [[X, X, X, X, 37, EOS]])


def test_causal_no_pad_token_pads_with_eos_masked(char_gpt2):
    tok = copy.deepcopy(char_gpt2)
    tok.pad_token = None
    batch = prepare_causal_batch(["ab", "a"], ["A", "ABC"], tok, pad_to_multiple_of=None)
    _assert_batch(
        batch,
        [[67, 68, NL, 35, EOS, EOS], [67, NL, 35, 36, 37, EOS]],
        [[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1]],
        [[X, X, X, 35, EOS, X], [X, X, 35, 36, 37, EOS]],
    )


# -- seq2seq, text path ----------------------------------------------------------------------


def test_seq2seq_t5_style_exact(char_t5):
    batch = prepare_seq2seq_batch(["ab", "a"], ["A", "ABCD"], char_t5, pad_to_multiple_of=None)
    _assert_batch(
        batch,
        [[67, 68, EOS], [67, EOS, PAD]],
        [[1, 1, 1], [1, 1, 0]],
        [[35, EOS, X, X, X], [35, 36, 37, 38, EOS]],
    )
    assert not (batch["labels"] == PAD).any()


def test_seq2seq_padded_to_multiple_labels_never_pad_id(char_t5):
    batch = prepare_seq2seq_batch(["ab", "a"], ["A", "ABCD"], char_t5)
    assert batch["input_ids"].shape == (2, 8) and batch["labels"].shape == (2, 8)
    assert batch["labels"].tolist() == [
        [35, EOS, X, X, X, X, X, X],
        [35, 36, 37, 38, EOS, X, X, X],
    ]
    assert not (batch["labels"] == PAD).any()
    _assert_eos_labelled_everywhere(batch)


def test_seq2seq_tokenizer_without_eos_still_labels_eos(char_gpt2):
    batch = prepare_seq2seq_batch(["ab"], ["AB"], char_gpt2, prompt_template="a:{text}", pad_to_multiple_of=None)
    _assert_batch(batch, [[67, 28, 67, 68]], [[1, 1, 1, 1]], [[35, 36, EOS]])


# -- mixed pairs / different tokenizers ------------------------------------------------------


def test_text_path_refuses_ids(char_gpt2):
    with pytest.raises(TypeError, match="texts"):
        prepare_causal_batch([[67, 68]], ["A"], char_gpt2)
    with pytest.raises(TypeError, match="texts"):
        prepare_seq2seq_batch([torch.tensor([67, 68])], ["A"], char_gpt2)


def test_causal_generator_to_seq2seq_trainee_other_tokenizer(bpe_gpt2, char_t5):
    # Generator (causal, BPE vocabulary) produced "the cat" after a 3-wide left-padded prompt.
    gen_tok, src = bpe_gpt2, "the cat"
    src_ids = gen_tok(src, add_special_tokens=False)["input_ids"]
    assert src_ids != char_t5(src, add_special_tokens=False)["input_ids"]  # the vocabularies differ
    gen = _t([[PAD, 300, 301] + src_ids + [EOS, PAD], [300, 301, 302] + src_ids + [PAD, EOS]])
    texts = decode_generations(gen, gen_tok, prompt_width=3)
    assert texts == ["the cat", "the cat"]
    batch = prepare_seq2seq_batch(texts, ["AB", "A"], char_t5, pad_to_multiple_of=None)
    row = [ord(c) - 30 if c != " " else 223 for c in src] + [EOS]
    _assert_batch(batch, [row, row], [[1] * len(row)] * 2, [[35, 36, EOS], [35, EOS, X]])
    with pytest.raises(ValueError, match="text path"):
        prepare_causal_batch_from_ids(gen, 3, [[35]] * 2, char_t5, generator_tokenizer=gen_tok)


def test_seq2seq_generator_to_causal_trainee_other_tokenizer(char_t5, bpe_gpt2):
    # Generator (seq2seq, char vocabulary): decoder output starts with the decoder start (pad).
    gen = _t([[PAD, 67, 68, EOS, PAD], [PAD, 67, EOS, PAD, PAD]])
    texts = decode_generations(gen, char_t5)
    assert texts == ["ab", "a"]
    batch = prepare_causal_batch(texts, ["the cat", "dog"], bpe_gpt2, pad_to_multiple_of=None)

    def enc(s):
        return bpe_gpt2(s, add_special_tokens=False)["input_ids"]

    rows = [
        enc("ab") + enc("\n") + enc("the cat") + [EOS],
        enc("a") + enc("\n") + enc("dog") + [EOS],
    ]
    assert batch["input_ids"][0, : len(rows[0])].tolist() == rows[0]
    assert batch["input_ids"][1, : len(rows[1])].tolist() == rows[1]
    assert bpe_gpt2.decode(batch["labels"][0][batch["labels"][0] != X]) == "the cat<|eos|>"
    assert bpe_gpt2.decode(batch["input_ids"][0][batch["attention_mask"][0].bool()]) == "ab\nthe cat<|eos|>"
    _assert_eos_labelled_everywhere(batch)


# -- empty synthetic sources -----------------------------------------------------------------


def test_empty_source_dropped_and_counted(char_gpt2):
    gen = _t([[PAD, 67, 67, EOS], [PAD, 67, EOS, PAD], [67, 67, 68, EOS]])  # row 1 emitted EOS first
    texts = decode_generations(gen, char_gpt2, prompt_width=2)
    assert texts == ["a", "", "b"]
    batch = prepare_causal_batch(texts, ["A", "B", "C"], char_gpt2, pad_to_multiple_of=None)
    _assert_batch(
        batch,
        [[67, NL, 35, EOS], [68, NL, 37, EOS]],
        [[1] * 4] * 2,
        [[X, X, 35, EOS], [X, X, 37, EOS]],
    )
    assert batch.kept == [0, 2] and batch.num_dropped == 1
    _assert_same(
        batch,
        prepare_causal_batch_from_ids(gen, 2, [[35], [36], [37]], char_gpt2, pad_to_multiple_of=None),
    )


def test_empty_source_kept_when_asked(char_gpt2, char_t5):
    batch = prepare_causal_batch(["", "a"], ["B", "A"], char_gpt2, pad_to_multiple_of=None, drop_empty=False)
    _assert_batch(
        batch,
        [[NL, 36, EOS, PAD], [67, NL, 35, EOS]],
        [[1, 1, 1, 0], [1] * 4],
        [[X, 36, EOS, X], [X, X, 35, EOS]],
    )
    assert batch.kept == [0, 1] and batch.num_dropped == 0
    s2s = prepare_seq2seq_batch(["", "a"], ["B", "A"], char_t5, pad_to_multiple_of=None, drop_empty=False)
    _assert_batch(s2s, [[EOS, PAD], [67, EOS]], [[1, 0], [1, 1]], [[36, EOS], [35, EOS]])


def test_all_sources_empty_gives_empty_batch(char_gpt2):
    batch = prepare_causal_batch(["", ""], ["A", "B"], char_gpt2)
    assert batch["input_ids"].shape == (0, 0) and batch["labels"].shape == (0, 0)
    assert batch.kept == [] and batch.num_dropped == 2


# -- truncation ------------------------------------------------------------------------------


def test_causal_truncation_keeps_eos_labelled(char_llama):
    # Fixed: BOS + sep + EOS = 3, so 3 tokens remain for source + target (longest first, ties: source).
    batch = prepare_causal_batch(
        ["abc", "a", "abcd"],
        ["ABCD", "AB", "A"],
        char_llama,
        max_length=6,
        pad_to_multiple_of=None,
    )
    _assert_batch(
        batch,
        [
            [BOS, 67, NL, 35, 36, EOS],
            [BOS, 67, NL, 35, 36, EOS],
            [BOS, 67, 68, NL, 35, EOS],
        ],
        [[1] * 6] * 3,
        [[X, X, X, 35, 36, EOS], [X, X, X, 35, 36, EOS], [X, X, X, X, 35, EOS]],
    )
    with pytest.raises(ValueError, match="max_length"):
        prepare_causal_batch(["a"], ["A"], char_llama, max_length=2)


def test_seq2seq_truncation_keeps_eos(char_t5):
    batch = prepare_seq2seq_batch(["abcd", "a"], ["ABCD", "A"], char_t5, max_length=3, pad_to_multiple_of=None)
    _assert_batch(
        batch,
        [[67, 68, EOS], [67, EOS, PAD]],
        [[1, 1, 1], [1, 1, 0]],
        [[35, 36, EOS], [35, EOS, X]],
    )


# -- causal fast path equals the text path ---------------------------------------------------

SOURCES = [
    "the cat sat on a mat",
    "dog",
    "red fox jumps over the lazy dog far away",
    "blue green",
    "",
]
TARGETS = [
    "THE CAT SAT ON A MAT",
    "DOG",
    "RED FOX JUMPS OVER THE LAZY DOG FAR AWAY",
    "BLUE GREEN",
    "RED",
]


def _generate_like(tok, sources, prompt_width=4, new_tokens=8):
    """A `generate` output: left-padded prompts, then the source ids, EOS, pads (row 2 has no EOS)."""

    def enc(s):
        return tok(s, add_special_tokens=False)["input_ids"]

    rows = []
    for i, s in enumerate(sources):
        prompt = [PAD] * (i % 3) + [300 + j for j in range(prompt_width - i % 3)]
        new = enc(s)
        new = new[:new_tokens] if len(new) >= new_tokens else new + [EOS] + [PAD] * (new_tokens - len(new) - 1)
        rows.append(prompt + new)
    return _t(rows), [tok.decode(r) for r in extract_generated_ids(_t(rows), prompt_width, tok)]


@pytest.mark.parametrize(
    "template,sep",
    [("{text}", "\n"), ("to upper: {text} =>", " "), ("{text}", " ||| ")],
)
@pytest.mark.parametrize("max_length", [None, 16])
def test_fast_path_equals_text_path(bpe_any, template, sep, max_length):
    gen, texts = _generate_like(bpe_any, SOURCES)
    assert texts[1] == "dog" and texts[4] == "" and len(extract_generated_ids(gen, 4, bpe_any)[2]) == 8
    assert all(
        bpe_any(t, add_special_tokens=False)["input_ids"] == ids
        for t, ids in zip(texts, extract_generated_ids(gen, 4, bpe_any))
    )  # boundary-stable data
    kw = {"prompt_template": template, "sep": sep, "max_length": max_length}
    text_batch = prepare_causal_batch(texts, TARGETS, bpe_any, **kw)
    target_ids = [bpe_any(t)["input_ids"] for t in TARGETS]  # with the tokenizer's own BOS, if any
    _assert_same(prepare_causal_batch_from_ids(gen, 4, target_ids, bpe_any, **kw), text_batch)
    # The prompt's attention mask for the width, and left-padded target tensors with their mask.
    width = max(len(t) for t in target_ids)
    tgt = _t([[PAD] * (width - len(t)) + t for t in target_ids])
    tgt_mask = _t([[0] * (width - len(t)) + [1] * len(t) for t in target_ids])
    fast = prepare_causal_batch_from_ids(
        gen,
        torch.ones(len(SOURCES), 4),
        tgt,
        bpe_any,
        target_attention_mask=tgt_mask,
        generator_tokenizer=copy.deepcopy(bpe_any),
        **kw,
    )
    _assert_same(fast, text_batch)
    assert fast.kept == [0, 1, 2, 3] and fast.num_dropped == 1
    _assert_eos_labelled_everywhere(fast)
    if bpe_any.bos_token_id in bpe_any("a")["input_ids"]:
        assert (fast["input_ids"][:, 0] == BOS).all() and (fast["labels"][:, 0] == X).all()
    else:
        assert not (fast["input_ids"] == BOS).any()
    if max_length is not None:
        assert int(fast["attention_mask"].sum(1).max()) == max_length  # truncation did bite


def test_fast_path_only_for_causal_and_template_checked(bpe_gpt2):
    with pytest.raises(ValueError, match="causal"):
        CycleBatchBuilder(bpe_gpt2, "seq2seq").from_generated_ids(_t([[5, EOS]]), 0, [[5]])
    with pytest.raises(ValueError, match="exactly once"):
        prepare_causal_batch(["a"], ["b"], bpe_gpt2, prompt_template="no field")
