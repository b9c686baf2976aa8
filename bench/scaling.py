"""Cost curves: how data preparation, checkpoints, evaluation and resuming grow with their size.

Four curves, each over sizes spanning 30x or more, each point measured in a fresh process (its
own peak memory, no cache or allocator state carried over):

- `data`: preparing a pretraining corpus the library's way (`DataSection` -> `load_raw` ->
  `prepare_data`: the source read, tokenised by a cached `datasets.map`, packed into blocks of
  512), for generated corpora of 30 MB to 1 GB of text (`.jsonl`), map-style (Arrow files in a
  fresh `datasets` cache; a second, cached call timed too) and streamed (`data.streaming`: the
  whole stream iterated). Plus the `.txt` reader alone (documents read, not tokenised), as it is
  and as it was (`--txt-before`: the whole file read into one string, patched back in).
- `checkpoint`: save and load time of Llama models of 9M to 1B parameters (fp32, vocabulary
  32,000, untied), through the library's code: `weights` (`save_model_files`/`load_model_files`:
  the model.safetensors of a checkpoint and of `final/`), `trainer` (a `Trainer` checkpoint after
  one real step: model, AdamW state, scheduler, RNG; `save_checkpoint` timed inside `train()`,
  `load_checkpoint` inside `train(resume_from_checkpoint=...)`), `sharded_weights` and `sharded`
  (FSDP2 `fully_shard` on a one-process gloo group, `sharded.ShardedModel` writing
  `torch.distributed.checkpoint` shards: the model, and the model with AdamW state). The AdamW
  kinds stop at 300M: at 1B the model, its gradients and AdamW state are 16 GB, too close to this
  machine's 24. Saves are fsynced (`atomic_checkpoint`); before a load the checkpoint's pages are
  dropped from the page cache (`posix_fadvise DONTNEED`), so a load reads the disk.
- `eval`: `Trainer.evaluate()` peak memory and time on 32 to 1,000 rows (`bench/eval_memory.py`'s
  measurement, run for more sizes): loss only, argmax predictions, full logits.
- `resume`: time to the first step when resuming at step 1,000 to 30,000 of an epoch
  (`bench/resume_startup.py`'s measurement at more positions).

Memory: "peak RSS" is the kernel's high-water mark of the child (VmHWM), file pages included:
memory-mapped Arrow and safetensors files count there although the kernel can drop them;
"peak anonymous" is the largest RssAnon this script saw polling the child every 50 ms (what the
process really allocated). Growth is measured from the child's RSS just before the measured
step. "load" is the CPU other processes used meanwhile (docs/perf-notes.md: one busy core makes
a 2-thread run several times slower); memory does not depend on it, times do.

Results go to `--results` (JSON per curve: a rerun with `--plot-only` redraws from them), plots
to docs/scaling-<curve>.png, tables with `--markdown FILE` or into docs/benchmarks.md with
`--write-doc` (between the `bench/scaling.py` markers).

    .venv/bin/python bench/scaling.py --write-doc            # about 1.5 hours on 2 cores
    .venv/bin/python bench/scaling.py --curves checkpoint eval --write-doc
    .venv/bin/python bench/scaling.py --quick                # small sizes: checks that it runs
    .venv/bin/python bench/scaling.py --plot-only --write-doc

The generated corpus (about 3 GB with the `.txt` copies) stays in `--corpus-dir` for reuse.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _machine import Load, command_line, machine_line, spread, write_fragment  # bench/_machine.py

HERE = Path(__file__).resolve().parent
DOCS = HERE.parent / "docs"
BEGIN, END = "<!-- bench/scaling.py: begin -->", "<!-- bench/scaling.py: end -->"
CURVES = ("data", "checkpoint", "eval", "resume")

CORPUS_MB = (30, 100, 300, 1000)
QUICK_CORPUS_MB = (2, 6)
BLOCK = 512  # data.max_length: packed block length
TOKENIZER_VOCAB = 8192
# name -> (hidden, layers): Llama, SwiGLU 8/3 hidden, 64-wide heads, 4 query heads per KV head
MODEL_SIZES = {"9M": (128, 6), "31M": (320, 10), "91M": (640, 12), "283M": (1024, 20), "1.0B": (2048, 20)}
OPTIMIZER_LIMIT = "283M"  # the kinds with AdamW state stop here (1B: 16 GB of model, grads and state)
QUICK_MODELS = ("9M", "31M")
VOCAB = 32_000
EVAL_ROWS = (32, 100, 320, 1000)
EVAL_SETTINGS = ("loss_only", "argmax", "full")
RESUME_POSITIONS = (1_000, 3_000, 10_000, 30_000)
RESUME_ROWS = 300_000  # 37,500 micro-batches of 8: the largest position fits in one epoch

# ---- the corpus --------------------------------------------------------------------------------


def make_corpus(root: Path, sizes_mb: tuple[int, ...]) -> dict[int, dict[str, Path]]:
    """Generated English-like text, `{size_mb: {"jsonl": path, "txt": path}}`; made once, reused.

    A vocabulary of 30,000 made-up words (shorter words more frequent, Zipf exponent 1.07),
    sentences of 5-25 words with commas, paragraphs of about 5 sentences, documents of log-normal
    length (median 300 words, about 2 KB; some over 50 KB). Each size is a prefix of the largest
    (the same documents, in order). `.jsonl`: one `{"text": ...}` per line; `.txt`: the documents
    separated by blank lines (the `.txt` reader groups paragraphs into documents of its own).
    """
    import numpy as np

    root.mkdir(parents=True, exist_ok=True)
    files = {mb: {kind: root / f"corpus_{mb}mb.{kind}" for kind in ("jsonl", "txt")} for mb in sizes_mb}
    stamp = root / "corpus.json"
    if stamp.is_file() and json.loads(stamp.read_text()).get("sizes") == list(sizes_mb):
        return files
    rng = np.random.default_rng(0)
    syllables = [c + v for c in "bcdfghjklmnprstvwz" for v in "aeiou"] + ["th", "st", "ch", "sh", "qu", "tr"]
    words: dict[str, None] = {}
    while len(words) < 30_000:
        words["".join(rng.choice(syllables, rng.integers(1, 5)))] = None
    vocab = sorted(words, key=len)  # frequent words are short, as in real text
    n = len(vocab)
    p = 1.0 / np.arange(1, n + 1) ** 1.07
    p /= p.sum()
    # every word in each of its six spellings: kind k of word i is table[i + k * n]
    endings = (("", " "), ("cap", " "), ("", ". "), ("", ".\n\n"), ("", ", "), ("", "."))
    table = np.array([(w.capitalize() if c else w) + e for c, e in endings for w in vocab], dtype=object)
    handles = {mb: {k: open(path, "w") for k, path in f.items()} for mb, f in files.items()}
    left = {mb: mb * 2**20 for mb in sizes_mb}
    try:
        while any(v > 0 for v in left.values()):
            words_per_doc = np.maximum(rng.lognormal(np.log(300), 1.0, 1000).astype(int), 8)
            total = int(words_per_doc.sum())
            kind = np.zeros(total, dtype=np.int64)
            ends = np.cumsum(rng.integers(5, 26, total // 5 + 10))
            ends = ends[ends < total]
            kind[ends - 1] = 2  # sentence end
            kind[ends[rng.random(len(ends)) < 0.2] - 1] = 3  # paragraph end
            kind[ends[ends < total]] = 1  # capitalised sentence start
            kind[(rng.random(total) < 0.05) & (kind == 0)] = 4  # comma
            doc_end = np.cumsum(words_per_doc)
            kind[doc_end - 1] = 5
            kind[doc_end[:-1]] = 1
            kind[0] = 1
            tokens = table[rng.choice(n, total, p=p) + n * kind]
            for a, b in zip(np.concatenate([[0], doc_end[:-1]]), doc_end):
                text = "".join(tokens[a:b].tolist())
                line = json.dumps({"text": text}) + "\n"
                for mb, h in handles.items():
                    if left[mb] > 0:
                        h["jsonl"].write(line)
                        h["txt"].write(text + "\n\n")
                        left[mb] -= len(line)
    finally:
        for h in handles.values():
            for f in h.values():
                f.close()
    stamp.write_text(json.dumps({"sizes": list(sizes_mb)}))
    return files


def make_tokenizer(root: Path, corpus: Path) -> Path:
    """A byte-level BPE of 8,192 tokens trained (`data.tokenizer.train_tokenizer`) on 2,000 documents."""
    import itertools

    from trainformers.data.tokenizer import train_tokenizer

    out = root / "tokenizer"
    if not (out / "tokenizer.json").is_file():
        with open(corpus) as f:
            texts = (json.loads(line)["text"] for line in itertools.islice(f, 2000))
            train_tokenizer(texts, vocab_size=TOKENIZER_VOCAB, out_dir=out)
    return out


# ---- one measurement per process -----------------------------------------------------------------


def _status(pid: int | str = "self") -> dict[str, float]:
    """VmRSS, VmHWM, RssAnon, RssFile of a process, in MB ({} once it has exited)."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                    out[key] = int(rest.split()[0]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return out


class Phase:
    """Times a step of a child and measures its memory growth from just before it.

    Two peaks: VmHWM (reset at the start through /proc/self/clear_refs; it counts mapped file
    pages too) and RssAnon, sampled every 10 ms by a thread (what the step really allocated;
    torch, tokenizers and safetensors release the GIL in their long calls, so the thread runs).
    """

    def __init__(self, results: dict[str, Any], name: str) -> None:
        self.results, self.name = results, name
        self.peak_anon = 0.0
        self.done = threading.Event()

    def _sample(self) -> None:
        while not self.done.wait(0.01):
            self.peak_anon = max(self.peak_anon, _status().get("RssAnon", 0.0))

    def __enter__(self) -> Phase:
        gc.collect()
        before = _status()
        self.rss, self.anon = before["VmRSS"], before["RssAnon"]
        self.peak_anon = self.anon
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM := VmRSS now
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        seconds = time.perf_counter() - self.start
        self.done.set()
        self.thread.join()
        after = _status()
        self.results[f"{self.name}_s"] = seconds
        self.results[f"{self.name}_peak_growth_mb"] = after["VmHWM"] - self.rss
        self.results[f"{self.name}_anon_growth_mb"] = max(self.peak_anon, after["RssAnon"]) - self.anon


def child_data(mode: str, path: str, tokenizer: str, results: dict[str, Any]) -> None:
    """Prepare one corpus the library's way: `map` (Arrow cache, then a second cached call) or `stream`."""
    from transformers import AutoTokenizer

    import trainformers.data.pretraining as pretraining
    from trainformers.config import DataSection
    from trainformers.data.loader import load_raw, prepare_data

    tok = AutoTokenizer.from_pretrained(tokenizer)
    data = DataSection(source=path, max_length=BLOCK, validation_split_percentage=0, streaming=mode == "stream")
    steps: dict[str, float] = {}
    original = pretraining._map

    def timed_map(dataset: Any, function: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        out = original(dataset, function, **kwargs)
        key = kwargs["desc"].split()[0].lower()  # tokenizing / packing
        steps[key] = steps.get(key, 0.0) + time.perf_counter() - start
        return out

    pretraining._map = timed_map
    with Phase(results, "prepare"):
        start = time.perf_counter()
        raw = load_raw(data)
        results["read_s"] = time.perf_counter() - start
        prepared = prepare_data(data, tok, raw=raw)
        if mode == "stream":  # lazy until read: the preparation happens here
            rows = tokens = 0
            for row in prepared.train:
                rows, tokens = rows + 1, tokens + len(row["input_ids"])
        else:
            rows, tokens = len(prepared.train), prepared.stats[0].tokens
    results.update(rows=rows, tokens=tokens, tokenize_s=steps.get("tokenizing", 0.0), pack_s=steps.get("packing", 0.0))
    if mode == "map":
        del prepared, raw
        with Phase(results, "cached"):
            prepare_data(data, tok)


def _old_txt_documents(files: list[str]) -> Any:
    """The `.txt` reader before: each file read into one string, split into a list, then yielded."""
    from trainformers.data.corpus import split_paragraphs

    for file in files:
        for document in split_paragraphs(Path(file).read_text("utf-8")):
            yield {"text": document}


def child_txt(mode: str, path: str, variant: str, results: dict[str, Any]) -> None:
    """Read a `.txt` source into documents (no tokenisation): `map` (Arrow cache) or `stream` (iterated)."""
    from trainformers.data import sources

    if variant == "before":
        sources._txt_documents = _old_txt_documents
    with Phase(results, "prepare"):
        dataset = sources.load_source(path, streaming=mode == "stream")
        rows = chars = 0
        if mode == "stream":
            for row in dataset:
                rows, chars = rows + 1, chars + len(row["text"])
        else:
            rows = len(dataset)
    results.update(rows=rows, chars=chars)


def build_llama(size: str, *, fill: str = "uniform", shard: Any = None) -> Any:
    """A Llama of `MODEL_SIZES[size]`, allocated without random init (meta, then `to_empty`).

    Random init of 1B parameters takes minutes on 2 cores; the bytes written are the same with a
    fast uniform fill. A model to load into is zeroed (`fill="zero"`): its pages are then in
    memory before the load, as a real model's are, and a load's memory growth is its overhead.
    `shard` (FSDP2's `fully_shard` per layer, then the root) runs on the meta model. The rotary
    buffers are computed again (`to_empty` leaves them unset).
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, layers = MODEL_SIZES[size]
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        intermediate_size=int(8 * hidden / 3) // 64 * 64,
        num_hidden_layers=layers,
        num_attention_heads=max(hidden // 64, 1),
        num_key_value_heads=max(hidden // 256, 1),
        max_position_embeddings=64,
        tie_word_embeddings=False,
        use_cache=False,
        pad_token_id=0,
    )
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    if shard is not None:
        shard(model)
    model.to_empty(device="cpu")
    rotary = type(model.model.rotary_emb)(config)
    for name, buffer in rotary.named_buffers():
        getattr(model.model.rotary_emb, name).copy_(buffer)
    with torch.no_grad():
        for p in model.parameters():
            if fill == "uniform":
                p.uniform_(-0.02, 0.02)
            else:
                p.zero_()
    return model


def drop_page_cache(folder: Path) -> None:
    """Evict a (fsynced) checkpoint's files from the page cache, so that loading reads the disk."""
    for path in folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def _du_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def _warm_up(results: dict[str, Any], root: Path) -> None:
    """Pay the first save's imports before timing: transformers' `save_pretrained` unwraps the model
    through Accelerate, which imports deepspeed when it is installed (and deepspeed imports mlflow)."""
    import torch.distributed.checkpoint  # noqa: F401  (the sharded kinds' first-use import)

    from trainformers import checkpoint as ckpt

    start = time.perf_counter()
    ckpt.save_model_files(build_llama("9M"), root / "warm-up")
    results["first_save_s"] = time.perf_counter() - start
    shutil.rmtree(root / "warm-up")


def child_checkpoint(kind: str, size: str, root: str, step: str, results: dict[str, Any]) -> None:
    """`step` "save" writes root/checkpoint-1 of `kind` for a model of `size`; "load", in another
    process (as a resumed run is), reads it into a new model (see the module docstring)."""
    from trainformers import checkpoint as ckpt

    folder = Path(root) / "checkpoint-1"
    _warm_up(results, Path(root))
    if kind == "trainer":
        _trainer_checkpoint(size, Path(root), step, results)
    elif kind == "weights" and step == "save":
        model = build_llama(size)
        results["params"] = sum(p.numel() for p in model.parameters())
        with Phase(results, "save"), ckpt.atomic_checkpoint(folder) as tmp:
            ckpt.save_model_files(model, tmp)
    elif kind == "weights":
        model = build_llama(size, fill="zero")
        drop_page_cache(folder)
        with Phase(results, "load"):
            ckpt.load_model_files(model, folder)
    else:
        _sharded_checkpoint(size, folder, step, kind == "sharded", results)
    if step == "save":
        results["disk_mb"] = _du_mb(folder)


def _sharded_checkpoint(size: str, folder: Path, step: str, with_optimizer: bool, results: dict[str, Any]) -> None:
    """FSDP2 on a one-process gloo group; `ShardedModel` saves or loads the model (and AdamW state) as DCP shards."""
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from trainformers import checkpoint as ckpt
    from trainformers.sharded import ShardedModel

    dist.init_process_group("gloo", rank=0, world_size=1, init_method=f"file://{folder.parent}/pg_{step}")
    mesh = init_device_mesh("cpu", (1,))

    def shard(model: Any) -> None:
        for layer in model.model.layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)

    model = build_llama(size, fill="uniform" if step == "save" else "zero", shard=shard)
    results["params"] = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    handler = ShardedModel(model, shard_checkpoints=True)
    if step == "save":
        if with_optimizer:  # one real step: the optimizer state of a run in progress
            ids = torch.randint(0, VOCAB, (1, 16))
            model(input_ids=ids, labels=ids).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        with Phase(results, "save"), ckpt.atomic_checkpoint(folder) as tmp:
            handler.save(tmp, {"": optimizer} if with_optimizer else {})
            model.config.save_pretrained(tmp)
    else:
        drop_page_cache(folder)
        with Phase(results, "load"):
            if with_optimizer:  # the new optimizer's state is allocated in there, as on resume
                handler.load(folder, {"": optimizer})
            else:
                handler.load_model(folder)
    dist.destroy_process_group()


def _trainer_checkpoint(size: str, root: Path, step: str, results: dict[str, Any]) -> None:
    """ "save": a `Trainer` saves checkpoint-1 after one step; "load": a new `Trainer` resumes from it."""
    from datasets import Dataset

    import trainformers
    from trainformers import checkpoint as ckpt

    ids = [[(7 * i + j) % VOCAB for j in range(16)] for i in range(8)]
    data = Dataset.from_dict({"input_ids": ids, "labels": ids})
    args = trainformers.TrainingArguments(
        output_dir=str(root),
        per_device_train_batch_size=1,
        max_steps=1,
        save_strategy="steps",
        save_steps=1,
        learning_rate=1e-4,
        optim="adamw_torch_fused",
        report_to="none",
        disable_tqdm=True,
        report_at_end=False,
        logging_steps=1000,
        dataloader_pin_memory=False,
    )
    save, load = ckpt.save_checkpoint, ckpt.load_checkpoint

    def timed_save(*a: Any, **k: Any) -> Any:
        with Phase(results, "save"):
            return save(*a, **k)

    def timed_load(*a: Any, **k: Any) -> Any:
        with Phase(results, "load"):
            return load(*a, **k)

    ckpt.save_checkpoint, ckpt.load_checkpoint = timed_save, timed_load
    model = build_llama(size, fill="uniform" if step == "save" else "zero")
    results["params"] = sum(p.numel() for p in model.parameters())
    trainer = trainformers.Trainer(model, args, train_dataset=data)
    if step == "save":
        trainer.train()
    else:  # the checkpoint is at max_steps: train() loads it and stops
        drop_page_cache(root / "checkpoint-1")
        trainer.train(resume_from_checkpoint=str(root / "checkpoint-1"))


def run_child(command: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one measurement in a fresh process, polling its memory; its JSON result plus the peaks."""
    load = Load()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=HERE)
    peak: dict[str, float] = {}
    while proc.poll() is None:
        for key, value in _status(proc.pid).items():
            peak[key] = max(peak.get(key, 0.0), value)
        time.sleep(0.05)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command[1:])} failed ({proc.returncode}):\n{err[-3000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    result.update(load=load.foreign(), peak_anon_mb=peak.get("RssAnon", 0.0), peak_file_mb=peak.get("RssFile", 0.0))
    return result


# ---- the curves ----------------------------------------------------------------------------------


class Store:
    """Each curve's measurements as JSON in `--results` (written after every one, so a long run can stop)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)

    def read(self, curve: str) -> dict[str, Any]:
        path = self.folder / f"{curve}.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def write(self, curve: str, content: dict[str, Any]) -> None:
        path = self.folder / f"{curve}.json"
        path.write_text(json.dumps(content, indent=1))


def _child_command(*args: str) -> list[str]:
    return [sys.executable, str(HERE / "scaling.py"), "--child", *args]


def _note(curve: str, record: dict[str, Any]) -> None:
    shown = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in record.items() if not k.endswith("before_mb")}
    print(f"  {curve}: {shown}", flush=True)


def measure_data(opts: argparse.Namespace, store: Store) -> None:
    sizes = QUICK_CORPUS_MB if opts.quick else tuple(opts.corpus_mb or CORPUS_MB)
    corpus = make_corpus(opts.corpus_dir, sizes)
    start = time.perf_counter()
    tokenizer = make_tokenizer(opts.corpus_dir, corpus[sizes[0]]["jsonl"])
    print(f"tokenizer ready in {time.perf_counter() - start:.0f} s", flush=True)
    records: list[dict[str, Any]] = []
    content = {
        "machine": machine_line(),
        "command": opts.command,
        "date": time.strftime("%Y-%m-%d"),
        "records": records,
    }
    cases = [("jsonl", mode, "now") for mode in ("map", "stream")]
    cases += [("txt", mode, variant) for mode in ("map", "stream") for variant in ("before", "now")]
    for repeat in range(opts.rounds):
        for mb in sizes:
            if mb == sizes[-1] and repeat >= opts.largest_rounds:
                continue
            for fmt, mode, variant in cases:
                if fmt == "txt" and not opts.txt:
                    continue
                cache = Path(tempfile.mkdtemp(prefix="hf_cache_", dir=opts.work_dir))
                env = dict(os.environ, HF_DATASETS_CACHE=str(cache), HF_DATASETS_OFFLINE="1")
                path = str(corpus[mb][fmt])
                args = ["data", mode, path, str(tokenizer)] if fmt == "jsonl" else ["txt", mode, path, variant]
                try:
                    record = run_child(_child_command(*args), env)
                finally:
                    shutil.rmtree(cache, ignore_errors=True)
                record.update(format=fmt, mode=mode, variant=variant, mb=mb, bytes=os.path.getsize(path), round=repeat)
                records.append(record)
                _note("data", record)
                store.write("data", content)


def measure_checkpoint(opts: argparse.Namespace, store: Store) -> None:
    sizes = QUICK_MODELS if opts.quick else tuple(opts.models or MODEL_SIZES)
    limit = list(MODEL_SIZES).index(OPTIMIZER_LIMIT)
    records: list[dict[str, Any]] = []
    content = {
        "machine": machine_line(),
        "command": opts.command,
        "date": time.strftime("%Y-%m-%d"),
        "records": records,
    }
    for repeat in range(opts.rounds):
        for size in sizes:
            for kind in ("weights", "sharded_weights", "trainer", "sharded"):
                if kind in ("trainer", "sharded") and list(MODEL_SIZES).index(size) > limit:
                    continue
                root = Path(tempfile.mkdtemp(prefix="ckpt_", dir=opts.work_dir))
                try:
                    saved = run_child(_child_command("checkpoint", kind, size, str(root), "save"))
                    loaded = run_child(_child_command("checkpoint", kind, size, str(root), "load"))
                finally:
                    shutil.rmtree(root, ignore_errors=True)
                record = {**saved, **loaded, "save_load": saved["load"], "first_save_s": saved["first_save_s"]}
                record.update(kind=kind, size=size, round=repeat)
                records.append(record)
                _note("checkpoint", record)
                store.write("checkpoint", content)


def measure_eval(opts: argparse.Namespace, store: Store) -> None:
    rows_list = EVAL_ROWS[:2] if opts.quick else EVAL_ROWS
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")  # as eval_memory.py (its docstring says why)
    records: list[dict[str, Any]] = []
    content = {
        "machine": machine_line(),
        "command": opts.command,
        "date": time.strftime("%Y-%m-%d"),
        "records": records,
    }
    for repeat in range(opts.rounds):
        for setting in EVAL_SETTINGS:
            for rows in rows_list:
                record = run_child([sys.executable, str(HERE / "eval_memory.py"), "--child", setting, str(rows)], env)
                record.update(setting=setting, rows=rows, round=repeat)
                records.append(record)
                _note("eval", record)
                store.write("eval", content)


def child_resume(rows: int, positions: list[int], repeats: int, results: dict[str, Any]) -> None:
    """`bench/resume_startup.py`'s measurement: every position, `jump` (now) and `walk` (before), rotated."""
    import contextlib
    import io

    import resume_startup as rs  # bench/resume_startup.py

    steps = -(-rows // rs.BATCH)
    data = rs.rows(rows)
    cases = [("fresh", None)] + [(v, k) for k in positions for v in ("jump", "walk")]
    times: dict[str, list[float]] = {f"{v}@{k}": [] for v, k in cases}
    loads = []
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
        checkpoints = rs.make_checkpoints(Path(tmp), data, positions, steps)
        rs.measure("fresh", data, None, Path(tmp) / "warm-up", steps)
        for repeat in range(repeats):
            load = Load()
            for variant, k in cases[repeat % len(cases) :] + cases[: repeat % len(cases)]:
                out = Path(tmp) / f"fresh_{repeat}"
                times[f"{variant}@{k}"].append(rs.measure(variant, data, checkpoints.get(k), out, steps))
            loads.append(load.foreign())
    results.update(times=times, loads=loads, steps_per_epoch=steps, rows=rows)


def measure_resume(opts: argparse.Namespace, store: Store) -> None:
    rows, positions = (20_000, [100, 1_000]) if opts.quick else (RESUME_ROWS, list(RESUME_POSITIONS))
    repeats = 1 if opts.quick else 5
    args = ["resume", str(rows), ",".join(map(str, positions)), str(repeats)]
    record = run_child(_child_command(*args))
    content = {"machine": machine_line(), "command": opts.command, "date": time.strftime("%Y-%m-%d"), **record}
    _note("resume", {"loads": record["loads"]})
    store.write("resume", content)


# ---- tables and plots ----------------------------------------------------------------------------


def _groups(records: list[dict[str, Any]], *keys: str) -> dict[tuple, list[dict[str, Any]]]:
    out: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        out.setdefault(tuple(r[k] for k in keys), []).append(r)
    return out


def _med(rs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in rs)


def _growth(r: dict[str, Any], phase: str) -> float:
    return r[f"{phase}_peak_growth_mb"]


def _anon_growth(r: dict[str, Any], phase: str = "prepare") -> float:
    return r[f"{phase}_anon_growth_mb"]


def slope(points: list[tuple[float, float]]) -> str:
    """The log-log slope from the smallest to the largest size: about 1 is linear, about 0 flat."""
    import math

    (x0, y0), (x1, y1) = points[0], points[-1]
    if min(x0, y0, x1, y1) <= 0 or x0 == x1:
        return "n/a"
    return f"{math.log(y1 / y0) / math.log(x1 / x0):.2f}"


def _figure(ncols: int) -> tuple[Any, Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.0 * ncols, 4.2), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, ncols, squeeze=False).ravel()


def _plot(ax: Any, series: dict[str, list[tuple[float, list[float]]]], title: str, xlabel: str, ylabel: str) -> None:
    """Medians with min-max bars on log-log axes, and a dotted line of slope 1 (linear) from the first point."""
    for k, (name, points) in enumerate(series.items()):
        if not points:
            continue
        xs = [x for x, _ in points]
        med = [statistics.median(v) for _, v in points]
        low = [m - min(v) for m, (_, v) in zip(med, points)]
        high = [max(v) - m for m, (_, v) in zip(med, points)]
        ax.errorbar(xs, med, yerr=[low, high], marker="o", markersize=4, capsize=3, color=f"C{k}", label=name)
    first = next((p for p in series.values() if p), None)
    if first:
        x0, y0 = first[0][0], statistics.median(first[0][1])
        x1 = max(x for p in series.values() for x, _ in p)
        ax.plot([x0, x1], [y0, y0 * x1 / x0], ":", color="grey", linewidth=1, label="linear from the first point")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize="small")


def _series(groups: dict[tuple, list[dict[str, Any]]], x: Any, y: Any) -> list[tuple[float, list[float]]]:
    return sorted((x(rs[0]), [y(r) for r in rs]) for rs in groups.values())


def _header(content: dict[str, Any], what: str) -> str:
    return (
        f"Machine: {content['machine']}. Command: `{content['command']}` ({content['date']}). {what} "
        "Median (min–max) over the rounds given; load: the CPU other processes used meanwhile, in cores."
    )


def render_data(content: dict[str, Any]) -> tuple[str, Any]:
    records = content["records"]
    jsonl = _groups([r for r in records if r["format"] == "jsonl"], "mode", "mb")
    txt = _groups([r for r in records if r["format"] == "txt"], "mode", "variant", "mb")
    lines = [
        "| mode | corpus | tokens | rounds | prepare, s | MB/s | read / tokenise / pack, s | cached call, s "
        "| peak RSS growth, MB | peak anonymous growth, MB | load |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    slopes = []
    for mode in ("map", "stream"):
        rows = sorted((k[1], rs) for k, rs in jsonl.items() if k[0] == mode)
        for mb, rs in rows:
            parts = (
                "—"
                if mode == "stream"
                else " / ".join(f"{_med(rs, k):.0f}" for k in ("read_s", "tokenize_s", "pack_s"))
            )
            cached = spread([r["cached_s"] for r in rs], "{:.2f}") if mode == "map" else "—"
            lines.append(
                f"| {mode} | {mb:,} MB | {rs[0]['tokens'] / 1e6:.0f}M | {len(rs)} | {spread([r['prepare_s'] for r in rs], '{:.0f}')} "
                f"| {spread([r['bytes'] / 2**20 / r['prepare_s'] for r in rs], '{:.2f}')} | {parts} | {cached} "
                f"| {spread([_growth(r, 'prepare') for r in rs], '{:.0f}')} | {spread([_anon_growth(r) for r in rs], '{:.0f}')} "
                f"| {spread([r['load'] for r in rs], '{:.2f}')} |"
            )
        if rows:
            t = slope([(mb, _med(rs, "prepare_s")) for mb, rs in rows])
            m = slope([(mb, statistics.median(_anon_growth(r) for r in rs)) for mb, rs in rows])
            slopes.append(f"{mode}: time {t}, anonymous memory {m}")
    txt_lines = [
        "| mode | reader | corpus | documents | rounds | read, s | peak RSS growth, MB | peak anonymous growth, MB | load |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for (mode, variant, mb), rs in sorted(txt.items()):
        txt_lines.append(
            f"| {mode} | {variant} | {mb:,} MB | {rs[0]['rows']:,} | {len(rs)} | {spread([r['prepare_s'] for r in rs], '{:.1f}')} "
            f"| {spread([_growth(r, 'prepare') for r in rs], '{:.0f}')} | {spread([_anon_growth(r) for r in rs], '{:.0f}')} "
            f"| {spread([r['load'] for r in rs], '{:.2f}')} |"
        )
    fig, axes = _figure(3)
    by_mode = {m: {k: v for k, v in jsonl.items() if k[0] == m} for m in ("map", "stream")}
    _plot(axes[0], {f"jsonl, {m}": _series(g, lambda r: r["mb"], lambda r: r["prepare_s"]) for m, g in by_mode.items()},
          "tokenise + pack: time", "corpus, MB of text", "seconds")  # fmt: skip
    memory = {f"jsonl, {m}: peak anonymous": _series(g, lambda r: r["mb"], _anon_growth) for m, g in by_mode.items()}
    memory.update(
        {
            f"jsonl, {m}: peak RSS": _series(g, lambda r: r["mb"], lambda r: _growth(r, "prepare"))
            for m, g in by_mode.items()
        }
    )
    _plot(axes[1], memory, "tokenise + pack: peak memory growth", "corpus, MB of text", "MB")
    txt_series = {}
    for mode in ("map", "stream"):
        for variant in ("before", "now"):
            g = {k: v for k, v in txt.items() if k[:2] == (mode, variant)}
            txt_series[f".txt {mode}, {variant}"] = _series(g, lambda r: r["mb"], _anon_growth)
    _plot(axes[2], txt_series, ".txt reader: peak anonymous growth", "corpus, MB of text", "MB")
    text = (
        "#### Data preparation\n\n"
        + _header(
            content,
            "Generated corpus as `.jsonl` through `prepare_data` (tokenizer: byte-level BPE, "
            f"{TOKENIZER_VOCAB:,} tokens; blocks of {BLOCK}).",
        )
        + "\n\n![data preparation](scaling-data.png)\n\n"
        + "\n".join(lines)
        + f"\n\nLog-log slope, smallest to largest corpus (1 linear, 0 flat): {'; '.join(slopes)}.\n"
    )
    if txt:
        text += "\nThe `.txt` reader alone (documents, no tokenisation):\n\n" + "\n".join(txt_lines) + "\n"
    return text, fig


def render_checkpoint(content: dict[str, Any]) -> tuple[str, Any]:
    groups = _groups(content["records"], "kind", "size")
    order = list(MODEL_SIZES)
    kinds = ("weights", "sharded_weights", "trainer", "sharded")
    lines = [
        "| kind | params | on disk, MB | rounds | save, s | load, s | save, MB/s | load, MB/s "
        "| save: peak anonymous growth, MB | load: peak RSS growth, MB | load: peak anonymous growth, MB | load |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    slopes = []
    for kind in kinds:
        rows = sorted(((order.index(k[1]), rs) for k, rs in groups.items() if k[0] == kind), key=lambda t: t[0])
        for _, rs in rows:
            save = spread([r["save_s"] for r in rs], "{:.2f}")
            save_rate = spread([r["disk_mb"] / r["save_s"] for r in rs], "{:.0f}")
            save_anon = spread([_anon_growth(r, "save") for r in rs], "{:.0f}")
            lines.append(
                f"| {kind} | {rs[0]['params'] / 1e6:,.0f}M | {rs[0]['disk_mb']:,.0f} | {len(rs)} | {save} "
                f"| {spread([r['load_s'] for r in rs], '{:.2f}')} | {save_rate} "
                f"| {spread([r['disk_mb'] / r['load_s'] for r in rs], '{:.0f}')} | {save_anon} "
                f"| {spread([_growth(r, 'load') for r in rs], '{:.0f}')} | {spread([_anon_growth(r, 'load') for r in rs], '{:.0f}')} "
                f"| {spread([max(r['load'], r['save_load']) for r in rs], '{:.2f}')} |"
            )
        if rows:
            pts = [(rs[0]["params"], rs) for _, rs in rows]
            parts = [f"save {slope([(p, _med(rs, 'save_s')) for p, rs in pts])}"]
            parts.append(f"load {slope([(p, _med(rs, 'load_s')) for p, rs in pts])}")
            parts.append(
                f"load memory {slope([(p, statistics.median(_anon_growth(r, 'load') for r in rs)) for p, rs in pts])}"
            )
            slopes.append(f"{kind}: {', '.join(parts)}")
    fig, axes = _figure(3)
    panels = (
        (lambda r: r["save_s"], "save (fsynced)", "seconds"),
        (lambda r: r["load_s"], "load (from disk)", "seconds"),
        (lambda r: max(_anon_growth(r, "load"), 1.0), "load: peak anonymous growth", "MB"),
    )
    for ax, (y, title, unit) in zip(axes, panels):
        series = {k: _series({s: v for s, v in groups.items() if s[0] == k}, lambda r: r["params"], y) for k in kinds}
        _plot(ax, series, title, "parameters", unit)
    first = [r["first_save_s"] for r in content["records"] if "first_save_s" in r]
    text = (
        "#### Checkpoint save and load\n\n"
        + _header(
            content,
            "Llama models (fp32, untied, vocabulary 32,000); saves fsynced, pages dropped from the cache before "
            "each load. Not in the times: the first save of a process, "
            f"{spread(first, '{:.1f}')} s for a 9M model, most of it imports (below).",
        )
        + "\n\n![checkpoints](scaling-checkpoint.png)\n\n"
        + "\n".join(lines)
        + f"\n\nLog-log slope, smallest to largest model: {'; '.join(slopes)}.\n"
    )
    return text, fig


def render_eval(content: dict[str, Any]) -> tuple[str, Any]:
    groups = _groups(content["records"], "setting", "rows")
    lines = [
        "| setting | rows | stored outputs, MB | rounds | peak RSS growth, MB | evaluate(), s | load |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    slopes = []
    for setting in EVAL_SETTINGS:
        rows = sorted((k[1], rs) for k, rs in groups.items() if k[0] == setting)
        for n, rs in rows:
            lines.append(
                f"| {setting} | {n:,} | {rs[0]['stored_mb']:.1f} | {len(rs)} | {spread([r['growth_mb'] for r in rs], '{:.1f}')} "
                f"| {spread([r['seconds'] for r in rs], '{:.2f}')} | {spread([r['load'] for r in rs], '{:.2f}')} |"
            )
        if rows:
            slopes.append(
                f"{setting}: memory {slope([(n, _med(rs, 'growth_mb')) for n, rs in rows])}, "
                f"time {slope([(n, _med(rs, 'seconds')) for n, rs in rows])}"
            )
    fig, axes = _figure(2)
    for ax, (key, title, unit) in zip(
        axes, (("growth_mb", "peak RSS growth", "MB"), ("seconds", "evaluate() time", "seconds"))
    ):
        series = {
            s: _series({k: v for k, v in groups.items() if k[0] == s}, lambda r: r["rows"], lambda r, key=key: r[key])
            for s in EVAL_SETTINGS
        }
        _plot(ax, series, title, "eval rows", unit)
    text = (
        "#### Evaluation memory\n\n"
        + _header(
            content,
            "`bench/eval_memory.py`'s child (Llama hidden 64, 2 layers, vocabulary 4,096, rows of 64–128 tokens, eval batch 8) at more sizes.",
        )
        + "\n\n![evaluation](scaling-eval.png)\n\n"
        + "\n".join(lines)
        + f"\n\nLog-log slope, smallest to largest set: {'; '.join(slopes)}.\n"
    )
    return text, fig


def render_resume(content: dict[str, Any]) -> tuple[str, Any]:
    times, steps = content["times"], content["steps_per_epoch"]
    positions = sorted({int(k.split("@")[1]) for k in times if not k.startswith("fresh")})
    lines = [f"| start | position (step of {steps:,}) | jump (now), ms | walk (before), ms |", "|---|---:|---:|---:|"]
    lines.append(f"| fresh, no checkpoint | 0 | {spread([t * 1e3 for t in times['fresh@None']], '{:.0f}')} | |")
    for k in positions:
        jump, walk = ([t * 1e3 for t in times[f"{v}@{k}"]] for v in ("jump", "walk"))
        lines.append(f"| resume | {k:,} | {spread(jump, '{:.0f}')} | {spread(walk, '{:.0f}')} |")
    fig, axes = _figure(1)
    series = {v: [(float(k), [t * 1e3 for t in times[f"{v}@{k}"]]) for k in positions] for v in ("jump", "walk")}
    _plot(axes[0], series, "resume: time to the first step", "position (micro-batches into the epoch)", "ms")
    slopes = "; ".join(f"{v} {slope([(x, statistics.median(ys)) for x, ys in s])}" for v, s in series.items())
    text = (
        "#### Resume start-up\n\n"
        + _header(
            {**content, "command": content["command"]},
            f"`bench/resume_startup.py`'s measurement ({content['rows']:,} rows of 16 tokens, batch 8), "
            f"{len(times['fresh@None'])} rounds, order rotated; foreign load per round {spread(content['loads'], '{:.2f}')} cores.",
        )
        + "\n\n![resume](scaling-resume.png)\n\n"
        + "\n".join(lines)
        + f"\n\nLog-log slope, first to last position: {slopes}.\n"
    )
    return text, fig


RENDER = {"data": render_data, "checkpoint": render_checkpoint, "eval": render_eval, "resume": render_resume}
MEASURE = {"data": measure_data, "checkpoint": measure_checkpoint, "eval": measure_eval, "resume": measure_resume}


def write_doc(fragment: str) -> None:
    """Put the fragment between the markers of docs/benchmarks.md (a new section at the end the first time)."""
    doc = DOCS / "benchmarks.md"
    text = doc.read_text()
    block = f"{BEGIN}\n{fragment.strip()}\n{END}"
    if BEGIN in text:
        before, rest = text.split(BEGIN, 1)
        text = before + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip() + "\n\n## Cost curves (`bench/scaling.py`)\n\n" + block + "\n"
    doc.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--curves", nargs="+", choices=CURVES, default=list(CURVES))
    parser.add_argument("--rounds", type=int, default=2, help="rounds per point")
    parser.add_argument("--largest-rounds", type=int, default=1, help="rounds of the 1 GB corpus")
    parser.add_argument(
        "--corpus-mb", type=int, nargs="+", help=f"corpus sizes in MB (default {' '.join(map(str, CORPUS_MB))})"
    )
    parser.add_argument("--models", nargs="+", choices=list(MODEL_SIZES), help="model sizes (default: all)")
    parser.add_argument("--no-txt", dest="txt", action="store_false", help="skip the .txt reader points")
    parser.add_argument("--quick", action="store_true", help="small sizes, one round: checks that it runs")
    parser.add_argument("--plot-only", action="store_true", help="draw and write from --results, measure nothing")
    parser.add_argument("--corpus-dir", type=Path, default=Path(tempfile.gettempdir()) / "trainformers_scaling")
    parser.add_argument("--work-dir", type=Path, help="checkpoints and datasets caches (default: under --corpus-dir)")
    parser.add_argument(
        "--results", type=Path, help="JSON results (default: --corpus-dir/results; --quick: quick/results)"
    )
    parser.add_argument("--markdown", help="write the fragment here")
    parser.add_argument(
        "--write-doc", action="store_true", help="write the fragment into docs/benchmarks.md and the plots into docs/"
    )
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.child:
        run_as_child(opts.child)
        return
    opts.command = command_line(opts.markdown)
    if opts.quick:
        opts.rounds = opts.largest_rounds = 1
        opts.corpus_dir = opts.corpus_dir / "quick"
    opts.work_dir = opts.work_dir or opts.corpus_dir / "work"
    opts.work_dir.mkdir(parents=True, exist_ok=True)
    store = Store(opts.results or opts.corpus_dir / "results")
    print(f"machine: {machine_line()}; results in {store.folder}", flush=True)
    for curve in opts.curves:
        if not opts.plot_only:
            start = time.perf_counter()
            MEASURE[curve](opts, store)
            print(f"{curve}: {(time.perf_counter() - start) / 60:.1f} min", flush=True)
    from trainformers.report import save_png

    parts = []
    for curve in CURVES:
        content = store.read(curve)
        if not content:
            continue
        text, fig = RENDER[curve](content)
        parts.append(text)
        if opts.write_doc:
            save_png(fig, DOCS / f"scaling-{curve}.png")
    fragment = "\n".join(parts)
    print(fragment)
    write_fragment(opts.markdown, fragment)
    if opts.write_doc:
        write_doc(fragment)


def run_as_child(args: list[str]) -> None:
    """`--child KIND ...`: one measurement; prints its JSON as the last line."""
    from transformers.utils import logging

    logging.set_verbosity_error()
    results: dict[str, Any] = {}
    kind, rest = args[0], args[1:]
    if kind == "data":
        child_data(rest[0], rest[1], rest[2], results)
    elif kind == "txt":
        child_txt(rest[0], rest[1], rest[2], results)
    elif kind == "checkpoint":
        child_checkpoint(rest[0], rest[1], rest[2], rest[3], results)
    elif kind == "resume":
        child_resume(int(rest[0]), [int(k) for k in rest[1].split(",")], int(rest[2]), results)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
