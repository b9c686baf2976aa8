"""The `trainformers` command line: parse, build, call; errors as one line and exit status 2.

trainformers train [CONFIG.yaml] [--section.key VALUE ...]   # no CONFIG: the embedded default
trainformers train CONFIG.yaml --num-processes N              # relaunched through `accelerate launch`
trainformers report RUN_DIR [RUN_DIR ...] [--out DIR]         # report.png + report.md; several: compare.*
trainformers tokenizer train --vocab-size N --out DIR [--data SOURCE ...]   # a BPE tokenizer
trainformers generate CHECKPOINT "prompt" [--greedy | --temperature T ...]  # stream a continuation
trainformers export RUN_OR_CHECKPOINT [--out DIR] [--merge [--base MODEL]]   # model files, or adapter merged
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

EXIT_USAGE = 2
# `trainformers train` options that start it through `accelerate launch` (accelerate's names, dashed)
LAUNCH_OPTIONS = ("--num-processes", "--num-machines", "--machine-rank", "--main-process-ip", "--main-process-port")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trainformers", description="Train transformer models.")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser(
        "train",
        help="train from a YAML run file (none: the embedded default run)",
        description="Train from CONFIG (YAML with sections model, data, training). Any field can be "
        "overridden as --section.key VALUE (e.g. --training.learning_rate 3e-4). Without CONFIG, the "
        "embedded default run trains a small LM on Python's own documentation.",
    )
    train.add_argument("config", nargs="?", help="YAML run file")
    _add_launch_options(train)
    lr_find = sub.add_parser(
        "lr-find",
        help="LR range test on a run file's model and data: suggests a learning rate, writes lr_find.png",
        description="Run the learning-rate range test for CONFIG (same file and --section.key overrides as "
        "train); the model and optimizer are left untouched and nothing is trained.",
    )
    lr_find.add_argument("config", nargs="?", help="YAML run file")
    cycle = sub.add_parser(
        "cycle",
        help="cycle-consistency training from a YAML run file (none: the embedded number-words demo)",
        description="Cycle-train two models (or two LoRA adapters) on unpaired data from CONFIG (sections "
        "model_A, model_B, data, training, peft; overrides as --section.key VALUE). Without CONFIG, run the "
        "embedded demo (number words <-> digits): supervised warm-up on a tiny paired set, then cycle "
        "training on unpaired sets, printing held-out exact match before and after (--demo.key VALUE "
        "overrides its settings, e.g. --demo.seed 1).",
    )
    cycle.add_argument("config", nargs="?", help="YAML run file")
    search = sub.add_parser(
        "search",
        help="hyperparameter search (optuna) over a run file's `search:` section; resumes its study",
        description="Search hyperparameters for CONFIG (a train run file plus a `search:` section, e.g. "
        "learning_rate: {type: loguniform, low: 1e-5, high: 1e-3}); trials go to OUTPUT_DIR/trial-N, the study "
        "to OUTPUT_DIR/optuna_study.db (running again resumes it). Overrides as for train.",
    )
    search.add_argument("config", nargs="?", help="YAML run file with a search: section")
    search.add_argument("--n-trials", type=_number(int, 1), default=20, help="trials in total (default 20)")
    report = sub.add_parser(
        "report",
        help="write RUN_DIR/report.png + report.md and print a summary; several runs: overlaid curves in "
        "compare.png/compare.md (in --out, default the first RUN_DIR)",
    )
    report.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    report.add_argument("--out", default=None, help="directory for the report files (default: the first RUN_DIR)")
    report.add_argument("--labels", nargs="+", default=None, help="one name per run for legends and tables")
    _add_tokenizer_parser(sub)
    _add_generate_parser(sub)
    _add_export_parser(sub)
    return parser


def _add_launch_options(train: Any) -> None:
    """LAUNCH_OPTIONS in `train --help`; `main` takes them out of the tokens itself (`_take_options`)."""
    launch = train.add_argument_group(
        "multi-process (docs/distributed.md)",
        "Start the run through `accelerate launch` (DDP; training.fsdp/deepspeed when set). Rank 0 alone prints "
        "and writes; the others wait for it where it writes the tokenizer.",
    )
    launch.add_argument(
        "--num-processes",
        metavar="N",
        help="processes on all machines together, e.g. one per GPU (a run file's training.num_gpus says the same)",
    )
    launch.add_argument("--num-machines", metavar="N", help="machines taking part (default: 1)")
    launch.add_argument("--machine-rank", metavar="R", help="this machine's rank, 0 to N-1 (default: 0)")
    launch.add_argument("--main-process-ip", metavar="IP", help="address of the machine of rank 0 (several machines)")
    launch.add_argument(
        "--main-process-port",
        metavar="P",
        help="port on that machine (default: a free port on one machine, 29500 on several)",
    )


def _number(kind: type, low: float, high: float | None = None, low_open: bool = False) -> Any:
    """An argparse `type` accepting `kind` values in [low, high] ((low, high] when `low_open`)."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a{'n integer' if kind is int else ' number'}") from None
        if value < low or (low_open and value == low) or (high is not None and value > high):
            bounds = f"{'(' if low_open else '['}{low}, {high}]" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"{text} must be {'in ' if high is not None else ''}{bounds}")
        return value

    return parse


def _add_tokenizer_parser(sub: Any) -> None:
    tokenizer = sub.add_parser("tokenizer", help="train a byte-level BPE tokenizer on any data source")
    actions = tokenizer.add_subparsers(dest="tokenizer_command", required=True)
    train = actions.add_parser(
        "train",
        help="train and save a tokenizer (loadable with AutoTokenizer.from_pretrained)",
        description="Train a byte-level BPE tokenizer on the rows `trainformers train` would train its own on "
        "(the training split of --data: held-out rows excluded) and save it to --out. Use it in a run with "
        "--model.tokenizer DIR.",
    )
    train.add_argument(
        "--data",
        metavar="SOURCE",
        help="anything data.source accepts: a local file (json, jsonl, "
        "csv, parquet, txt), a glob, a save_to_disk directory or a Hub dataset; omitted: the embedded corpus",
    )
    train.add_argument(
        "--vocab-size",
        type=int,
        required=True,
        metavar="N",
        help="largest vocabulary size, bytes and special tokens included (at least 259; 263 with --chat-tokens)",
    )
    train.add_argument("--out", required=True, metavar="DIR", help="directory to save the tokenizer in")
    train.add_argument("--subset", help="Hub dataset configuration name (e.g. wikitext-2-raw-v1)")
    train.add_argument(
        "--text-field",
        action="append",
        metavar="F",
        help="column holding the text (default: text); repeat it to join several columns",
    )
    train.add_argument(
        "--training-mode",
        default="pretraining",
        metavar="MODE",
        help="pretraining (text rows, the default) or instruction (chat rows: their messages' contents)",
    )
    train.add_argument(
        "--format",
        default="auto",
        metavar="F",
        help="instruction row format: auto, messages, conversations, prompt_response or alpaca",
    )
    train.add_argument("--num-samples", type=_number(int, 1), metavar="N", help="use only the first N rows")
    train.add_argument(
        "--chat-tokens",
        action="store_true",
        help="add <|system|> <|user|> <|assistant|> <|end|> as special tokens, and a chat template using them",
    )
    train.add_argument(
        "--min-frequency",
        type=_number(int, 1),
        default=2,
        metavar="N",
        help="a pair must occur at least N times to be merged (default: 2)",
    )
    train.add_argument("--overwrite", action="store_true", help="replace the tokenizer files in a non-empty --out")


def _add_generate_parser(sub: Any) -> None:
    generate = sub.add_parser(
        "generate",
        help="stream a continuation of a prompt from a saved model",
        description="Load a causal LM saved with save_pretrained (a run directory uses its final/; a checkpoint-N "
        "directory works too), print the prompt and stream the continuation. Samples unless --greedy or "
        "--temperature 0. Stops at --max-new-tokens, EOS, or <|end|> when the tokenizer has it.",
    )
    generate.add_argument("checkpoint", help="model directory: RUN_DIR, RUN_DIR/final or RUN_DIR/checkpoint-N")
    generate.add_argument("prompt", help="text to continue (with --chat: the user message)")
    generate.add_argument("--max-new-tokens", type=_number(int, 1), default=50, metavar="N", help="default: 50")
    generate.add_argument(
        "--temperature",
        type=_number(float, 0),
        default=1.0,
        metavar="T",
        help="sampling temperature; 0 is greedy (default: 1.0)",
    )
    generate.add_argument(
        "--top-p",
        type=_number(float, 0, 1, low_open=True),
        default=1.0,
        metavar="P",
        help="nucleus sampling: keep the smallest set of tokens with probability >= P (default: 1.0, off)",
    )
    generate.add_argument(
        "--top-k",
        type=_number(int, 0),
        default=0,
        metavar="K",
        help="sample among the K most likely tokens (default: 0, off)",
    )
    generate.add_argument("--greedy", action="store_true", help="always take the most likely token (deterministic)")
    generate.add_argument("--seed", type=int, default=0, help="seed for sampling (default: 0)")
    generate.add_argument(
        "--chat",
        action="store_true",
        help="send the prompt as a user message through the "
        "tokenizer's chat template (or the default one) and stream the assistant's answer",
    )


def _add_export_parser(sub: Any) -> None:
    export = sub.add_parser(
        "export",
        help="copy a run's final model (or a checkpoint's) without training state, or merge its LoRA adapter",
        description="Copy the model files and tokenizer of RUN_DIR/final (or of the given checkpoint-N or model "
        "directory) to --out, leaving out optimizer, scheduler, RNG and trainer state. With --merge, a PEFT adapter "
        "is folded into its base model (the one named in adapter_config.json, or --base) and saved as a full model "
        "that loads with AutoModelForCausalLM.from_pretrained.",
    )
    export.add_argument("run_or_checkpoint", help="RUN_DIR, RUN_DIR/final or RUN_DIR/checkpoint-N")
    export.add_argument("--out", metavar="DIR", help="an empty or new directory (default: RUN_DIR/export)")
    export.add_argument("--merge", action="store_true", help="merge a PEFT adapter into its base model")
    export.add_argument(
        "--base",
        metavar="MODEL",
        help="with --merge: the base model's directory or Hub name, instead of the one adapter_config.json names",
    )


def _take_options(tokens: Sequence[str], names: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """Pull `--name VALUE` and `--name=VALUE` for each of `names` out of `tokens`; the rest keep their order.

    Raises:
        ConfigError: one of `names` without a value.
    """
    from .errors import ConfigError

    found: dict[str, str] = {}
    kept: list[str] = []
    rest = list(tokens)
    while rest:
        token = rest.pop(0)
        name, eq, value = token.partition("=")
        if name not in names:
            kept.append(token)
            continue
        if not eq:
            if not rest:
                raise ConfigError(f"{name} needs a value")
            value = rest.pop(0)
        found[name] = value
    return found, kept


def _int_option(options: dict[str, str], name: str, low: int, high: int | None = None) -> int | None:
    """The integer value of option `name` in [low, high] (None when not given), or a one-line error."""
    from .errors import ConfigError

    if name not in options:
        return None
    text = options[name]
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < low or (high is not None and value > high):
        what = "a positive integer" if low == 1 and high is None else f"an integer in [{low}, {high}]"
        raise ConfigError(f"{name} must be {what}, got {text!r}")
    return value


def _processes(config: Any, options: dict[str, str]) -> int | None:
    """The processes asked for: --num-processes or the run file's training.num_gpus (None: not said)."""
    from .errors import ConfigError

    flag, file = _int_option(options, "--num-processes", 1), config.num_processes
    if flag is not None and file is not None and flag != file:
        raise ConfigError(f"Can't set both training.num_gpus={file} and --num-processes {flag}; drop one")
    return flag if flag is not None else file


def _launch_command(
    config_path: str | None, overrides: Sequence[str], processes: int, options: dict[str, str]
) -> list[str]:
    """The `accelerate launch` command that runs this `trainformers train` on `processes` processes.

    Raises:
        ConfigError: a malformed launch option, or one that needs another.
    """
    from .errors import ConfigError

    machines = _int_option(options, "--num-machines", 1) or 1
    given = [name for name in ("--machine-rank", "--main-process-ip") if name in options]
    if machines == 1 and given:
        raise ConfigError(f"{given[0]} is for several machines; add --num-machines N")
    if processes % machines:
        raise ConfigError(
            f"--num-processes {processes} (on all machines) must be a multiple of --num-machines {machines}"
        )
    rank = _int_option(options, "--machine-rank", 0, machines - 1)
    port = _int_option(options, "--main-process-port", 0, 65535)
    ip = options.get("--main-process-ip")
    if machines > 1 and not ip:
        raise ConfigError(f"--num-machines {machines} needs --main-process-ip (the address of the machine of rank 0)")
    # --multi_gpu is accelerate's multi-process launcher (torchrun) with or without GPUs: on a machine
    # without CUDA each process joins a gloo group on the CPU (its --cpu would need mpirun instead), as
    # tests/conftest.py launches. Mixed precision and compilation are the run file's to decide, so
    # accelerate is told "no" for both: an accelerate config file must not switch them on unseen.
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes)]
    command += ["--num_machines", str(machines), "--mixed_precision", "no", "--dynamo_backend", "no"]
    if machines > 1:
        command += ["--machine_rank", str(rank or 0), "--main_process_ip", str(ip)]
    if port is None and machines == 1:
        port = 0  # a free port: two runs can share a machine
    if port is not None:
        command += ["--main_process_port", str(port)]
    return [*command, "-m", "trainformers", "train", *([config_path] if config_path else []), *overrides]


def _quiet_replica() -> None:
    """On a process other than rank 0: no Python warnings, progress bars or library info (rank 0 shows them).

    transformers' own verbosity is `training.log_level_replica` once the Trainer is built, as in transformers.
    """
    import warnings

    import datasets
    import huggingface_hub.utils
    from transformers.utils import logging as hf_logging

    warnings.simplefilter("ignore")
    hf_logging.set_verbosity_error()
    datasets.utils.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    huggingface_hub.utils.disable_progress_bars()


def _launch_if_asked(
    config: Any, config_path: str | None, overrides: Sequence[str], options: dict[str, str]
) -> int | None:
    """Relaunch this run through `accelerate launch` when it asks for several processes; its exit status.

    None: run here. Under a launcher already, the processes asked for must be the ones started, and
    `config.num_processes` becomes their number (the echo and config.yaml say it).
    """
    import subprocess

    from . import checkpoint as ckpt
    from .accel import check_engines
    from .errors import ConfigError

    processes = _processes(config, options)
    launch_only = [name for name in options if name != "--num-processes"]
    if "WORLD_SIZE" in os.environ:  # torchrun's, as accelerate launch sets it
        world = int(os.environ["WORLD_SIZE"])
        if processes is not None and processes != world:
            raise ConfigError(
                f"the run asks for {processes} processes but was launched on {world}; launch it on {processes}"
            )
        if launch_only:
            raise ConfigError(
                f"{launch_only[0]} is for starting a run; this one was started by a launcher, give it to that"
            )
        if world > 1:
            config.num_processes = world
        return None
    engine = bool(config.training.fsdp or config.training.deepspeed)  # these need a launcher, one process too
    if processes is None or (processes == 1 and not engine):
        if launch_only:
            raise ConfigError(f"{launch_only[0]} is for several processes; add --num-processes N")
        return None
    command = _launch_command(config_path, overrides, processes, options)
    args = config.training  # refused here in one line, before the processes start reading data
    check_engines(args, launched=False)
    ckpt.check_output_dir(
        args.output_dir, resuming=bool(args.resume_from_checkpoint), overwrite=args.overwrite_output_dir
    )
    return subprocess.run(command, check=False).returncode


def _header(config: Any, config_path: str | None, verbose: bool) -> str:
    """What a run prints first: the settings not at their defaults (all of them with `--verbose`)."""
    from .config import SECTIONS
    from .report import settings_changed

    where = Path(config.training.output_dir) / "config.yaml"
    source = config_path or "the embedded default run"
    mapped = "".join(f"# mapped {line}\n" for line in config.mapped)  # seed-layout keys, one line each
    if verbose:
        return f"{mapped}# resolved configuration of {source} (saved as {where})\n{config.to_yaml()}"
    changed = settings_changed(config.to_dict(), SECTIONS)
    lines = [
        f"# resolved configuration of {source}: {len(changed)} settings not at their defaults "
        f"(all of them: {where}, or --verbose)"
    ]
    if config.num_processes is not None:
        lines.append(config.to_yaml().splitlines()[0])  # "# on N processes: ..."
    width = max((len(key) for key, _, _ in changed), default=0)
    lines += [f"{key:<{width}}  {value!r}" for key, value, _ in changed]
    return mapped + "\n".join(lines) + "\n"


def _train(
    config_path: str | None, overrides: Sequence[str], options: dict[str, str] | None = None, verbose: bool = False
) -> int:
    """`trainformers train`: here, or on several processes through `accelerate launch` (LAUNCH_OPTIONS)."""
    from .config import load_config
    from .run import DEFAULT_RUN, run_training

    config = load_config(config_path, overrides, base=DEFAULT_RUN if config_path is None else None)
    relaunched = [*overrides, *(["--verbose"] if verbose else [])]  # the launched processes print it the same way
    status = _launch_if_asked(config, config_path, relaunched, options or {})
    if status is not None:
        return status
    main = config.training.process_index == 0

    def echo(*values: Any, **kwargs: Any) -> None:
        if main:  # rank 0 alone prints; the others would repeat it line for line
            print(*values, **kwargs)

    echo(_header(config, config_path, verbose), end="")
    result = run_training(config, echo=echo)
    if result.sample is not None:
        echo(f"\nsample: {result.sample!r}")
    ppl = f"held-out perplexity {result.perplexity:.2f} (loss {result.eval_loss:.4f}) | " if result.perplexity else ""
    if result.throughput:
        echo(f"training speed: {result.throughput}")
    echo(
        f"done in {result.runtime:.1f}s: {result.global_step} steps | {ppl}"
        f"model in {result.output_dir / 'final'} | plot in {result.output_dir / 'report.png'}"
    )
    return 0


def _cycle(config_path: str | None, overrides: Sequence[str]) -> int:
    """`trainformers cycle`: a cycle run file, or the embedded demo with no CONFIG."""
    from .config import parse_overrides
    from .errors import ConfigError

    if config_path is None:
        import dataclasses

        from .cycle.demo import DemoRunConfig, run_demo

        parsed = parse_overrides(overrides)
        unknown = [f"--{section}.{key}" for section, values in parsed.items() if section != "demo" for key in values]
        if unknown:
            raise ConfigError(
                f"without CONFIG only --demo.KEY overrides apply, got {unknown[0]}; give a run file for the others"
            )
        fields = {f.name for f in dataclasses.fields(DemoRunConfig)}
        values = parsed.get("demo", {})
        bad = sorted(set(values) - fields)
        if bad:
            from .errors import did_you_mean

            raise ConfigError(
                f"unknown demo setting '{bad[0]}'{did_you_mean(bad[0], sorted(fields))}; settings are {', '.join(sorted(fields))}"
            )
        run_demo(DemoRunConfig(**values), echo=print)
        return 0
    from .cycle.run import load_cycle_config, run_cycle

    config = load_cycle_config(config_path, list(overrides))
    print("# resolved cycle configuration")
    print(config.to_yaml(), end="")
    result = run_cycle(config)
    shown = {
        k: round(v, 4) if isinstance(v, float) else v
        for k, v in result["metrics"].items()
        if not k.endswith(("_runtime", "_per_second"))
    }
    from .results import memory_text

    train = result["train"]
    peak = f"; peak memory {memory_text(train['train_peak_memory_mb'])}" if "train_peak_memory_mb" in train else ""
    print(f"\ndone in {result['runtime']:.1f}s: {train.get('train_steps_per_second')} steps/s{peak} | {shown}")
    print(f"models in {result['output_dir'] / 'final'} (A/ and B/)")
    return 0


def _lr_find(config_path: str | None, overrides: Sequence[str]) -> int:
    """The LR range test on a run file's model and data; prints the suggestion, writes the plot."""
    from .config import load_config
    from .lr_finder import find_lr
    from .run import DEFAULT_RUN, build_trainer

    config = load_config(config_path, overrides, base=DEFAULT_RUN if config_path is None else None)
    if config.training.learning_rate == "auto":
        config.training.learning_rate = 1.0  # the range test scales it; any number works
    trainer, _, _ = build_trainer(config, for_training=False)
    plot = Path(config.training.output_dir) / "lr_find.png"
    plot.parent.mkdir(parents=True, exist_ok=True)
    result = find_lr(trainer, plot_path=plot)
    steepest = f"{result.steepest:.3g}" if result.steepest is not None else "n/a"
    print(
        f"suggested learning_rate: {result.suggestion:.3g} (steepest descent {steepest}, minimum/10 "
        f"{result.min_div_10:.3g}; {len(result.lrs)} steps{', diverged' if result.diverged else ''}) | plot: {plot}"
    )
    return 0


def _report(run_dirs: list[str], out: str | None = None, labels: list[str] | None = None) -> int:
    from .report import summarize_run, write_report

    png, md = write_report(run_dirs[0] if len(run_dirs) == 1 else run_dirs, out, labels)
    summaries = {d: summarize_run(d) for d in run_dirs}
    print(json.dumps(summaries[run_dirs[0]] if len(run_dirs) == 1 else summaries, indent=2, default=str))
    print(f"plot: {png}\nreport: {md}")
    return 0


def _tokenizer_train(args: argparse.Namespace) -> int:
    import dataclasses

    from .config import DataSection
    from .data.loader import load_raw, raw_texts
    from .data.tokenizer import check_vocab_size, train_tokenizer_from_data
    from .errors import CheckpointError, ConfigError

    check_vocab_size(args.vocab_size, chat_tokens=args.chat_tokens, name="--vocab-size")
    if args.training_mode == "pretraining" and args.format != "auto":
        raise ConfigError(f"--format {args.format} describes instruction rows; add --training-mode instruction")
    if args.format == "template":
        raise ConfigError(
            "--format template needs data.template and data.response_field, which this command "
            "does not take; use train_tokenizer_from_data from Python"
        )
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"--out {args.out!r} is a file; give a directory")
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise CheckpointError(
            f"--out {args.out!r} is not empty; pass --overwrite to replace its tokenizer files "
            "or choose another directory"
        )
    text_field = args.text_field[0] if args.text_field and len(args.text_field) == 1 else args.text_field or "text"
    data = DataSection(
        source=args.data,
        subset=args.subset,
        text_field=text_field,
        training_mode=args.training_mode,
        format=args.format,
        num_samples=args.num_samples,
    )
    start = time.perf_counter()
    tokenizer = train_tokenizer_from_data(
        data, args.vocab_size, out, chat_tokens=args.chat_tokens, min_frequency=args.min_frequency
    )
    specials = ", ".join(tokenizer.all_special_tokens)
    print(
        f"vocab size: {len(tokenizer)} (asked {args.vocab_size}; special tokens {specials}) "
        f"in {time.perf_counter() - start:.1f}s"
    )
    first = dataclasses.replace(data, num_samples=1, validation_split_percentage=0)
    sample = next(raw_texts(load_raw(first)[0], first), None) or "Hello, world!"
    ids = tokenizer(sample, add_special_tokens=False)["input_ids"]
    ok = tokenizer.decode(ids) == sample
    shown = sample[:60].replace("\n", " ") + ("..." if len(sample) > 60 else "")
    print(
        f"round trip: {'ok' if ok else 'FAILED'} on the first row ({len(sample)} chars -> {len(ids)} tokens, "
        f"{len(sample) / max(len(ids), 1):.2f} chars/token): {shown!r}"
    )
    print(f"saved to {out} (AutoTokenizer.from_pretrained({str(out)!r}); in a run: --model.tokenizer {out})")
    return 0 if ok else 1


def _model_dir(checkpoint: str, markers: Sequence[str] = ("config.json",)) -> Path:
    """The directory holding the model (one of `markers`): CHECKPOINT itself, or a run directory's final/."""
    from .errors import CheckpointError

    def holds(folder: Path) -> bool:
        return any((folder / name).is_file() for name in markers)

    path = Path(checkpoint)
    if not path.is_dir():
        raise CheckpointError(
            f"checkpoint {checkpoint!r} is not a directory; pass a model directory such as "
            "RUN_DIR/final or RUN_DIR/checkpoint-N"
        )
    if not holds(path) and holds(path / "final"):
        return path / "final"
    if not holds(path):
        saved = sorted(p.name for p in path.glob("checkpoint-*") if holds(p))
        hint = f"; it holds {', '.join(saved)}" if saved else ""
        raise CheckpointError(
            f"no model in {checkpoint!r} (no {' or '.join(markers)}, nor final/"
            f"{' or final/'.join(markers)}){hint}; pass a directory written by save_pretrained"
        )
    return path


def _load_for_generation(path: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .checkpoint import quiet_hf_progress
    from .errors import CheckpointError

    try:
        import trainformers.models  # noqa: F401  registers DecoderLM with the Auto classes
    except ImportError:
        pass
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"no usable tokenizer in {str(path)!r} ({first_line}); save one there with tokenizer.save_pretrained"
        ) from None
    try:
        with quiet_hf_progress():  # a weight-loading bar for a local model is noise here
            model = AutoModelForCausalLM.from_pretrained(path)
    except (OSError, ValueError, KeyError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"cannot load a causal LM from {str(path)!r}: {first_line}") from None
    return model, tokenizer


def _generate(args: argparse.Namespace) -> int:
    import torch
    from transformers import TextStreamer

    from .data.chat import render_chat, stop_token_ids

    model, tokenizer = _load_for_generation(_model_dir(args.checkpoint))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).eval()
    if args.chat:  # the template writes any special tokens itself
        text = render_chat([{"role": "user", "content": args.prompt}], tokenizer, add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
    else:
        text = args.prompt
        ids = tokenizer(text, return_tensors="pt")["input_ids"]
    stop = stop_token_ids(model, tokenizer)
    if ids.shape[1] == 0:  # an empty prompt: start from BOS (or EOS, a document boundary)
        ids = torch.tensor([[tokenizer.bos_token_id if tokenizer.bos_token_id is not None else stop[0]]])
    greedy = args.greedy or args.temperature == 0
    sampling = {} if greedy else {"temperature": args.temperature, "top_p": args.top_p, "top_k": args.top_k}
    torch.manual_seed(args.seed)
    print(text, end="", flush=True)
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(
            ids.to(device),
            attention_mask=torch.ones_like(ids, device=device),
            max_new_tokens=args.max_new_tokens,
            do_sample=not greedy,
            eos_token_id=stop or None,
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (stop or [None])[0],
            streamer=TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True),
            **sampling,
        )
    new, seconds = out.shape[1] - ids.shape[1], time.perf_counter() - start
    print(
        f"[{new} tokens in {seconds:.2f}s, {new / max(seconds, 1e-9):.1f} tokens/s, "
        f"{'greedy' if greedy else 'sampled'}, {device}]",
        file=sys.stderr,
    )
    return 0


def _export(args: argparse.Namespace) -> int:
    import shutil

    from . import checkpoint as ckpt
    from .errors import CheckpointError
    from .models.peft import ADAPTER_CONFIG, merge_and_save

    given = Path(args.run_or_checkpoint)
    source = _model_dir(args.run_or_checkpoint, markers=("config.json", ADAPTER_CONFIG))
    out = Path(args.out) if args.out else (given if source != given else given.parent) / "export"
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"--out {str(out)!r} is a file; give a directory")
    if out.is_dir() and any(out.iterdir()):
        raise CheckpointError(f"--out {str(out)!r} is not empty; remove it or choose another --out")
    if out.resolve().is_relative_to(source.resolve()):
        raise CheckpointError(f"--out {str(out)!r} is inside the model directory {str(source)!r}; choose another --out")
    is_adapter = (source / ADAPTER_CONFIG).is_file()
    if args.base and not args.merge:
        raise CheckpointError("--base names the base model to merge into; add --merge or drop --base")
    if args.merge and not is_adapter:
        raise CheckpointError(
            f"--merge needs a PEFT adapter, but {str(source)!r} holds a full model "
            f"(no {ADAPTER_CONFIG}); export it without --merge"
        )
    start = time.perf_counter()
    if args.merge:
        merge_and_save(source, out, base_model=args.base)
        what = "merged model (adapter folded into its base)"
    else:
        state = (*ckpt.TRAINING_STATE_FILES, ckpt.ARGS_NAME)
        shutil.copytree(source, out, ignore=shutil.ignore_patterns(*state), dirs_exist_ok=True)
        what = "adapter" if is_adapter else "model"
    print(f"exported the {what} from {source} to {out} in {time.perf_counter() - start:.1f}s")
    return 0


def _config_option(config: str | None, tokens: list[str]) -> tuple[str | None, list[str]]:
    """The run file given as `--config FILE` (or `--config=FILE`, TRL's spelling) instead of in first place.

    Raises:
        ConfigError: the run file given twice, or `--config` without a value.
    """
    from .errors import ConfigError

    rest, given = [], []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token == "--config":
            if i + 1 >= len(tokens) or tokens[i + 1].startswith("--"):
                raise ConfigError("--config needs a value: the path of a run file")
            given.append(tokens[i + 1])
            i += 2
            continue
        if token.startswith("--config="):
            given.append(token.partition("=")[2])
        else:
            rest.append(token)
        i += 1
    if len(given) + (config is not None) > 1:
        raise ConfigError(
            f"the run file is given twice ({', '.join([*([config] if config else []), *given])}); keep one"
        )
    return (given[0] if given else config), rest


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `trainformers` command; returns the exit status."""
    from .errors import TrainformersError

    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv else ""
    if int(os.environ.get("RANK", "0")) > 0:
        _quiet_replica()
    try:
        if command in ("train", "lr-find", "cycle", "search") and not {"-h", "--help"} & set(argv):
            ours = LAUNCH_OPTIONS if command == "train" else ("--n-trials",) if command == "search" else ()
            options, tokens = _take_options(argv[1:], ours)
            # argparse would take an override's value for the optional CONFIG; only the first token can be it
            config = tokens[0] if tokens and not tokens[0].startswith("-") else None
            overrides = tokens[1:] if config is not None else tokens
            config, overrides = _config_option(config, overrides)
            verbose = command == "train" and "--verbose" in overrides  # the whole resolved configuration
            overrides = [token for token in overrides if not (verbose and token == "--verbose")]
        else:
            args = _parser().parse_args(argv)
            command = args.command
        if command == "train":
            return _train(config, overrides, options, verbose)
        if command == "lr-find":
            return _lr_find(config, overrides)
        if command == "cycle":
            return _cycle(config, overrides)
        if command == "search":
            from .run import run_search_from_config

            n_trials = _int_option(options, "--n-trials", 1)
            best = run_search_from_config(config, list(overrides), 20 if n_trials is None else n_trials)
            print(f"best trial {best.run_id}: objective {best.objective} with {best.hyperparameters}")
            return 0
        if command == "tokenizer":
            return _tokenizer_train(args)
        if command == "generate":
            return _generate(args)
        if command == "export":
            return _export(args)
        return _report(args.run_dirs, args.out, args.labels)
    except TrainformersError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        resume = "; resume with --training.resume_from_checkpoint true" if command == "train" else ""
        print(f"interrupted{resume}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
