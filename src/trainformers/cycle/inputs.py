"""Training batches of one cycle direction: (synthetic source from the other model → real target).

Two paths build the batch for the model being trained:

* the **text path** (`prepare_causal_batch`, `prepare_seq2seq_batch`): synthetic sources are
  *texts*, decoded by the generator's own tokenizer (`decode_generations`), and re-encoded here
  with the trained model's tokenizer. It works for every pairing (causal/seq2seq either way)
  and for different tokenizers. It refuses token ids: an id of tokenizer B never reaches
  tokenizer A.
* the **causal + causal shared-tokenizer fast path** (`prepare_causal_batch_from_ids`): the
  generator's output ids are rearranged directly, with no decode/re-encode.

Rules (the same in both paths):

* Segments are encoded separately and concatenated, so no token crosses a segment boundary:
  `prompt_template` is split at its one `{text}` field into a prefix and a suffix, and the
  causal input is ``[BOS?] prefix | source | suffix+sep | target | EOS``. `[BOS?]` (more
  generally: the ids the tokenizer puts *before* encoded text, found by probing
  ``tokenizer(..., add_special_tokens=True)``) is there only for tokenizers that prepend it
  (Llama-style); GPT-2-style tokenizers (BOS defined, not prepended) get none.
* Causal labels are the input ids (unshifted, the model shifts), with -100 on the leading
  special ids, the prompt (template + source + sep) and the pads. Every kept row has its target
  tokens and its final EOS labelled, the longest row included. Padding is on the right;
  the pad id is `pad_token_id` (EOS when the tokenizer has none), always masked.
* Seq2seq: `input_ids` = ``[head] prefix | source | suffix [tail]`` where head/tail are what the
  tokenizer itself adds around text (T5: tail = EOS), `labels` = ``[head] target EOS`` padded
  with **-100, never the pad id**; `attention_mask` covers the encoder side.
* A synthetic source with no tokens (a generator that emitted EOS first) is **dropped** by
  default (``drop_empty=True``) and counted: the returned `CycleBatch` has `kept` (original row
  indices) and `num_dropped`. With every row dropped the tensors have shape ``(0, 0)`` and the
  caller should skip the step. ``drop_empty=False`` keeps such a row with an empty source.
* ``max_length`` truncation keeps the EOS labelled. Causal: the fixed parts (specials, template,
  sep, EOS) are kept; source and target tokens are removed from the end of the longer of the two
  (ties: the source) until the row fits. Seq2seq: the source is cut to fit ``max_length`` and the
  target to fit ``max_target_length`` (default ``max_length``); EOS stays last in the labels.
  A `max_length` too small for the fixed parts is a `ValueError`.

Fast path equality: `prepare_causal_batch_from_ids` gives exactly the batch of
`prepare_causal_batch(decode_generations(...), ...)` when re-encoding each decoded source gives
back the generated ids (``encode(decode(ids)) == ids``), which holds for ids that are the
tokenizer's own encoding of their text (e.g. byte-level BPE on text it produced greedily from
canonical merges). A sampled, non-canonical split of a word (``"h" "ello"``) differs: the fast
path then trains on the generator's exact tokens, the text path on the canonical ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from trainformers.losses import IGNORE_INDEX

__all__ = [
    "CycleBatch",
    "CycleBatchBuilder",
    "decode_generations",
    "extract_generated_ids",
    "prepare_causal_batch",
    "prepare_causal_batch_from_ids",
    "prepare_seq2seq_batch",
    "tokenizers_compatible",
]


class CycleBatch(dict):
    """A dict of model inputs (`input_ids`, `attention_mask`, `labels`) that also carries
    `kept` (original indices of the rows in the batch) and `num_dropped` (rows dropped for an
    empty synthetic source) as attributes, so ``model(**batch)`` sees only the tensors."""

    kept: list[int]
    num_dropped: int

    def __init__(self, tensors: dict[str, torch.Tensor], kept: list[int], num_dropped: int):
        super().__init__(tensors)
        self.kept = kept
        self.num_dropped = num_dropped


def tokenizers_compatible(a: Any, b: Any) -> bool:
    """Whether ids mean the same thing under tokenizers `a` and `b` (same vocabulary and EOS/PAD/BOS ids)."""
    if a is b:
        return True
    return a.get_vocab() == b.get_vocab() and all(
        getattr(a, name) == getattr(b, name) for name in ("eos_token_id", "pad_token_id", "bos_token_id")
    )


def extract_generated_ids(
    generated_ids: torch.Tensor | Sequence[Sequence[int]],
    prompt_width: int | torch.Tensor,
    tokenizer: Any,
) -> list[list[int]]:
    """The generated source ids of each row: after the prompt, before the first EOS.

    Args:
        generated_ids: ``generate`` output, shape (B, P + N): the left-padded prompt then the new
            tokens (pads/EOS after a row's first EOS). For a seq2seq generator pass its decoder
            output with ``prompt_width=0`` (the decoder start token is a special id, dropped).
        prompt_width: P, or the prompt's attention mask (B, P) (its width is used).
        tokenizer: The generator's tokenizer.

    Returns:
        One list of ids per row: the new tokens before the first EOS, with other special ids
        (pad, BOS, decoder start) dropped, as ``decode(..., skip_special_tokens=True)`` does.
    """
    width = int(prompt_width.shape[-1]) if isinstance(prompt_width, torch.Tensor) else int(prompt_width)
    eos = tokenizer.eos_token_id
    special = set(tokenizer.all_special_ids)
    rows = generated_ids.tolist() if isinstance(generated_ids, torch.Tensor) else [list(r) for r in generated_ids]
    out = []
    for row in rows:
        new = row[width:]
        if eos is not None and eos in new:
            new = new[: new.index(eos)]
        out.append([t for t in new if t not in special])
    return out


def decode_generations(
    generated_ids: torch.Tensor | Sequence[Sequence[int]],
    tokenizer: Any,
    prompt_width: int | torch.Tensor = 0,
) -> list[str]:
    """Texts of the generated sources, decoded with the *generator's* tokenizer (see
    `extract_generated_ids`); feed them to the text path of the trained model."""
    return [tokenizer.decode(ids) for ids in extract_generated_ids(generated_ids, prompt_width, tokenizer)]


def _special_layout(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The ids the tokenizer adds before and after encoded text (add_special_tokens=True)."""
    probe = "a b"
    bare = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe, add_special_tokens=True)["input_ids"]
    for i in range(len(full) - len(bare) + 1):
        if full[i : i + len(bare)] == bare:
            return list(full[:i]), list(full[i + len(bare) :])
    raise ValueError("cannot find where the tokenizer puts its special tokens around text")


def _split_template(prompt_template: str) -> tuple[str, str]:
    if prompt_template.count("{text}") != 1:
        raise ValueError(f"prompt_template must contain '{{text}}' exactly once, got {prompt_template!r}")
    prefix, suffix = prompt_template.split("{text}")

    def unescape(s: str) -> str:
        return s.replace("{{", "{").replace("}}", "}")

    return unescape(prefix), unescape(suffix)


def _pad(rows: list[list[int]], value: int, width: int) -> torch.Tensor:
    return torch.tensor([r + [value] * (width - len(r)) for r in rows], dtype=torch.long)


def _width(rows: list[list[int]], multiple: int | None) -> int:
    longest = max(len(r) for r in rows)
    if multiple:
        longest = -(-longest // multiple) * multiple
    return longest


def _check_texts(texts: Sequence[Any], what: str) -> None:
    for t in texts:
        if not isinstance(t, str):
            raise TypeError(
                f"{what} must be texts (str), got {type(t).__name__}: the text path re-encodes with the "
                "trained model's tokenizer; decode generated ids with the generator's tokenizer first "
                "(decode_generations), or use prepare_causal_batch_from_ids when both share a tokenizer"
            )


class CycleBatchBuilder:
    """Builds the training batch of one direction for the model that owns `tokenizer`.

    Args:
        tokenizer: The trained model's tokenizer (must have an EOS token).
        kind: ``"causal"`` or ``"seq2seq"``.
        prompt_template: Wraps the synthetic source; one ``{text}`` field.
        sep: Causal only: text between the prompt and the target.
        max_length: Truncate rows to this many tokens (see the module rules); None: no limit.
        max_target_length: Seq2seq labels limit; defaults to `max_length`.
        pad_to_multiple_of: Round the padded width up to a multiple of this (None: no rounding).
        drop_empty: Drop rows whose synthetic source has no tokens (counted in `num_dropped`).
    """

    def __init__(
        self,
        tokenizer: Any,
        kind: str = "causal",
        *,
        prompt_template: str = "{text}",
        sep: str = "\n",
        max_length: int | None = None,
        max_target_length: int | None = None,
        pad_to_multiple_of: int | None = 8,
        drop_empty: bool = True,
    ):
        if kind not in ("causal", "seq2seq"):
            raise ValueError(f"kind must be 'causal' or 'seq2seq', got {kind!r}")
        if tokenizer.eos_token_id is None:
            raise ValueError("the trained model's tokenizer has no EOS token; every target must end with one")
        self.tokenizer = tokenizer
        self.kind = kind
        self.max_length = max_length
        self.max_target_length = max_target_length if max_target_length is not None else max_length
        self.pad_to_multiple_of = pad_to_multiple_of
        self.drop_empty = drop_empty
        self.eos_id = int(tokenizer.eos_token_id)
        self.pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
        self.head, self.tail = _special_layout(tokenizer)
        prefix, suffix = _split_template(prompt_template)
        self.prefix_ids = self._encode(prefix)
        self.suffix_ids = self._encode(suffix + sep if kind == "causal" else suffix)

    def encode(self, text: str) -> list[int]:
        """The ids of `text` alone (no special tokens), as every segment of a row is encoded."""
        return self._encode(text)

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []

    # -- public entry points --------------------------------------------------------------

    def from_texts(self, synthetic_texts: Sequence[str], target_texts: Sequence[str]) -> CycleBatch:
        """The text path: re-encode decoded synthetic sources and real target texts."""
        _check_texts(synthetic_texts, "synthetic_texts")
        _check_texts(target_texts, "target_texts")
        return self.from_token_lists(
            [self._encode(s) for s in synthetic_texts],
            [self._encode(t) for t in target_texts],
        )

    def from_generated_ids(
        self,
        generated_ids: torch.Tensor,
        prompt_width: int | torch.Tensor,
        target_ids: Sequence[Sequence[int]] | torch.Tensor,
        *,
        target_attention_mask: torch.Tensor | None = None,
        generator_tokenizer: Any = None,
    ) -> CycleBatch:
        """The causal shared-tokenizer fast path (see `prepare_causal_batch_from_ids`)."""
        if self.kind != "causal":
            raise ValueError("the token fast path is for a causal trained model; use the text path for seq2seq")
        if generator_tokenizer is not None and not tokenizers_compatible(generator_tokenizer, self.tokenizer):
            raise ValueError("the generator's tokenizer differs from the trained model's: use the text path")
        sources = extract_generated_ids(generated_ids, prompt_width, self.tokenizer)
        return self.from_token_lists(sources, self._target_lists(target_ids, target_attention_mask))

    def _target_lists(self, target_ids: Any, mask: torch.Tensor | None) -> list[list[int]]:
        if isinstance(target_ids, torch.Tensor):
            if target_ids.dim() != 2 or mask is None:
                raise ValueError("a target_ids tensor must be 2-D (B, T) and come with target_attention_mask")
            rows = [row[m.bool()].tolist() for row, m in zip(target_ids, mask)]
        else:
            rows = [list(r.tolist() if isinstance(r, torch.Tensor) else r) for r in target_ids]
        # The builder adds the special ids itself: drop ones already there.
        out = []
        for r in rows:
            if self.head and r[: len(self.head)] == self.head:
                r = r[len(self.head) :]
            if r and r[-1] == self.eos_id:
                r = r[:-1]
            out.append(r)
        return out

    def from_token_lists(self, sources: list[list[int]], targets: list[list[int]]) -> CycleBatch:
        """Assemble from per-row source and target ids (trained model's vocabulary, no specials)."""
        if len(sources) != len(targets):
            raise ValueError(f"{len(sources)} synthetic sources but {len(targets)} targets")
        kept = [i for i, s in enumerate(sources) if s or not self.drop_empty]
        build = self._causal_row if self.kind == "causal" else self._seq2seq_row
        rows = [build(list(sources[i]), list(targets[i])) for i in kept]
        dropped = len(sources) - len(kept)
        if not rows:
            empty = torch.zeros((0, 0), dtype=torch.long)
            return CycleBatch(
                {
                    "input_ids": empty,
                    "attention_mask": empty.clone(),
                    "labels": empty.clone(),
                },
                [],
                dropped,
            )
        inputs = [r[0] for r in rows]
        labels = [r[1] for r in rows]
        width = _width(inputs, self.pad_to_multiple_of)
        attention = _pad([[1] * len(r) for r in inputs], 0, width)
        if self.kind == "causal":
            tensors = {
                "input_ids": _pad(inputs, self.pad_id, width),
                "attention_mask": attention,
                "labels": _pad(labels, IGNORE_INDEX, width),
            }
        else:
            tensors = {
                "input_ids": _pad(inputs, self.pad_id, width),
                "attention_mask": attention,
                "labels": _pad(labels, IGNORE_INDEX, _width(labels, self.pad_to_multiple_of)),
            }
        return CycleBatch(tensors, kept, dropped)

    # -- generation prompts ---------------------------------------------------------------

    def prompt_row(self, src: list[int]) -> list[int]:
        """What this model reads for source ids `src`: a training row up to (not including) the
        target. Causal: ``[head] prefix src suffix+sep``; seq2seq: ``[head] prefix src suffix [tail]``.
        The source is cut to fit `max_length`."""
        tail = self.tail if self.kind == "seq2seq" else []
        if self.max_length is not None:
            fixed = len(self.head) + len(self.prefix_ids) + len(self.suffix_ids) + len(tail)
            src = src[: max(self.max_length - fixed, 0)]
        return self.head + self.prefix_ids + list(src) + self.suffix_ids + tail

    def generation_batch(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Generation inputs of this model for source texts: (input_ids, attention_mask, longest
        source in tokens). Causal prompts are padded on the left (the new tokens follow every
        prompt directly), seq2seq encoder inputs on the right."""
        _check_texts(texts, "texts")
        sources = [self._encode(t) for t in texts]
        rows = [self.prompt_row(s) for s in sources]
        width = max(len(r) for r in rows)
        left = self.kind == "causal"
        ids = [([self.pad_id] * (width - len(r)) + r) if left else (r + [self.pad_id] * (width - len(r))) for r in rows]
        mask = [
            ([0] * (width - len(r)) + [1] * len(r)) if left else ([1] * len(r) + [0] * (width - len(r))) for r in rows
        ]
        longest = max(len(s) for s in sources)
        return torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.long), longest

    # -- rows -----------------------------------------------------------------------------

    def _causal_row(self, src: list[int], tgt: list[int]) -> tuple[list[int], list[int]]:
        fixed = len(self.head) + len(self.prefix_ids) + len(self.suffix_ids) + 1
        if self.max_length is not None:
            budget = self.max_length - fixed
            if budget < 0:
                raise ValueError(f"max_length={self.max_length} is below the {fixed} fixed tokens of a row")
            while len(src) + len(tgt) > budget:  # longest first; ties cut the source
                if len(src) >= len(tgt):
                    src.pop()
                else:
                    tgt.pop()
        prompt = self.head + self.prefix_ids + src + self.suffix_ids
        answer = tgt + [self.eos_id]
        return prompt + answer, [IGNORE_INDEX] * len(prompt) + answer

    def _seq2seq_row(self, src: list[int], tgt: list[int]) -> tuple[list[int], list[int]]:
        fixed_in = len(self.head) + len(self.prefix_ids) + len(self.suffix_ids) + len(self.tail)
        fixed_out = len(self.head) + 1
        if self.max_length is not None:
            if self.max_length < fixed_in:
                raise ValueError(f"max_length={self.max_length} is below the {fixed_in} fixed encoder tokens")
            src = src[: self.max_length - fixed_in]
        if self.max_target_length is not None:
            if self.max_target_length < fixed_out:
                raise ValueError(f"max_target_length={self.max_target_length} is below {fixed_out}")
            tgt = tgt[: self.max_target_length - fixed_out]
        return (
            self.head + self.prefix_ids + src + self.suffix_ids + self.tail,
            self.head + tgt + [self.eos_id],
        )


def prepare_causal_batch(
    synthetic_texts: Sequence[str],
    target_texts: Sequence[str],
    tokenizer: Any,
    *,
    prompt_template: str = "{text}",
    sep: str = "\n",
    max_length: int | None = None,
    pad_to_multiple_of: int | None = 8,
    drop_empty: bool = True,
) -> CycleBatch:
    """Causal batch from texts: ``[BOS?] template(synthetic) sep target EOS``, labels on target+EOS."""
    return CycleBatchBuilder(
        tokenizer,
        "causal",
        prompt_template=prompt_template,
        sep=sep,
        max_length=max_length,
        pad_to_multiple_of=pad_to_multiple_of,
        drop_empty=drop_empty,
    ).from_texts(synthetic_texts, target_texts)


def prepare_seq2seq_batch(
    synthetic_texts: Sequence[str],
    target_texts: Sequence[str],
    tokenizer: Any,
    *,
    prompt_template: str = "{text}",
    max_length: int | None = None,
    max_target_length: int | None = None,
    pad_to_multiple_of: int | None = 8,
    drop_empty: bool = True,
) -> CycleBatch:
    """Seq2seq batch from texts: encoder input = template(synthetic), labels = target EOS (pads -100)."""
    return CycleBatchBuilder(
        tokenizer,
        "seq2seq",
        prompt_template=prompt_template,
        max_length=max_length,
        max_target_length=max_target_length,
        pad_to_multiple_of=pad_to_multiple_of,
        drop_empty=drop_empty,
    ).from_texts(synthetic_texts, target_texts)


def prepare_causal_batch_from_ids(
    generated_ids: torch.Tensor,
    prompt_width: int | torch.Tensor,
    target_ids: Sequence[Sequence[int]] | torch.Tensor,
    tokenizer: Any,
    *,
    prompt_template: str = "{text}",
    sep: str = "\n",
    max_length: int | None = None,
    pad_to_multiple_of: int | None = 8,
    drop_empty: bool = True,
    target_attention_mask: torch.Tensor | None = None,
    generator_tokenizer: Any = None,
) -> CycleBatch:
    """Causal + causal, one shared tokenizer: the batch of `prepare_causal_batch` built from ids.

    Args:
        generated_ids: The generator's ``generate`` output (B, P + N): left-padded prompts, then
            the new tokens; everything from a row's first EOS on is ignored.
        prompt_width: P, or the generator's prompt attention mask (B, P).
        target_ids: The real targets' ids (trained model's tokenizer, no special tokens; a
            leading BOS / trailing EOS already there is removed): a list of id lists, or a 2-D
            tensor with `target_attention_mask` (any padding side).
        tokenizer: The tokenizer both models share.
        generator_tokenizer: When given, checked to be compatible with `tokenizer`.

    Equal to the text path on ``decode_generations(generated_ids, tokenizer, prompt_width)``
    when re-encoding each decoded source gives back its ids (see the module docstring).
    """
    return CycleBatchBuilder(
        tokenizer,
        "causal",
        prompt_template=prompt_template,
        sep=sep,
        max_length=max_length,
        pad_to_multiple_of=pad_to_multiple_of,
        drop_empty=drop_empty,
    ).from_generated_ids(
        generated_ids,
        prompt_width,
        target_ids,
        target_attention_mask=target_attention_mask,
        generator_tokenizer=generator_tokenizer,
    )
