"""Task processors for cycle-consistency training: parallel/annotated data -> two unpaired domains.

Every processor turns a paired source (a parallel corpus, or CoNLL-style NER rows) into a
`CycleTaskData`: two *unpaired* training sets (domain A, domain B; one `text` column each,
shuffled separately) and a *paired* held-out set (`text_A`, `text_B`) for metrics.

How the unpaired sides are made (``disjoint=True``, the default): after the held-out pairs are
removed, each remaining pair contributes **either** its A side to set A **or** its B side to set B,
by a seeded coin flip. No pair therefore has both of its halves in the training data, so the
cycle model cannot pick up paired supervision from the "unpaired" sets (which is what makes the
demo honest). The price is that each side gets about half of the pairs. ``disjoint=False`` puts
every remaining pair on both sides (each side shuffled separately), which is the usual shortcut
in papers but leaks the pairing. Training pairs whose A text (and for translation also B text)
equals a held-out pair's are dropped, so held-out sentences never appear in training.

Both classes take a `@dataclass` config with ``from_dict`` for the run file::

    task = TranslationTask(TranslationConfig(lang_A="en", lang_B="de", eval_size=500))
    data = task.build(dataset)  # Dataset, DatasetDict, dict of columns or list of rows
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from datasets import Dataset, DatasetDict

from ..config import arg
from ..errors import ConfigError, DataError, did_you_mean

__all__ = [
    "CycleTaskData",
    "NERConfig",
    "NERTask",
    "TranslationConfig",
    "TranslationTask",
    "bio_to_entities",
    "entity_f1",
    "format_entities",
    "parse_entities",
]


@dataclass
class CycleTaskData:
    """Two unpaired training domains plus paired held-out (and optionally paired training) sets.

    `unpaired_A` / `unpaired_B` have one column `<text_field>`; `paired_eval` (and `paired_train`,
    when asked for) have `<text_field>_A` and `<text_field>_B`.
    """

    unpaired_A: Dataset
    unpaired_B: Dataset
    paired_eval: Dataset
    paired_train: Dataset | None = None


# ---------------------------------------------------------------------------------------------
# shared config handling and split logic
# ---------------------------------------------------------------------------------------------


class ConfigMixin:
    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> Any:
        """Build the config from a run-file mapping; unknown keys raise `ConfigError`."""
        values = dict(values or {})
        names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
        for key in values:
            if key not in names:
                same_case = [n for n in names if n.lower() == str(key).lower()]
                hint = f" (did you mean '{same_case[0]}'?)" if same_case else did_you_mean(str(key), names)
                raise ConfigError(f"{cls.__name__}: unknown field '{key}'{hint}; valid fields are {names}.")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def _check_common(self) -> None:
        name = type(self).__name__
        seed = self.seed
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise ConfigError(f"{name}.seed={seed!r} is not an integer; set seed to an int such as 0.")
        ev = self.eval_size
        ok = (isinstance(ev, int) and not isinstance(ev, bool) and ev >= 0) or (
            isinstance(ev, float) and 0.0 < ev < 1.0
        )
        if not ok:
            raise ConfigError(
                f"{name}.eval_size={ev!r} is invalid; use a pair count (int >= 0) or a fraction in (0, 1)."
            )
        pt = self.paired_train_size
        if not isinstance(pt, int) or isinstance(pt, bool) or pt < 0:
            raise ConfigError(f"{name}.paired_train_size={pt!r} is invalid; use an int >= 0.")
        tf = self.text_field
        if not isinstance(tf, str) or not tf:
            raise ConfigError(f"{name}.text_field={tf!r} is invalid; use a non-empty column name such as 'text'.")


def _to_columns(data: Any, who: str) -> dict[str, list]:
    """A Dataset, a dict of columns or a list of row dicts -> dict of python lists."""
    if isinstance(data, Dataset):
        return {c: list(data[c]) for c in data.column_names}
    if isinstance(data, Mapping):
        cols = {}
        for k, v in data.items():
            if isinstance(v, (str, bytes)) or not isinstance(v, Sequence):
                raise DataError(
                    f"{who}: column '{k}' is a {type(v).__name__}, not a list; pass a Dataset, "
                    "a dict of equal-length lists or a list of row dicts."
                )
            cols[k] = list(v)
        lengths = {len(v) for v in cols.values()}
        if len(lengths) > 1:
            raise DataError(f"{who}: columns have different lengths {sorted(lengths)}; make them equal.")
        return cols
    if isinstance(data, Sequence) and not isinstance(data, (str, bytes)):
        rows = list(data)
        if rows and not all(isinstance(r, Mapping) for r in rows):
            raise DataError(f"{who}: rows must be dicts; got a {type(rows[0]).__name__}.")
        keys = list(rows[0].keys()) if rows else []
        return {k: [r.get(k) for r in rows] for k in keys}
    raise DataError(
        f"{who}: cannot read data of type {type(data).__name__}; pass a Dataset, DatasetDict, "
        "dict of columns or list of row dicts."
    )


def _splits(data: Any, eval_split: str | None, who: str) -> tuple[Any, Any | None]:
    """Return (train, eval or None) from a DatasetDict / dict of Datasets, else (data, None)."""
    is_split_dict = isinstance(data, DatasetDict) or (
        isinstance(data, Mapping) and data and all(isinstance(v, Dataset) for v in data.values())
    )
    if not is_split_dict:
        return data, None
    keys = list(data.keys())
    if "train" not in data:
        raise DataError(
            f"{who}: split dict has no 'train' split; splits present: {keys}; add or rename one to 'train'."
        )
    ev = data[eval_split] if eval_split and eval_split in data else None
    return data["train"], ev


def _n_eval(eval_size: float, n: int) -> int:
    if isinstance(eval_size, float):
        return max(1, round(eval_size * n)) if n >= 2 else 0
    return eval_size


def _make_split(
    pairs: list[tuple[str, str]],
    eval_pairs: list[tuple[str, str]] | None,
    cfg: Any,
    filter_B: bool,
) -> CycleTaskData:
    who = type(cfg).__name__
    rng = random.Random(cfg.seed)
    order = list(range(len(pairs)))
    rng.shuffle(order)
    if eval_pairs is None:
        n_eval = _n_eval(cfg.eval_size, len(pairs))
        if n_eval >= len(pairs):
            raise DataError(
                f"{who}.eval_size={cfg.eval_size!r} takes {n_eval} of the {len(pairs)} usable pairs and "
                "leaves none for training; lower eval_size or pass more data."
            )
        eval_pairs = [pairs[i] for i in order[:n_eval]]
        order = order[n_eval:]
    held_A = {a for a, _ in eval_pairs}
    held_B = {b for _, b in eval_pairs} if filter_B else set()
    train = [pairs[i] for i in order if pairs[i][0] not in held_A and pairs[i][1] not in held_B]
    if cfg.paired_train_size and cfg.paired_train_size > len(train) - 2:
        raise DataError(
            f"{who}.paired_train_size={cfg.paired_train_size} leaves fewer than 2 of the {len(train)} "
            "training pairs for the unpaired sets; lower paired_train_size or pass more data."
        )
    paired_train = train[: cfg.paired_train_size]
    train = train[cfg.paired_train_size :]
    side_A: list[str] = []
    side_B: list[str] = []
    if cfg.disjoint:
        for a, b in train:
            (side_A.append(a) if rng.random() < 0.5 else side_B.append(b))
    else:
        side_A = [a for a, _ in train]
        side_B = [b for _, b in train]
    rng.shuffle(side_A)
    rng.shuffle(side_B)
    if not side_A or not side_B:
        raise DataError(f"{who}: an unpaired side came out empty from {len(train)} training pairs; pass more data.")
    tf = cfg.text_field

    def paired(ps: list[tuple[str, str]]) -> Dataset:
        return Dataset.from_dict({f"{tf}_A": [a for a, _ in ps], f"{tf}_B": [b for _, b in ps]})

    return CycleTaskData(
        unpaired_A=Dataset.from_dict({tf: side_A}),
        unpaired_B=Dataset.from_dict({tf: side_B}),
        paired_eval=paired(eval_pairs),
        paired_train=paired(paired_train) if cfg.paired_train_size else None,
    )


# ---------------------------------------------------------------------------------------------
# translation
# ---------------------------------------------------------------------------------------------


@dataclass
class SplitConfig(ConfigMixin):
    """The split settings every task shares: how paired rows become unpaired A/B sets."""

    seed: int = arg(0, "Seed for the eval split, the A/B coin flips and the two shuffles.")
    eval_size: int | float = arg(
        0.1,
        "Held-out paired rows: a count (int) or a fraction (float in (0,1)); unused when eval_split exists.",
    )
    eval_split: str | None = arg(
        "validation",
        "With a DatasetDict: the split used as the paired eval set if present (else split off train).",
    )
    paired_train_size: int = arg(0, "Pairs kept paired for a supervised warm-up (taken before the unpaired split).")
    disjoint: bool = arg(
        True, "Coin-flip each pair to A or B so no pair is in both sets; False uses every pair on both sides."
    )
    text_field: str = arg("text", "Output column; paired sets use <text_field>_A and <text_field>_B.")


@dataclass
class TranslationConfig(SplitConfig):
    """How a parallel corpus becomes two unpaired language sets."""

    lang_A: str | None = arg(
        None,
        "Domain A: a column name, or a key of the HF `translation` column (e.g. 'en').",
    )
    lang_B: str | None = arg(
        None,
        "Domain B: a column name, or a key of the HF `translation` column (e.g. 'de').",
    )
    translation_column: str = arg("translation", "Column holding {lang: text} dicts (HF translation format).")

    def __post_init__(self) -> None:
        for name in ("lang_A", "lang_B"):
            v = getattr(self, name)
            if not isinstance(v, str) or not v:
                raise ConfigError(
                    f"TranslationConfig.{name}={v!r} is required; set it to a language column or translation key such as 'en'."
                )
        if self.lang_A == self.lang_B:
            raise ConfigError(f"TranslationConfig.lang_B={self.lang_B!r} equals lang_A; pick two different languages.")
        self._check_common()


class TranslationTask:
    """Parallel corpus -> `CycleTaskData` (unpaired A/B language sets + paired eval)."""

    def __init__(self, config: TranslationConfig | Mapping[str, Any]):
        self.config = config if isinstance(config, TranslationConfig) else TranslationConfig.from_dict(config)

    def _pairs(self, data: Any) -> list[tuple[str, str]]:
        cfg = self.config
        cols = _to_columns(data, "TranslationTask")
        present = list(cols)
        if cfg.lang_A in cols and cfg.lang_B in cols:
            raw = list(zip(cols[cfg.lang_A], cols[cfg.lang_B]))
        elif cfg.translation_column in cols:
            rows = cols[cfg.translation_column]
            raw = []
            for i, row in enumerate(rows):
                if not isinstance(row, Mapping):
                    raise DataError(
                        f"TranslationTask: row {i} of column '{cfg.translation_column}' is a {type(row).__name__}, "
                        "not a {lang: text} dict; fix the data or set lang_A/lang_B to plain columns."
                    )
                for name in ("lang_A", "lang_B"):
                    lang = getattr(cfg, name)
                    if lang not in row:
                        raise DataError(
                            f"TranslationTask.{name}={lang!r}: no such key in '{cfg.translation_column}' row {i}; "
                            f"keys present: {sorted(row)}; set {name} to one of them."
                        )
                raw.append((row[cfg.lang_A], row[cfg.lang_B]))
        else:
            missing = [n for n in ("lang_A", "lang_B") if getattr(cfg, n) not in cols]
            name = missing[0]
            lang = getattr(cfg, name)
            raise DataError(
                f"TranslationTask.{name}={lang!r}: no such column (and no '{cfg.translation_column}' column); "
                f"columns present: {present}; set {name} to one of them{did_you_mean(lang, present)}."
            )
        pairs = []
        for a, b in raw:
            a = a.strip() if isinstance(a, str) else ""
            b = b.strip() if isinstance(b, str) else ""
            if a and b:  # rows with an empty or missing side are skipped
                pairs.append((a, b))
        if not pairs:
            raise DataError(
                f"TranslationTask: no rows with non-empty text in both {cfg.lang_A!r} and {cfg.lang_B!r}; check the data."
            )
        return pairs

    def build(self, data: Any) -> CycleTaskData:
        """Split a parallel corpus into unpaired A, unpaired B and a paired eval set (see module doc)."""
        train, ev = _splits(data, self.config.eval_split, "TranslationTask")
        eval_pairs = self._pairs(ev) if ev is not None else None
        return _make_split(self._pairs(train), eval_pairs, self.config, filter_B=True)


# ---------------------------------------------------------------------------------------------
# NER (CycleNER style)
# ---------------------------------------------------------------------------------------------

_ENTITY_SEP = " ; "
_TYPE_SEP = " | "
_EMPTY = "none"


def bio_to_entities(tokens: Sequence[str], tags: Sequence[str]) -> list[tuple[str, str]]:
    """BIO tags -> [(entity text, type)] in order of appearance.

    Lenient like seqeval: an `I-X` that does not continue an `X` entity starts a new one.
    """
    if len(tokens) != len(tags):
        raise DataError(
            f"NERTask: {len(tokens)} tokens but {len(tags)} tags in {list(tokens)[:8]}; give one tag per token."
        )
    out: list[tuple[str, str]] = []
    cur: list[str] = []
    cur_type: str | None = None

    def flush() -> None:
        nonlocal cur, cur_type
        if cur and cur_type is not None:
            out.append((" ".join(cur), cur_type))
        cur, cur_type = [], None

    for tok, tag in zip(tokens, tags):
        if tag == "O":
            flush()
            continue
        prefix, _, typ = tag.partition("-")
        if prefix not in ("B", "I") or not typ:
            raise DataError(f"NERTask: tag {tag!r} is not BIO ('O', 'B-TYPE' or 'I-TYPE'); convert the tags to BIO.")
        if prefix == "B" or typ != cur_type:
            flush()
            cur_type = typ
        cur.append(tok)
    flush()
    return out


def format_entities(
    entities: Sequence[tuple[str, str]],
    entity_sep: str = _ENTITY_SEP,
    type_sep: str = _TYPE_SEP,
    empty: str = _EMPTY,
) -> str:
    """[(text, type)] -> 'Paris | LOC ; John Smith | PER' (or `empty` when there are none)."""
    if not entities:
        return empty
    return entity_sep.join(f"{text}{type_sep}{typ}" for text, typ in entities)


def parse_entities(
    text: str,
    entity_sep: str = _ENTITY_SEP,
    type_sep: str = _TYPE_SEP,
    empty: str = _EMPTY,
) -> list[tuple[str, str]]:
    """Read a domain-B string back into [(entity text, type)].

    Whitespace around the separators is not significant; pieces without a type separator (as a
    half-trained model emits) are dropped, and `empty` (e.g. 'none') reads as no entities.
    """
    es, ts = entity_sep.strip() or entity_sep, type_sep.strip() or type_sep
    text = " ".join(str(text).split())
    if not text or text.lower() == empty.lower():
        return []
    out = []
    for piece in text.split(es):
        ent, sep, typ = piece.rpartition(ts)
        ent, typ = " ".join(ent.split()), typ.strip()
        if sep and ent and typ:
            out.append((ent, typ))
    return out


def entity_f1(pred_texts: Sequence[str], ref_texts: Sequence[str], **parse_kwargs: Any) -> float:
    """Micro F1 over (entity text, type) matches, counted per sentence as multisets.

    When neither side has any entity at all the score is 1.0 (every 'none' was predicted).
    """
    if len(pred_texts) != len(ref_texts):
        raise DataError(
            f"entity_f1: {len(pred_texts)} predictions but {len(ref_texts)} references; pass one prediction per reference."
        )
    tp = n_pred = n_ref = 0
    for p, r in zip(pred_texts, ref_texts):
        pc, rc = (
            Counter(parse_entities(p, **parse_kwargs)),
            Counter(parse_entities(r, **parse_kwargs)),
        )
        tp += sum((pc & rc).values())
        n_pred += sum(pc.values())
        n_ref += sum(rc.values())
    if n_pred == 0 and n_ref == 0:
        return 1.0
    if tp == 0:
        return 0.0
    precision, recall = tp / n_pred, tp / n_ref
    return 2 * precision * recall / (precision + recall)


@dataclass
class NERConfig(SplitConfig):
    """How CoNLL-style NER rows become sentences (A) and 'entity | type' sequences (B)."""

    tokens_column: str = arg("tokens", "Column with the list of tokens per sentence.")
    tags_column: str = arg(
        "ner_tags",
        "Column with BIO tags per token: strings, or ints indexing label_names.",
    )
    label_names: list[str] | None = field(
        default=None,
        metadata={
            "help": "Names of integer tags (e.g. ['O', 'B-PER', 'I-PER', ...]); "
            "read from a ClassLabel feature when omitted."
        },
    )
    entity_sep: str = arg(_ENTITY_SEP, "Separator between entities in domain B.")
    type_sep: str = arg(_TYPE_SEP, "Separator between an entity's text and its type in domain B.")
    empty_token: str = arg(_EMPTY, "Domain-B text of a sentence without entities.")

    def __post_init__(self) -> None:
        self._check_common()
        for name in ("entity_sep", "type_sep", "empty_token"):
            v = getattr(self, name)
            if not isinstance(v, str) or not v.strip():
                raise ConfigError(
                    f"NERConfig.{name}={v!r} is invalid; use a non-blank string such as {getattr(NERConfig, name)!r}."
                )
        if self.label_names is not None and (
            not isinstance(self.label_names, (list, tuple)) or not all(isinstance(n, str) for n in self.label_names)
        ):
            raise ConfigError(f"NERConfig.label_names={self.label_names!r} is invalid; use a list of tag strings.")


class NERTask:
    """CoNLL-style NER rows -> `CycleTaskData` (sentences ↔ 'entity | type ; ...' sequences)."""

    def __init__(self, config: NERConfig | Mapping[str, Any] | None = None):
        self.config = config if isinstance(config, NERConfig) else NERConfig.from_dict(config)

    def to_pair(self, tokens: Sequence[str], tags: Sequence[str]) -> tuple[str, str]:
        """(tokens, BIO string tags) -> (sentence, 'entity | type ; ...')."""
        c = self.config
        ents = bio_to_entities(tokens, tags)
        return " ".join(tokens), format_entities(ents, c.entity_sep, c.type_sep, c.empty_token)

    def parse(self, text: str) -> list[tuple[str, str]]:
        c = self.config
        return parse_entities(text, c.entity_sep, c.type_sep, c.empty_token)

    def f1(self, pred_texts: Sequence[str], ref_texts: Sequence[str]) -> float:
        c = self.config
        return entity_f1(
            pred_texts,
            ref_texts,
            entity_sep=c.entity_sep,
            type_sep=c.type_sep,
            empty=c.empty_token,
        )

    def _label_names(self, data: Any) -> list[str] | None:
        if self.config.label_names is not None:
            return list(self.config.label_names)
        if isinstance(data, Dataset) and self.config.tags_column in data.features:
            inner = getattr(data.features[self.config.tags_column], "feature", None)
            names = getattr(inner, "names", None)
            if names:
                return list(names)
        return None

    def _pairs(self, data: Any) -> list[tuple[str, str]]:
        c = self.config
        cols = _to_columns(data, "NERTask")
        for name in ("tokens_column", "tags_column"):
            col = getattr(c, name)
            if col not in cols:
                raise DataError(
                    f"NERTask.{name}={col!r}: no such column; columns present: {list(cols)}; "
                    f"set {name} to one of them{did_you_mean(col, list(cols))}."
                )
        names = self._label_names(data)
        pairs = []
        for i, (tokens, tags) in enumerate(zip(cols[c.tokens_column], cols[c.tags_column])):
            tokens = [str(t) for t in tokens]
            if not tokens:
                continue
            str_tags = []
            for t in tags:
                if isinstance(t, str):
                    str_tags.append(t)
                elif names is None:
                    raise DataError(
                        f"NERTask: row {i} has integer tag {t!r} but no label names; set label_names "
                        "(e.g. ['O', 'B-PER', 'I-PER', ...]) or use a ClassLabel feature."
                    )
                elif not 0 <= int(t) < len(names):
                    raise DataError(
                        f"NERTask: row {i} has tag {t!r} outside label_names (size {len(names)}); fix label_names."
                    )
                else:
                    str_tags.append(names[int(t)])
            pairs.append(self.to_pair(tokens, str_tags))
        if not pairs:
            raise DataError("NERTask: no non-empty sentences in the data; check tokens_column.")
        return pairs

    def build(self, data: Any) -> CycleTaskData:
        """Split NER rows into unpaired sentences (A), unpaired entity sequences (B) and paired eval.

        Held-out filtering uses the sentence only (many B sides are just 'none').
        """
        train, ev = _splits(data, self.config.eval_split, "NERTask")
        eval_pairs = self._pairs(ev) if ev is not None else None
        return _make_split(self._pairs(train), eval_pairs, self.config, filter_B=False)
