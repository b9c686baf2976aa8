"""Cycle task processors (translation, NER) and the number-words ↔ digits demo data."""

from __future__ import annotations

import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, List, Value

from trainformers.cycle.demo_data import (
    DemoConfig,
    build_demo_data,
    exact_match,
    number_to_words,
    words_to_number,
)
from trainformers.cycle.tasks import (
    NERConfig,
    NERTask,
    TranslationConfig,
    TranslationTask,
    entity_f1,
    parse_entities,
)
from trainformers.errors import ConfigError, DataError

# ----------------------------------------------------------------------------- demo data


@pytest.mark.parametrize(
    "n,words",
    [
        (0, "zero"),
        (7, "seven"),
        (13, "thirteen"),
        (40, "forty"),
        (42, "forty two"),
        (105, "one hundred five"),
        (342, "three hundred forty two"),
        (1000, "one thousand"),
        (2019, "two thousand nineteen"),
        (9999, "nine thousand nine hundred ninety nine"),
    ],
)
def test_number_words(n, words):
    assert number_to_words(n) == words
    assert words_to_number(words) == n


def test_words_round_trip_and_rejects():
    assert all(words_to_number(number_to_words(n)) == n for n in range(10000))
    assert words_to_number("One  Hundred five ") == 105
    for bad in (
        "",
        "one one",
        "twenty hundred",
        "banana",
        "forty two thousand thousand",
    ):
        assert words_to_number(bad) is None, bad


def _nums(demo):
    a = {words_to_number(t) for t in demo.unpaired_A["text"]}
    b = {int(t) for t in demo.unpaired_B["text"]}
    ev = {int(t) for t in demo.paired_eval["text_B"]}
    pt = {int(t) for t in demo.paired_train["text_B"]}
    return a, b, ev, pt


def test_demo_sizes_disjoint_and_unpaired():
    demo = build_demo_data(DemoConfig(seed=3))
    assert (len(demo.paired_train), len(demo.unpaired_A), len(demo.unpaired_B), len(demo.paired_eval)) == (
        64, 2000, 2000, 200,
    )  # fmt: skip
    assert demo.unpaired_A.column_names == ["text"] and demo.paired_eval.column_names == ["text_A", "text_B"]
    a, b, ev, pt = _nums(demo)
    assert None not in a and len(a) == 2000 and len(b) == 2000  # all valid and distinct
    assert not (a & b)  # A and B come from different numbers: nothing to line up
    assert not (ev & (a | b | pt))  # held-out numbers never seen in training
    assert not (pt & (a | b))
    for row in list(demo.paired_eval) + list(demo.paired_train):
        assert words_to_number(row["text_A"]) == int(row["text_B"])
    # separately shuffled, not sorted
    assert list(demo.unpaired_B["text"]) != sorted(demo.unpaired_B["text"], key=int)


def test_demo_deterministic_and_configurable():
    d1, d2, d3 = (
        build_demo_data(seed=1),
        build_demo_data(DemoConfig(seed=1)),
        build_demo_data(seed=2),
    )
    for name in ("paired_train", "unpaired_A", "unpaired_B", "paired_eval"):
        assert getattr(d1, name).to_dict() == getattr(d2, name).to_dict()
    assert d1.unpaired_A["text"] != d3.unpaired_A["text"]
    small = build_demo_data(
        {
            "n_paired_train": 4,
            "n_unpaired_A": 10,
            "n_unpaired_B": 12,
            "n_eval": 5,
            "max_number": 99,
        }
    )
    assert [
        len(small.paired_train),
        len(small.unpaired_A),
        len(small.unpaired_B),
        len(small.paired_eval),
    ] == [4, 10, 12, 5]
    assert all(int(t) <= 99 for t in small.unpaired_B["text"])


def test_demo_config_errors():
    with pytest.raises(ConfigError, match="max_number=99 gives 100"):
        DemoConfig(max_number=99)
    with pytest.raises(ConfigError, match=r"unknown field 'n_evl'.*did you mean 'n_eval'"):
        DemoConfig.from_dict({"n_evl": 3})
    with pytest.raises(ConfigError, match="n_eval=-1"):
        DemoConfig(n_eval=-1)


def test_exact_match():
    assert exact_match([" Forty  Two", "7", "x"], ["forty two", "7 ", "y"]) == pytest.approx(2 / 3)
    assert exact_match([], []) == 0.0
    with pytest.raises(DataError, match="2 predictions but 1 references"):
        exact_match(["a", "b"], ["a"])


# ----------------------------------------------------------------------------- translation


def _parallel(n=40):
    return {
        "en": [f"english {i}" for i in range(n)],
        "de": [f"deutsch {i}" for i in range(n)],
    }


def _idx(texts):
    return {int(t.split()[-1]) for t in texts}


def test_translation_columns_split_is_disjoint_and_unpaired():
    task = TranslationTask(TranslationConfig(lang_A="en", lang_B="de", eval_size=8, seed=0))
    out = task.build(Dataset.from_dict(_parallel()))
    ev = _idx(out.paired_eval["text_A"])
    a, b = _idx(out.unpaired_A["text"]), _idx(out.unpaired_B["text"])
    assert len(ev) == 8 and len(a) + len(b) == 32
    assert not (a & b)  # coin flip: each remaining pair lands on exactly one side
    assert not (ev & (a | b))
    assert all(t.startswith("english") for t in out.unpaired_A["text"])
    assert all(t.startswith("deutsch") for t in out.unpaired_B["text"])
    assert all(r["text_A"].split()[-1] == r["text_B"].split()[-1] for r in out.paired_eval)
    assert out.paired_train is None


def test_translation_hf_format_matches_column_format_and_is_deterministic():
    cols = _parallel()
    rows = {"translation": [{"en": e, "de": d} for e, d in zip(cols["en"], cols["de"])]}
    cfg = {"lang_A": "en", "lang_B": "de", "eval_size": 0.25, "seed": 5}
    o1 = TranslationTask(cfg).build(Dataset.from_dict(rows))
    o2 = TranslationTask(cfg).build(cols)
    o3 = TranslationTask({**cfg, "seed": 6}).build(cols)
    for name in ("unpaired_A", "unpaired_B", "paired_eval"):
        assert getattr(o1, name).to_dict() == getattr(o2, name).to_dict()
    assert len(o1.paired_eval) == 10
    assert o1.unpaired_A["text"] != o3.unpaired_A["text"]


def test_translation_options():
    cols = _parallel()
    out = TranslationTask(
        {
            "lang_A": "de",
            "lang_B": "en",
            "eval_size": 4,
            "disjoint": False,
            "paired_train_size": 6,
            "text_field": "s",
        }
    ).build(cols)
    assert out.unpaired_A.column_names == ["s"] and out.paired_eval.column_names == [
        "s_A",
        "s_B",
    ]
    assert len(out.paired_train) == 6 and len(out.unpaired_A) == len(out.unpaired_B) == 30
    assert _idx(out.unpaired_A["s"]) == _idx(out.unpaired_B["s"])  # disjoint=False: both sides see all
    assert not (_idx(out.paired_train["s_A"]) & _idx(out.unpaired_A["s"]))
    # a DatasetDict's validation split is the paired eval set; its sentences are kept out of training
    dd = DatasetDict(
        {
            "train": Dataset.from_dict(cols),
            "validation": Dataset.from_dict(_parallel(3)),
        }
    )
    out = TranslationTask({"lang_A": "en", "lang_B": "de"}).build(dd)
    assert out.paired_eval["text_A"] == ["english 0", "english 1", "english 2"]
    assert not ({0, 1, 2} & (_idx(out.unpaired_A["text"]) | _idx(out.unpaired_B["text"])))
    # rows with an empty side are skipped
    out = TranslationTask({"lang_A": "en", "lang_B": "de", "eval_size": 1}).build(
        {
            "en": ["a 1", "", "c 3"] + [f"e {i}" for i in range(4, 20)],
            "de": ["x 1", "y 2", None] + [f"g {i}" for i in range(4, 20)],
        }
    )
    seen = _idx(out.paired_eval["text_A"]) | _idx(out.unpaired_A["text"]) | _idx(out.unpaired_B["text"])
    assert seen == {1} | set(range(4, 20))


def test_translation_errors():
    with pytest.raises(DataError, match=r"lang_B='fr': no such column.*columns present: \['en', 'de'\]"):
        TranslationTask({"lang_A": "en", "lang_B": "fr"}).build(_parallel())
    with pytest.raises(DataError, match=r"lang_B='fr': no such key.*keys present: \['de', 'en'\]"):
        TranslationTask({"lang_A": "en", "lang_B": "fr"}).build({"translation": [{"en": "a", "de": "b"}]})
    with pytest.raises(ConfigError, match="lang_A=None is required"):
        TranslationConfig(lang_B="de")
    with pytest.raises(ConfigError, match="unknown field 'lang_a'.*did you mean 'lang_A'"):
        TranslationConfig.from_dict({"lang_a": "en", "lang_B": "de"})
    with pytest.raises(ConfigError, match="eval_size=1.5"):
        TranslationConfig(lang_A="en", lang_B="de", eval_size=1.5)
    with pytest.raises(DataError, match="eval_size=40 takes 40 of the 40"):
        TranslationTask({"lang_A": "en", "lang_B": "de", "eval_size": 40}).build(_parallel())
    with pytest.raises(DataError, match="split dict has no 'train' split; splits present: \\['test'\\]"):
        TranslationTask({"lang_A": "en", "lang_B": "de"}).build(DatasetDict({"test": Dataset.from_dict(_parallel())}))


# ----------------------------------------------------------------------------- NER

TOKENS = ["John", "Smith", "flew", "to", "Paris", "from", "New", "York", "."]
TAGS = ["B-PER", "I-PER", "O", "O", "B-LOC", "O", "B-LOC", "I-LOC", "O"]
NAMES = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]


def test_ner_pair_exact():
    task = NERTask()
    assert task.to_pair(
        ["In", "Paris", ",", "John", "Smith", "sang"],
        ["O", "B-LOC", "O", "B-PER", "I-PER", "O"],
    ) == (
        "In Paris , John Smith sang",
        "Paris | LOC ; John Smith | PER",
    )
    assert task.to_pair(TOKENS, TAGS)[1] == "John Smith | PER ; Paris | LOC ; New York | LOC"
    assert task.to_pair(["it", "rained"], ["O", "O"]) == ("it rained", "none")
    # adjacent B- starts a new entity; a stray I- of another type starts one too
    assert task.to_pair(["A", "B", "C"], ["B-PER", "B-PER", "I-LOC"])[1] == "A | PER ; B | PER ; C | LOC"


def test_parse_entities_round_trip_and_f1():
    text = "Paris | LOC ; John Smith | PER"
    assert parse_entities(text) == [("Paris", "LOC"), ("John Smith", "PER")]
    assert parse_entities("  Paris|LOC;John   Smith |PER ") == [
        ("Paris", "LOC"),
        ("John Smith", "PER"),
    ]
    assert parse_entities("none") == [] and parse_entities("") == []
    assert parse_entities("garbage ; Paris | LOC ; | PER") == [("Paris", "LOC")]
    task = NERTask()
    assert task.to_pair(TOKENS, TAGS)[1] == "John Smith | PER ; Paris | LOC ; New York | LOC"
    assert task.parse(task.to_pair(TOKENS, TAGS)[1]) == [
        ("John Smith", "PER"),
        ("Paris", "LOC"),
        ("New York", "LOC"),
    ]
    # refs: 3 entities; preds: 2 correct, 1 wrong type, 1 spurious -> P = 2/4, R = 2/3, F1 = 4/7
    refs = ["John Smith | PER ; Paris | LOC", "Berlin | LOC", "none"]
    preds = ["John Smith | PER ; Paris | ORG", "Berlin | LOC", "Bob | PER"]
    assert entity_f1(preds, refs) == pytest.approx(4 / 7)
    assert entity_f1(["none", "none"], ["none", "none"]) == 1.0
    assert entity_f1(["none"], ["Paris | LOC"]) == 0.0
    # P = 1/1, R = 1/3 -> F1 = 0.5
    assert entity_f1(["Paris | LOC"], ["Paris | LOC ; Paris | LOC ; Rome | LOC"]) == pytest.approx(0.5)
    with pytest.raises(DataError, match="1 predictions but 2 references"):
        entity_f1(["x"], ["x", "y"])


def _ner_rows(n=30):
    rows = {"tokens": [], "ner_tags": []}
    for i in range(n):
        rows["tokens"].append([f"Person{i}", "visited", "Paris", str(i)])
        rows["ner_tags"].append([1, 0, 3, 0] if i % 3 else [0, 0, 0, 0])
    return rows


def test_ner_build_with_int_tags():
    rows = _ner_rows()
    feats = Features({"tokens": List(Value("string")), "ner_tags": List(ClassLabel(names=NAMES))})
    out_cl = NERTask({"eval_size": 5, "seed": 1}).build(
        Dataset.from_dict(rows, features=feats)
    )  # names from ClassLabel
    out = NERTask({"eval_size": 5, "seed": 1, "label_names": NAMES}).build(rows)
    for name in ("unpaired_A", "unpaired_B", "paired_eval"):
        assert getattr(out, name).to_dict() == getattr(out_cl, name).to_dict()
    assert len(out.paired_eval) == 5 and len(out.unpaired_A) + len(out.unpaired_B) == 25
    ev = {r["text_A"] for r in out.paired_eval}
    assert not (ev & set(out.unpaired_A["text"]))
    for r in out.paired_eval:
        i = int(r["text_A"].split()[-1])
        assert r["text_B"] == (f"Person{i} | PER ; Paris | LOC" if i % 3 else "none")
    # coin flip: a sentence on side A means its entity string is not on side B (checkable via the index)
    a_idx = {int(t.split()[-1]) for t in out.unpaired_A["text"]}
    b_idx = {int(t.split()[0][len("Person") :]) for t in out.unpaired_B["text"] if t != "none"}
    assert not (a_idx & b_idx)


def test_ner_errors():
    with pytest.raises(
        DataError,
        match=r"tags_column='ner_tags': no such column; columns present: \['tokens', 'tags'\]",
    ):
        NERTask().build({"tokens": [["a"]], "tags": [["O"]]})
    with pytest.raises(DataError, match="integer tag 0 but no label names; set label_names"):
        NERTask().build(_ner_rows())
    with pytest.raises(DataError, match="tag 'X-PER' is not BIO"):
        NERTask().to_pair(["a"], ["X-PER"])
    with pytest.raises(DataError, match="2 tokens but 1 tags"):
        NERTask().to_pair(["a", "b"], ["O"])
    with pytest.raises(ConfigError, match="unknown field 'tag_column'.*did you mean 'tags_column'"):
        NERConfig.from_dict({"tag_column": "x"})
