"""Shared, library-neutral setup for the CycleTrainer vs cycleformers 0.1.0 benchmark.

Runs unchanged under both venvs (ours: transformers 5.x; the peer's: transformers 4.x) and uses
only torch, transformers, tokenizers and datasets. Everything is a pure function of `seed`:

* `build_data(seed)`: synthetic unpaired task. Domain A = lowercase pseudo-word sentences
  (3-8 words of 2-3 syllables from `SYLLABLES`), domain B = the same kind of sentences
  upper-cased. A and B (4000 each) come from different draws of one `random.Random(seed)` and
  are shuffled separately; 200 held-out pairs (lower, UPPER) are drawn first and never appear in
  A or B (nor in each other's sets). Columns: `text` (unpaired), `text_A`/`text_B` (paired).
* `get_tokenizer(dir)`: a shared byte-level BPE (vocab 1000) trained with `tokenizers` on A+B
  of seed 0, saved once as plain files (tokenizer.json + a hand-written tokenizer_config.json,
  so no transformers version writes it) and loaded with `PreTrainedTokenizerFast.from_pretrained`.
  GPT-2 style: bos/eos/pad are defined but the tokenizer adds no special tokens itself, and it
  returns only input_ids + attention_mask (no token_type_ids).
* `build_gpt2` / `build_t5`: tiny random-init models from configs (GPT-2: 512 positions, see
  MAX_POSITIONS), built after
  `torch.manual_seed(seed)` and then re-initialised by `reinit_` from a generator seeded with
  `seed` in sorted-name order, so the weights depend on names and shapes only (not on the
  transformers version's init order). `checksum(model)` prints a fingerprint to compare venvs.

    python bench/cycleformers_peer/task.py   # in either venv: prints sizes and checksums
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
DEFAULT_TOKENIZER_DIR = HERE / "out" / "tokenizer"

SYLLABLES = [
    "ba", "be", "bi", "bo", "bu", "ka", "ke", "ki", "ko", "ku",
    "da", "de", "di", "do", "du", "la", "le", "li", "lo", "lu",
    "ma", "me", "mi", "mo", "mu", "na", "ne", "ni", "no", "nu",
    "ra", "re", "ri", "ro", "ru", "sa", "se", "si", "so", "su",
    "ta", "te", "ti", "to", "tu", "van", "ren", "tol", "mis", "gor",
]  # fmt: skip

BOS, EOS, PAD = "<|bos|>", "<|endoftext|>", "<|pad|>"
VOCAB_SIZE = 1000
# GPT-2 positions and tokenizer model_max_length. 512, not 128: cycleformers 0.1.0 hard-codes
# max_new_tokens=100 and trains decoder-only models on re-encode(decode(generation)) + "\n\n" +
# target with no truncation; garbage generations re-encode to up to ~3 tokens per generated
# token (invalid UTF-8 -> U+FFFD), and rows of 205-219 tokens were seen in the first steps, so
# 128 positions crash it (IndexError in wpe). Position count does not change compute.
MAX_POSITIONS = 512


# ----------------------------------------------------------------------------- data
def _sentence(rng: random.Random) -> str:
    words = ["".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 3))) for _ in range(rng.randint(3, 8))]
    return " ".join(words)


def build_texts(seed: int = 0, n_unpaired: int = 4000, n_eval: int = 200) -> dict[str, list]:
    """Plain lists (no datasets): A (lower), B (UPPER), eval pairs. Deterministic in `seed`."""
    rng = random.Random(seed)
    seen: set[str] = set()

    def draw(n: int) -> list[str]:
        out = []
        while len(out) < n:
            s = _sentence(rng)
            if s not in seen:  # disjoint sets: no eval sentence in training, A and B unrelated
                seen.add(s)
                out.append(s)
        return out

    ev = draw(n_eval)
    a = draw(n_unpaired)
    b = [s.upper() for s in draw(n_unpaired)]
    random.Random(seed + 1).shuffle(a)
    random.Random(seed + 2).shuffle(b)
    return {"A": a, "B": b, "eval_A": ev, "eval_B": [s.upper() for s in ev]}


def build_data(seed: int = 0, n_unpaired: int = 4000, n_eval: int = 200) -> dict:
    """`datasets.Dataset`s: unpaired_A / unpaired_B (column `text`), paired_eval (`text_A`, `text_B`)."""
    from datasets import Dataset

    t = build_texts(seed, n_unpaired, n_eval)
    return {
        "unpaired_A": Dataset.from_dict({"text": t["A"]}),
        "unpaired_B": Dataset.from_dict({"text": t["B"]}),
        "paired_eval": Dataset.from_dict({"text_A": t["eval_A"], "text_B": t["eval_B"]}),
    }


# ------------------------------------------------------------------------ tokenizer
def _train_tokenizer(out_dir: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    t = build_texts(0)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[EOS, PAD, BOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(t["A"] + t["B"], trainer=trainer)
    tok.save(str(out_dir / "tokenizer.json"))
    cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "model_max_length": MAX_POSITIONS,
        "padding_side": "right",
        "clean_up_tokenization_spaces": False,
        # no token_type_ids: T5.forward rejects them (cycleformers passes the tokenizer's whole
        # output to the model) and GPT-2 would add wte(token_type_ids) = wte(0) to every position
        "model_input_names": ["input_ids", "attention_mask"],
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    (out_dir / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": BOS, "eos_token": EOS, "pad_token": PAD}, indent=2) + "\n"
    )


def get_tokenizer(tokenizer_dir: str | os.PathLike | None = None):
    """Load the shared tokenizer from `tokenizer_dir`, training and saving it there first if absent."""
    from transformers import PreTrainedTokenizerFast

    d = Path(tokenizer_dir or DEFAULT_TOKENIZER_DIR)
    if not (d / "tokenizer.json").exists():
        d.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tok-", dir=d.parent))
        _train_tokenizer(tmp)
        try:
            tmp.rename(d)
        except OSError:  # someone else won the race; use theirs
            shutil.rmtree(tmp, ignore_errors=True)
    tok = PreTrainedTokenizerFast.from_pretrained(str(d))
    assert tok.eos_token == EOS and tok.pad_token == PAD and tok.bos_token == BOS, tok
    assert "token_type_ids" not in tok("a"), f"stale tokenizer files in {d}: delete the folder"
    return tok


def tokenizer_fingerprint(tok) -> str:
    ids = tok("rebomo TOLKAMI nu\n\nBABE")["input_ids"]
    return hashlib.sha256(json.dumps([len(tok), ids]).encode()).hexdigest()[:12]


# --------------------------------------------------------------------------- models
def reinit_(model: torch.nn.Module, seed: int, std: float = 0.02) -> torch.nn.Module:
    """Overwrite every parameter from a generator seeded with `seed`, visiting names in sorted
    order: LayerNorm/RMSNorm weights (1-D tensors named *ln*/*norm*/*layer_norm*) = 1, other 1-D
    tensors (biases) = 0, the rest ~ N(0, std). Tied parameters are visited once."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        named = dict(model.named_parameters())  # de-duplicates tied weights
        for name in sorted(named):
            p = named[name]
            if p.dim() == 1:
                if any(k in name for k in ("ln_", "norm", "layer_norm")) and name.endswith("weight"):
                    p.fill_(1.0)
                else:
                    p.zero_()
            else:
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype) * std)
    return model


def build_gpt2(tok, seed: int, n_positions: int = MAX_POSITIONS):
    """GPT-2-like decoder: n_embd 256, 4 layers, 4 heads, `n_positions` positions, dropout 0 (~3.4M params)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        vocab_size=len(tok),
        n_embd=256,
        n_layer=4,
        n_head=4,
        n_positions=n_positions,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(cfg)
    reinit_(model, seed)
    _greedy(model, tok)
    return model


def build_t5(tok, seed: int):
    """T5-like encoder-decoder: d_model 256, 4+4 layers, 4 heads x d_kv 64, d_ff 512, ReLU,
    tied embeddings, dropout 0 (~5.5M params)."""
    from transformers import T5Config, T5ForConditionalGeneration

    cfg = T5Config(
        vocab_size=len(tok),
        d_model=256,
        d_kv=64,
        d_ff=512,
        num_layers=4,
        num_decoder_layers=4,
        num_heads=4,
        feed_forward_proj="relu",
        dropout_rate=0.0,
        tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id,
        decoder_start_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(cfg)
    reinit_(model, seed)
    _greedy(model, tok)
    return model


def _greedy(model, tok) -> None:
    gc = model.generation_config
    gc.do_sample = False
    gc.num_beams = 1
    gc.pad_token_id = tok.pad_token_id
    gc.eos_token_id = tok.eos_token_id
    gc.bos_token_id = tok.bos_token_id
    if model.config.is_encoder_decoder:
        gc.decoder_start_token_id = tok.pad_token_id


def n_params(model) -> int:
    return sum(p.numel() for p in dict(model.named_parameters()).values())


def checksum(model) -> str:
    """sha256 over (name, shape, float32 bytes) of the de-duplicated parameters, sorted by name."""
    h = hashlib.sha256()
    named = dict(model.named_parameters())
    for name in sorted(named):
        p = named[name].detach().to(torch.float32).contiguous().cpu()
        h.update(name.encode())
        h.update(str(tuple(p.shape)).encode())
        h.update(p.numpy().tobytes())
    return h.hexdigest()[:16]


def set_threads(n: int = 2) -> int:
    torch.set_num_threads(n)
    return torch.get_num_threads()


if __name__ == "__main__":
    import transformers

    tok = get_tokenizer()
    d = build_texts(0)
    lens = [len(tok(s)["input_ids"]) for s in d["A"] + d["B"]]
    print(f"torch {torch.__version__} transformers {transformers.__version__} threads {set_threads()}")
    print(
        f"tokenizer: {len(tok)} tokens, fingerprint {tokenizer_fingerprint(tok)}, "
        f"tokens/sentence mean {sum(lens) / len(lens):.1f} max {max(lens)}"
    )
    print("A[0]:", d["A"][0], "| B[0]:", d["B"][0], "| eval[0]:", d["eval_A"][0], "->", d["eval_B"][0])
    print("data sha:", hashlib.sha256(json.dumps(d).encode()).hexdigest()[:16])
    for name, fn, seed in (("gpt2", build_gpt2, 0), ("gpt2", build_gpt2, 1), ("t5", build_t5, 0), ("t5", build_t5, 1)):
        m = fn(tok, seed)
        print(f"{name} seed {seed}: {n_params(m) / 1e6:.2f}M params, checksum {checksum(m)}")
