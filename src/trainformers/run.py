"""A whole training run from a `RunConfig`: data, tokenizer, model, Trainer, report, sample.

`trainformers train` is a thin wrapper around `run_training`; Python users can call it too. The
embedded default (`DEFAULT_RUN`) trains a small causal LM from scratch on the documentation text
that ships with every Python (`pydoc_data.topics`), on a laptop CPU in a couple of minutes.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers.trainer_utils import BestRun

from .accel import check_engines
from .allocator import apply_malloc_policy
from .callbacks import TrainerCallback
from .config import RunConfig
from .errors import ConfigError
from .results import memory_text
from .run_lock import RunLock
from .search import SUMMARY_FILE, format_trials_table, import_optuna, search_space_from_config
from .trackers import check_trackers, finish_trackers

# The embedded default run. Sized so a 2-core CPU finishes in about two minutes with a held-out
# perplexity well below the unigram baseline; the numbers are in docs/benchmarks.md.
DEFAULT_RUN: dict[str, dict[str, Any]] = {
    "model": {
        "preset": "tiny",  # DecoderLM: hidden 128, 4 layers, 4 heads, 2 KV heads (1.0M parameters)
        "vocab_size": 2048,
        "max_position_embeddings": 256,
        "sample_prompt": "The ",
        "sample_max_new_tokens": 40,
    },
    "data": {"source": None, "max_length": 128, "validation_split_percentage": 5},
    "training": {
        # no overwrite_output_dir here: a run is replaced only when this invocation asks for it
        # (`make train` does, with --training.overwrite_output_dir true)
        "output_dir": "runs/default",
        "num_train_epochs": 8,
        "per_device_train_batch_size": 16,
        "per_device_eval_batch_size": 32,
        "dataloader_drop_last": True,  # a 1-row last batch per epoch made a grad-norm spike each epoch
        "learning_rate": 3e-3,
        "weight_decay": 0.1,
        "warmup_steps": 0.05,
        "lr_scheduler_type": "cosine",
        "logging_steps": 10,
        "eval_strategy": "steps",
        "eval_steps": 100,
        "save_strategy": "steps",
        "save_steps": 100,
        "save_total_limit": 2,
        "report_to": ["tensorboard"] if importlib.util.find_spec("tensorboard") else [],
        "seed": 42,
    },
}


@dataclass
class RunResult:
    """What a run produced: where, how long, and how good."""

    output_dir: Path
    runtime: float
    global_step: int
    train_loss: float
    eval_loss: float | None
    perplexity: float | None
    sample: str | None
    throughput: str | None = None  # tokens/s, achieved TFLOP/s and MFU of the training time


def build_tokenizer(config: RunConfig, train_texts: Iterable[str], *, reuse_saved: bool = False) -> Any:
    """Load the configured tokenizer, reuse the run's own, or train one on the data (saved at once).

    With `reuse_saved`, a tokenizer already saved where this run trains its own is loaded, not trained
    again: the other processes of a distributed run load what the main process trained.
    """
    tokenizer, unsaved = obtain_tokenizer(config, train_texts, reuse_saved=reuse_saved)
    if unsaved is not None:
        tokenizer.save_pretrained(str(unsaved))
    return tokenizer


def obtain_tokenizer(
    config: RunConfig, train_texts: Iterable[str], *, reuse_saved: bool = False
) -> tuple[Any, Path | None]:
    """`build_tokenizer` without its write: `(tokenizer, where a tokenizer trained here is to be saved)`,
    the second None when it was loaded. `trainformers train` saves it once every check has passed.

    Raises:
        ConfigError: `model.tokenizer` names a file (it takes a directory, a Hub name, or where to train one).
    """
    from transformers import AutoTokenizer

    from .data import train_tokenizer

    model = config.model
    if model.tokenizer and Path(model.tokenizer).is_file():
        raise ConfigError(
            f"model.tokenizer='{model.tokenizer}' is a file; give the directory that holds its tokenizer.json, "
            "a Hub name, or a new directory to train one into"
        )
    # from scratch, `model.tokenizer` may name where to train one (first step), not an existing one
    train_to = Path(model.tokenizer) if model.tokenizer and not model.name_or_path else None
    if train_to is not None and (train_to / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(train_to), None
    name = model.tokenizer or model.name_or_path
    if name and (train_to is None or _looks_like_hub_name(name)):
        from .models.loading import load_tokenizer

        field = "model.tokenizer" if model.tokenizer else "model.name_or_path"
        return load_tokenizer(name, model.trust_remote_code, field=field), None
    saved = train_to or Path(config.training.output_dir) / "tokenizer"
    if (config.training.resume_from_checkpoint or reuse_saved) and (saved / "tokenizer.json").is_file():
        # a resumed run, or another rank, must see the very same ids
        return AutoTokenizer.from_pretrained(saved), None
    chat = config.data.training_mode == "instruction"  # role markers become single tokens
    return train_tokenizer(train_texts, model.vocab_size, chat_tokens=chat), saved


def _looks_like_hub_name(name: str) -> bool:
    """`org/name` with no local meaning: load it; a path-like name is a place to train into."""
    return not name.startswith((".", "/", "~")) and name.count("/") == 1 and not Path(name).parent.exists()


def build_model(config: RunConfig, tokenizer: Any) -> torch.nn.Module:
    """A pretrained causal LM, or a new `DecoderLM` sized by the `model` section."""
    from .models import DecoderLM, DecoderLMConfig
    from .models.loading import QUANTIZATION_FIELDS, load_pretrained

    m = config.model
    dtype = "auto" if m.dtype == "auto" else getattr(torch, m.dtype)
    router = {
        k: v
        for k, v in (
            ("load_balance_coef", m.load_balance_coef),
            ("auxiliary_coef", m.auxiliary_coef),
            ("z_loss_coef", m.z_loss_coef),
        )
        if v is not None
    }
    if m.name_or_path:
        model = load_pretrained(
            m.name_or_path,
            dtype=m.dtype,
            trust_remote_code=m.trust_remote_code,
            **{k: getattr(m, k) for k in QUANTIZATION_FIELDS},
        )
        for name, value in router.items():  # the run file overrides the saved router coefficients
            setattr(model.config, name, value)
        return _fit_to_tokenizer(model, tokenizer, config)
    if config.data.max_length > m.max_position_embeddings:
        raise ConfigError(
            f"data.max_length={config.data.max_length} exceeds model.max_position_embeddings="
            f"{m.max_position_embeddings}; lower max_length or raise max_position_embeddings"
        )
    decoder = DecoderLMConfig(
        vocab_size=len(tokenizer),
        hidden_size=m.hidden_size,
        num_hidden_layers=m.num_layers,
        num_attention_heads=m.num_heads,
        num_key_value_heads=m.num_kv_heads,
        intermediate_size=m.intermediate_size,
        max_position_embeddings=m.max_position_embeddings,
        dropout=m.dropout,
        tie_word_embeddings=m.tie_word_embeddings,
        num_experts=m.num_experts,
        num_experts_per_tok=m.num_experts_per_tok,
        moe_layers=m.moe_layers,
        capacity_factor=m.capacity_factor,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **router,
    )
    torch.manual_seed(config.training.seed)
    return _fit_to_tokenizer(DecoderLM(decoder).to(dtype), tokenizer, config)


def _fit_to_tokenizer(model: Any, tokenizer: Any, config: RunConfig) -> Any:
    """An instruction run's model: embeddings grown to the tokens its chat template added (new rows
    drawn around the old ones' mean, seeded), generation stopping at the template's end of turn."""
    if config.data.training_mode != "instruction":
        return model
    from .data import stop_token_ids

    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        torch.manual_seed(config.training.seed)
        model.resize_token_embeddings(len(tokenizer))
    model.generation_config.eos_token_id = stop_token_ids(model, tokenizer)
    return model


def generate_sample(model: torch.nn.Module, tokenizer: Any, prompt: str, max_new_tokens: int, seed: int = 0) -> str:
    """A sampled continuation of `prompt` (top-k 40, temperature 0.8, seeded: the same every run).

    Greedy decoding of a small model loops on its most frequent token; light sampling shows
    what it learned.
    """
    model.eval()
    torch.manual_seed(seed)
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"].to(model.device)
    if ids.shape[1] == 0:
        ids = torch.tensor([[tokenizer.bos_token_id or tokenizer.eos_token_id]], device=model.device)
    with torch.no_grad():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=True,
            top_k=40,
            temperature=0.8,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    return tokenizer.decode(out[0], skip_special_tokens=True)


def build_trainer(config: RunConfig, *, echo: Any = print, for_training: bool = True) -> tuple[Any, Any, Any]:
    """Everything a run needs, up to a ready `Trainer`: data, tokenizer, model (+ PEFT).

    With `for_training=False` (the LR finder) the output directory is neither checked nor cleared:
    nothing of an existing run is touched.

    Returns:
        `(trainer, tokenizer, data)` where `data` is the `TrainingData` the trainer was given.
    """
    from . import checkpoint as ckpt
    from .callbacks import EarlyStoppingCallback
    from .data import check_padding_free_model, prepare_data, raw_texts
    from .data.loader import load_raw
    from .trainer import Trainer

    args = config.training
    apply_malloc_policy(args.cpu_malloc, cli=True)  # before data and weights: 'auto' is 'speed' here
    out = Path(args.output_dir)
    if for_training:
        ckpt.check_output_dir(out, resuming=bool(args.resume_from_checkpoint), overwrite=args.overwrite_output_dir)
    check_engines(args)  # before any data or weights load
    check_trackers(args)
    if config.model.load_in_4bit or config.model.load_in_8bit:
        from .models.loading import check_quantization_available

        # before any data or tokenizer is loaded: one line, not a stack trace from deep inside
        check_quantization_available("model.load_in_8bit" if config.model.load_in_8bit else "model.load_in_4bit")
    # Under a launcher the process that saves (rank 0; with save_on_each_node, machines sharing no disk,
    # each machine's first) reads the data (downloads, caches) and trains or loads the tokenizer first;
    # the others then find both on disk.
    with args.main_process_first(local=args.save_on_each_node, desc="data and tokenizer"):
        raw = load_raw(config.data, args.seed)
        tokenizer, unsaved = obtain_tokenizer(config, raw_texts(raw[0], config.data), reuse_saved=not args.should_save)
        if unsaved is not None and (not for_training or args.world_size > 1):
            tokenizer.save_pretrained(str(unsaved))  # the other processes load it from there
            unsaved = None
    if config.data.training_mode == "instruction":
        _setup_chat_template(config, tokenizer)
    model = build_model(config, tokenizer)
    with args.main_process_first(local=args.save_on_each_node, desc="tokenization"):
        data = prepare_data(config.data, tokenizer, raw=raw, seed=args.seed)
    if data.eval is None and args.eval_strategy != "no":
        raise ConfigError(
            f"training.eval_strategy='{args.eval_strategy}' but there is no held-out data; "
            "set data.validation_split_percentage > 0 (or data.eval_split) or eval_strategy: no"
        )
    n_params = sum(p.numel() for p in model.parameters())
    echo(f"model: {n_params / 1e6:.2f}M parameters | data: {data.summary()}")
    callbacks: list[Any] = [EarlyStoppingCallback(*config.early_stopping)] if config.early_stopping else []
    if for_training:
        # a mixture's config.yaml also says what it drew from each source, under the entries that asked
        built = f"# data as built: {data.summary()}\n" if config.data.sources else ""
        callbacks.append(RunFiles({"config.yaml": config.to_yaml() + built}, [(tokenizer, unsaved)]))
    if config.model.generate_every_eval is not None:
        from .samples import SampleCallback, run_prompts

        callbacks.append(SampleCallback(run_prompts(config, data.eval), config.model.sample_max_new_tokens))
    trainer = Trainer(
        model=model,
        args=args,
        data_collator=data.collator,
        train_dataset=data.train,
        eval_dataset=data.eval,
        processing_class=tokenizer,
        peft_config=config.peft,
        callbacks=callbacks or None,
    )
    if data.padding_free:
        check_padding_free_model(trainer.model)  # documents must not attend to each other
    return trainer, tokenizer, data


class RunFiles(TrainerCallback):
    """Writes what a command-line run keeps beside its checkpoints (its resolved run file, the
    tokenizer it trained) when training begins: after every check, the output directory's clearing
    and the checkpoint's load, so a start that fails leaves the directory as it was.

    Args:
        texts: File name (in output_dir) -> its text, e.g. {"config.yaml": config.to_yaml()}.
        unsaved: (tokenizer, directory) of each tokenizer this run trained (`obtain_tokenizer`); none
            for a loaded one, or one already written.
    """

    def __init__(self, texts: Mapping[str, str], unsaved: Sequence[tuple[Any, Path | None]] = ()) -> None:
        self.texts, self.unsaved = dict(texts), [(tok, path) for tok, path in unsaved if path is not None]

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not args.should_save:
            return
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        for name, text in self.texts.items():
            (out / name).write_text(text, encoding="utf-8")
        for tokenizer, path in self.unsaved:
            tokenizer.save_pretrained(str(path))
        self.unsaved = []


def _setup_chat_template(config: RunConfig, tokenizer: Any) -> None:
    """The tokenizer carries the run's chat template and its special tokens (`setup_chat_template`),
    so `final/` and every checkpoint render conversations as training did."""
    from .data import setup_chat_template

    added = setup_chat_template(tokenizer, config.data.chat_template)
    peft = config.peft or {}
    if added and peft and not {"modules_to_save", "trainable_token_indices"} & set(peft):
        raise ConfigError(
            f"data.chat_template {config.data.chat_template!r} needs the tokens {', '.join(added)}, which the "
            "tokenizer lacks, and under peft their new embeddings would stay untrained; set "
            "peft.modules_to_save: [embed_tokens, lm_head], use a template the tokenizer has (unset: its own), "
            "or train without peft"
        )


def end_run(trainer: Any) -> None:
    """`accelerator.end_training()` with the trackers finished once: every row of the run sent, the
    trackers closed, a distributed run's process group left cleanly."""
    finish_trackers(trainer.accelerator)
    trainer.accelerator.state.destroy_process_group()


def run_training(config: RunConfig, *, echo: Any = print) -> RunResult:
    """Run `config` start to finish; see the module docstring.

    Raises:
        TrainformersError: any problem with the configuration, the data or the output directory;
            nothing in an existing run directory is changed before these checks pass.
    """
    args = config.training
    out = Path(args.output_dir)
    start = time.perf_counter()
    trainer, tokenizer, data = build_trainer(config, echo=echo)
    trainer.tracker_sections = config.to_dict()  # every section's settings go to the trackers
    report, args.report_at_end = args.report_at_end, False  # written once, below, with eval_perplexity
    try:
        result = trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    finally:
        args.report_at_end = report
    # train() released its lock: hold one again (this process only) while final/ and the report are written
    lock = RunLock(out, enabled=args.should_save)
    lock.acquire()
    try:
        return _finish_run(config, trainer, tokenizer, data, result, start)
    finally:
        lock.release()


def _finish_run(config: RunConfig, trainer: Any, tokenizer: Any, data: Any, result: Any, start: float) -> RunResult:
    """After training: the final evaluation and perplexity, final/, the report, the sample."""
    from .report import report_at_end

    args = config.training
    out = Path(args.output_dir)
    eval_loss = perplexity = None
    if data.eval is not None:
        done = (
            []
            if args.load_best_model_at_end
            else [r for r in trainer.state.log_history if "eval_loss" in r and r["step"] == trainer.state.global_step]
        )
        # no eval_loss: the held-out set gave no batch (fewer rows per process than a batch, drop_last)
        eval_loss = done[-1]["eval_loss"] if done else trainer.evaluate().get("eval_loss")
    if eval_loss is not None:
        perplexity = math.exp(min(eval_loss, 50.0))
        trainer.log({"eval_perplexity": perplexity})
    from .checkpoint import atomic_checkpoint, cast_saved_weights

    # written like a checkpoint (under final.tmp, renamed when whole): a crash or a full disk never
    # leaves a final/ with its config and no weights
    with atomic_checkpoint(
        out / "final", is_main=args.should_save, barrier=trainer.accelerator.wait_for_everyone
    ) as tmp:
        trainer.save_model(str(tmp))  # on every rank: a sharded model is gathered from all of them
        if config.model.save_dtype is not None and args.should_save:
            cast_saved_weights(tmp, getattr(torch, config.model.save_dtype))
    if trainer.is_world_process_zero():
        report_at_end(trainer)  # report.png + report.md, unless report_at_end is off
    sample = None
    if config.model.sample_prompt and config.model.sample_max_new_tokens:
        # on every rank too: under FSDP each forward gathers the shards (the CLI prints rank 0's)
        model = trainer.accelerator.unwrap_model(trainer.model)
        sample = generate_sample(
            model, tokenizer, config.model.sample_prompt, config.model.sample_max_new_tokens, args.seed
        )
    # The others wait for rank 0's report here. Tearing gloo down right after an all-reduce can also
    # deadlock: its destructor holds the GIL joining a worker thread that needs the GIL to free that
    # all-reduce's tensors (pytorch/pytorch#56297; seen on torch 2.13, 2 CPU processes).
    trainer.accelerator.wait_for_everyone()
    end_run(trainer)
    return RunResult(
        out,
        time.perf_counter() - start,
        result.global_step,
        result.training_loss,
        eval_loss,
        perplexity,
        sample,
        throughput_line(result.metrics, trainer.peak_flops()),
    )


def throughput_line(metrics: dict[str, float], peak: Any) -> str | None:
    """'18,073 tokens/s, 0.123 TFLOP/s, MFU 0.62 of ...' from train() metrics; None without them."""
    if "train_tflops" not in metrics:
        return None
    line = f"{metrics['train_tokens_per_second']:,.0f} tokens/s, {metrics['train_tflops']:.3g} TFLOP/s model FLOPs"
    if "train_mfu" in metrics and peak is not None:
        line += f", MFU {metrics['train_mfu']:.2f} of the {peak.describe()}"
    if "train_peak_memory_mb" in metrics:
        line += f"; peak memory {memory_text(metrics['train_peak_memory_mb'])}"
    return line


def run_search_from_config(
    config_path: str | Path | None, overrides: Sequence[str] = (), n_trials: int = 20, *, echo: Any = print
) -> BestRun:
    """`trainformers search`: search the `search:` space of a run file, minimising eval_loss.

    The run file is a `trainformers train` file plus a top-level `search:` section (see
    `search_space_from_config`); without one, or without a file (the embedded default run),
    `default_hp_space` is searched. Trials go to `<training.output_dir>/trial-<N>/`; running
    the same command again resumes the study until it holds `n_trials` finished trials.

    Args:
        config_path: The YAML run file, or None for the embedded default run.
        overrides: argv-style overrides such as `["--training.max_steps", "100"]`.
        n_trials: Finished trials the study should hold in total.
        echo: Where progress lines and the table of trials go.

    Returns:
        The best run.

    Raises:
        ConfigError: a bad run file, search section, override or n_trials, optuna missing, or
            no held-out data to evaluate on.
        TrainformersError: any problem with the data, or no trial completed.
    """
    from .config import load_config, read_yaml

    import_optuna(None)
    if not isinstance(n_trials, int) or isinstance(n_trials, bool) or n_trials < 1:
        raise ConfigError(f"--n-trials={n_trials!r} must be a positive integer")
    section, base = None, DEFAULT_RUN
    if config_path is not None:
        raw = read_yaml(config_path)
        if not isinstance(raw, Mapping):
            raise ConfigError(f"'{config_path}' must be a mapping of sections (model, data, training, peft, search)")
        base = {k: v for k, v in raw.items() if k != "search"}
        section = raw.get("search")
    hp_space = search_space_from_config(section) if section is not None else None  # checked before any data is read
    try:
        config: RunConfig = load_config(None, overrides, base=base)
    except ConfigError as e:  # the file was passed as `base`: name it in the message
        where = f"'{config_path}'" if config_path is not None else "the embedded default run"
        raise ConfigError(str(e).replace("the base config", where)) from None
    data = config.data
    if data.validation_split_percentage == 0 and data.eval_split is None and data.num_eval_samples is None:
        raise ConfigError(
            "search needs held-out data for its objective; set data.validation_split_percentage > 0 or data.eval_split"
        )
    trainer, tokenizer, _ = build_trainer(config, echo=echo, for_training=False)  # trial dirs are checked one by one

    def model_init() -> Any:
        # the trial's arguments are trainer.args while it runs: its seed sets the initial weights
        return build_model(dataclasses.replace(config, training=trainer.args), tokenizer)

    trainer.model_init = model_init
    out = Path(config.training.output_dir)
    if trainer.is_world_process_zero():
        out.mkdir(parents=True, exist_ok=True)
        config.save(out / "config.yaml")
        if section is not None:  # the saved file reruns (resumes) this very search
            with (out / "config.yaml").open("a", encoding="utf-8") as f:
                f.write(yaml.safe_dump({"search": dict(section)}, sort_keys=False))
    best = trainer.hyperparameter_search(hp_space=hp_space, n_trials=n_trials, direction="minimize")
    summary_path = out / SUMMARY_FILE
    if trainer.is_world_process_zero() and summary_path.is_file():
        echo(format_trials_table(json.loads(summary_path.read_text(encoding="utf-8"))))
    end_run(trainer)
    return best
