"""Checkpoints: written atomically, read back without pickle, rotated without losing the best.

What a checkpoint holds is defined once, by `save_checkpoint` / `load_checkpoint`, for one model
or a pair (see `Resumable`).

A checkpoint is a directory `checkpoint-N/` written first as `checkpoint-N.tmp/` and renamed when
every file is in place, so a crash mid-save never leaves something that looks complete. Model
weights are in HF format (safetensors + config.json, or a PEFT adapter); optimizer, scheduler,
scaler and RNG states are safetensors state files (tensors, with the rest of their structure as
JSON in the header: state_files.py); the rest is JSON. Nothing is unpickled; `.pt`/`.pth` state
of older releases and of Hugging Face's Trainer is read with `torch.load(weights_only=True)`.

Resuming checks a checkpoint before it loads a byte into the live objects (`checkpoint_problem`):
`resume_from_checkpoint=True` skips a damaged or incomplete newest checkpoint for the one before.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import CheckpointError
from .model_files import (
    MODEL_SHARDS,
    SHARD_MARKER,
    safetensors_problem,
)
from .model_files import cast_saved_weights as cast_saved_weights
from .model_files import load_model_files as load_model_files
from .model_files import quiet_hf_progress as quiet_hf_progress
from .model_files import read_weights as read_weights
from .model_files import save_model_files as save_model_files
from .state import write_json
from .state_files import (
    STATE_SUFFIX,
    load_legacy_state,
    load_state_file,
    save_state_file,
    short_error,
    state_file_problem,
)

PREFIX = "checkpoint"
TMP_SUFFIX = ".tmp"
STATE_NAME = "trainer_state.json"
ARGS_NAME = "training_args.json"
# state files are safetensors with their structure as JSON (state_files.py); the .pt/.pth names of
# older releases and of Hugging Face's Trainer are still read (`load_state`)
OPTIMIZER_NAME = "optimizer.safetensors"
SCHEDULER_NAME = "scheduler.safetensors"
SCALER_NAME = "scaler.safetensors"
RNG_NAME = "rng_state_{rank}.safetensors"
OPTIMIZER_SHARDS = "optimizer_shards"  # a sharded optimizer's DCP folder (optimizer_shards_A for model "A")
DEEPSPEED_DIR = "deepspeed"  # a DeepSpeed engine's own checkpoint folder (sharded.DeepSpeedState)
DEEPSPEED_MARKER = "latest"  # written by DeepSpeed's rank 0 once every rank's files are in
LOOP_STATE_NAME = "loop_state_{rank}.json"  # the meter's unlogged sums, data positions: one per rank
# the files of a checkpoint that resume training, as opposed to the model files a user loads
TRAINING_STATE_FILES = (
    "optimizer*.safetensors",
    "optimizer*.pt",
    "optimizer_shards*",
    DEEPSPEED_DIR,
    "scheduler*.safetensors",
    "scheduler*.pt",
    SCALER_NAME,
    "scaler.pt",
    "rng_state_*.safetensors",
    "rng_state_*.pth",
    "loop_state_*.json",
    STATE_NAME,
)
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "adapter_model.safetensors",
    f"{MODEL_SHARDS}/{SHARD_MARKER}",
    f"{DEEPSPEED_DIR}/{DEEPSPEED_MARKER}",  # ZeRO-3 keeps its weights partitioned there
)
_CKPT_RE = re.compile(rf"^{PREFIX}-(\d+)$")


def is_training_state(name: str) -> bool:
    """True for a checkpoint file that only resuming needs (optimizer, scheduler, scaler, RNG, loop and trainer state)."""
    import fnmatch

    return any(fnmatch.fnmatchcase(name, pattern) for pattern in TRAINING_STATE_FILES)


def checkpoint_dir(output_dir: str | os.PathLike, step: int) -> Path:
    """The directory a checkpoint of optimizer step `step` is saved to."""
    return Path(output_dir) / f"{PREFIX}-{step}"


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under `output_dir`, oldest (lowest step) first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _CKPT_RE.match(child.name)
        if match and child.is_dir() and (child / STATE_NAME).is_file():
            found.append((int(match.group(1)), child))
    return [path for _, path in sorted(found)]


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint, or None."""
    checkpoints = list_checkpoints(output_dir)
    return checkpoints[-1] if checkpoints else None


def check_checkpoint(path: str | os.PathLike, model_dirs: tuple[str, ...] = ("",)) -> Path:
    """Return `path` if it is a complete checkpoint, else raise a one-line CheckpointError.

    `model_dirs`: the sub-directories that each hold model weights ("" the checkpoint itself;
    a `CycleTrainer` checkpoint has "A" and "B").
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"resume_from_checkpoint '{path}' does not exist; give a checkpoint-N directory or True")
    if not path.is_dir():
        raise CheckpointError(f"resume_from_checkpoint '{path}' is not a directory; give a checkpoint-N directory")
    missing = [name for name in (STATE_NAME,) if not (path / name).is_file()]
    for sub in model_dirs:
        if not any((path / sub / name).is_file() for name in WEIGHT_FILES):
            where = f" in {sub}/" if sub else ""
            missing.append(f"model weights{where} (model.safetensors or adapter_model.safetensors)")
    if missing:
        raise CheckpointError(
            f"resume_from_checkpoint '{path}' is incomplete (missing {', '.join(missing)}); "
            "pick an older checkpoint or resume_from_checkpoint=True for the newest complete one"
        )
    return path


def resolve_resume(
    value: str | bool | None,
    output_dir: str | os.PathLike,
    model_dirs: tuple[str, ...] = ("",),
    *,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    rank: int = 0,
    notice: Callable[[str], None] = print,
) -> Path | None:
    """The checkpoint `resume_from_checkpoint` names: a path, True for the newest that loads, None/False for none.

    With True, a newest checkpoint that is damaged or incomplete (`checkpoint_problem`) is skipped
    for the one before it, with a one-line `notice` saying which and why.

    Args:
        shapes: The live model's parameter shapes by name, to refuse weights of another shape.
        rank: This process's rank (rank 0 needs its own random state; see `checkpoint_problem`).

    Raises:
        CheckpointError: True and no checkpoint in `output_dir` loads, or a named one is missing or damaged.
    """
    if value is None or value is False:
        return None
    if value is not True:
        check_checkpoint(value, model_dirs)
        problem = checkpoint_problem(Path(value), model_dirs, shapes=shapes, rank=rank)
        if problem:
            raise CheckpointError(
                f"resume_from_checkpoint '{value}' can't be resumed: {problem}; name an older checkpoint, or "
                "resume_from_checkpoint=True for the newest one that loads"
            )
        return Path(value)
    skipped = []
    for path in reversed(list_checkpoints(output_dir)):
        problem = checkpoint_problem(path, model_dirs, shapes=shapes, rank=rank)
        if problem is None:
            return path
        skipped.append(path.name)
        notice(f"resume: skipped {path.name}: {problem}")
    if skipped or run_exists(output_dir):
        found = f"none of its checkpoints loads ({', '.join(skipped)})" if skipped else "no checkpoint was completed"
        raise CheckpointError(
            f"resume_from_checkpoint=True but output_dir '{output_dir}' holds a run that can't be resumed: {found}; "
            "start over with overwrite_output_dir=True, or use another output_dir"
        )
    raise CheckpointError(
        f"resume_from_checkpoint=True but output_dir '{output_dir}' has no complete checkpoint; start without "
        "resume_from_checkpoint"
    )


def resume_point(
    value: str | bool | None,
    args: Any,
    *,
    main: bool,
    model_dirs: tuple[str, ...] = ("",),
    shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> Path | None:
    """`resolve_resume` as a trainer's `train()` calls it: in `args.output_dir`, for this process's
    rank, its notices printed by the main process only."""
    return resolve_resume(
        value,
        args.output_dir,
        model_dirs,
        shapes=shapes,
        rank=args.process_index,
        notice=print if main else lambda line: None,
    )


def checkpoint_problem(
    path: Path,
    model_dirs: tuple[str, ...] = ("",),
    *,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    rank: int = 0,
) -> str | None:
    """Why checkpoint `path` can't be resumed, in a few words, or None when every file it needs is whole.

    Reads every header and checksum, not the tensors: safetensors files must be as long as their
    header says (and hold `shapes` where the names meet), torch archives must pass their CRCs,
    JSON files must parse to what the loop reads. A checkpoint written with `save_only_model` has
    no training state: it is reported by `load_checkpoint`, which names the fix.
    """
    try:
        names = {p.name for p in path.iterdir()}
    except OSError as err:
        return f"the directory is unreadable ({err.strerror or err})"
    from .state import TrainerState

    try:
        state = TrainerState.load_from_json(path / STATE_NAME)
    except ValueError as err:
        return f"{STATE_NAME} is damaged ({short_error(err)})"
    match = _CKPT_RE.match(path.name)
    if match and int(match.group(1)) != state.global_step:
        return f"{STATE_NAME} says global_step {state.global_step}, not {match.group(1)}"
    for sub in model_dirs:
        folder = path / sub if sub else path
        files = sorted(folder.glob("model*.safetensors")) + sorted(folder.glob("adapter_model*.safetensors"))
        if not files and not any((folder / name).is_file() for name in WEIGHT_FILES):
            return f"no model weights{f' in {sub}/' if sub else ''}"
        for file in files:
            problem = safetensors_problem(file, shapes if not sub and file.name.startswith("model") else None)
            if problem:
                return f"{file.relative_to(path)} is {problem}"
    for name in sorted(n for n in names if is_training_state(n) and n.endswith(STATE_SUFFIX)):
        problem = state_file_problem(path / name)
        if problem:
            return f"{name} is {problem}"
    for name in sorted(n for n in names if n.endswith((".pt", ".pth"))):  # an older release's, or HF's
        problem = archive_problem(path / name)
        if problem:
            return f"{name} is {problem}"
        try:
            load_legacy_state(path / name)  # a pickle that is not plain state is refused here, not run
        except CheckpointError:
            return f"{name} is not a plain state file (weights_only refuses it)"
    resumable = any(n.startswith("optimizer") for n in names) or DEEPSPEED_DIR in names
    # rank 0's random state must be there; another rank's may be absent (fewer processes wrote the
    # checkpoint, or, with save_on_each_node, another machine's disk holds it) but not every one
    rngs = {n for n in names if n.startswith("rng_state_")}
    rng = RNG_NAME.format(rank=0)
    if resumable and (not rngs if rank else not {rng, "rng_state_0.pth"} & rngs):
        return f"{rng} is missing (the random state; without it the run would not continue as it was)"
    for name in sorted(n for n in names if n.startswith("loop_state_")):
        try:
            loaded = json.loads((path / name).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            return f"{name} is damaged ({short_error(err)})"
        if not isinstance(loaded, dict):
            return f"{name} is damaged (not a JSON object)"
    return None


def archive_problem(path: Path) -> str | None:
    """'empty' or 'truncated or damaged' for a torch.save archive whose zip structure or CRCs fail; None when whole."""
    import zipfile

    if path.stat().st_size == 0:
        return "empty"
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()  # reads every member and checks its CRC-32
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as err:
        return f"truncated or damaged ({short_error(err)})"
    return None if bad is None else f"damaged ({bad} fails its checksum)"


def run_exists(output_dir: str | os.PathLike) -> bool:
    """True when `output_dir` already holds a training run (checkpoints or a log)."""
    root = Path(output_dir)
    if not root.is_dir():
        return False
    return (
        bool(list_checkpoints(root))
        or (root / "log.jsonl").is_file()
        or any(_CKPT_RE.match(p.name.removesuffix(TMP_SUFFIX)) for p in root.iterdir())
    )


def check_output_dir(output_dir: str | os.PathLike, *, resuming: bool, overwrite: bool) -> None:
    """Refuse to start a new run over an existing one unless asked to overwrite or resume.

    Raises:
        CheckpointError: `output_dir` holds a run and neither flag is set.
    """
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"output_dir '{output_dir}' is a file; give a directory (new or holding a run)")
    if not resuming and not overwrite and run_exists(output_dir):
        resume = "resume_from_checkpoint=True to continue it, " if list_checkpoints(output_dir) else ""
        held = "a run" if resume else "a run with no complete checkpoint (stopped before its first save)"
        raise CheckpointError(
            f"output_dir '{output_dir}' already holds {held}; pass {resume}overwrite_output_dir=True to start "
            "over, or another output_dir"
        )


def check_foreign_checkpoints(
    output_dir: str | os.PathLike, own: set[str], *, resuming: bool, overwrite: bool, saving: bool
) -> None:
    """The Python API's rule (as transformers'): an output_dir may hold earlier logs, evaluations and
    checkpoints this trainer wrote itself; refused is only a directory holding another run's
    checkpoints when this run is about to write checkpoints beside them.

    Raises:
        CheckpointError: checkpoints not in `own`, `saving`, and neither `resuming` nor `overwrite`.
    """
    if resuming or overwrite or not saving:
        return
    foreign = [p.name for p in list_checkpoints(output_dir) if p.name not in own]
    if foreign:
        raise CheckpointError(
            f"output_dir '{output_dir}' already holds a run ({', '.join(foreign[:3])}) and this run would write its "
            "checkpoints beside them; pass resume_from_checkpoint=True to continue it, overwrite_output_dir=True to "
            "start over, another output_dir, or save_strategy='no'"
        )


def clear_run(output_dir: str | os.PathLike, logging_dir: str | os.PathLike | None = None) -> None:
    """Remove the checkpoints, log and reports of an earlier run (for `overwrite_output_dir`).

    The tracker logs in `logging_dir` go too when it lies inside `output_dir` (TensorBoard would
    otherwise show the two runs' curves interleaved); a folder elsewhere is never touched.
    """
    root = Path(output_dir)
    if not root.is_dir():
        return
    for child in root.iterdir():
        if _CKPT_RE.match(child.name.removesuffix(TMP_SUFFIX)) and child.is_dir():
            shutil.rmtree(child)
    for name in ("log.jsonl", "report.png", "report.md", "compare.png", "compare.md"):
        (root / name).unlink(missing_ok=True)
    if logging_dir is not None:
        logs = Path(logging_dir).resolve()
        if logs.is_dir() and logs != root.resolve() and logs.is_relative_to(root.resolve()):
            shutil.rmtree(logs)


@contextmanager
def atomic_checkpoint(
    final: Path, *, is_main: bool = True, barrier: Callable[[], None] = lambda: None
) -> Iterator[Path]:
    """Yield a temporary directory; rename it to `final` only if the block completes.

    Every rank writes into the same temporary directory (their RNG files); the main process
    renames it after a barrier. On an exception the temporary directory is removed and nothing
    at `final` is touched.
    """
    tmp = final.with_name(final.name + TMP_SUFFIX)
    if is_main:
        if tmp.exists():
            shutil.rmtree(tmp)  # left by a crash: never complete, safe to drop
        tmp.mkdir(parents=True)
    barrier()
    try:
        yield tmp
    except BaseException as err:
        short_of_space = is_main and out_of_space(err, final.parent)
        written = _tree_bytes(tmp) if short_of_space else 0
        if is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        if short_of_space:
            raise no_space_error(final, max(written, _tree_bytes(latest_checkpoint(final.parent)))) from None
        raise
    barrier()
    if is_main:
        _fsync_tree(tmp)
        if final.exists():  # an older save of the same step (e.g. the final save after a scheduled one)
            shutil.rmtree(final)
        os.replace(tmp, final)
    barrier()


def out_of_space(err: BaseException, where: Path) -> bool:
    """Whether `err` means the disk under `where` is full: ENOSPC/EDQUOT, or torch's archive writer
    failing ('unexpected pos', 'failed writing file') with almost nothing left free."""
    import errno

    if isinstance(err, OSError):
        return err.errno in (errno.ENOSPC, errno.EDQUOT)
    if isinstance(err, RuntimeError) and any(m in str(err) for m in ("unexpected pos", "failed writing file")):
        try:
            return shutil.disk_usage(where).free < 16 * 2**20
        except OSError:
            return False
    return False


def no_space_error(target: Path, needed: int) -> CheckpointError:
    """The one-line error for a write that ran out of disk space (the partial files are already gone)."""
    try:
        free = f", {shutil.disk_usage(target.parent).free / 2**20:,.0f} MiB free now"
    except OSError:
        free = ""
    need = f" needs about {needed / 2**20:,.0f} MiB" if needed else ""
    return CheckpointError(
        f"no space left on device writing '{target}' (it{need}{free}); free some space or lower save_total_limit, "
        "then resume: the earlier checkpoints are intact"
    )


def _tree_bytes(root: Path | None) -> int:
    """Bytes of the files under `root` (0 for None or a missing folder)."""
    if root is None or not root.exists():
        return 0
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def _fsync_tree(root: Path) -> None:
    """Flush file contents to disk before the rename makes the checkpoint visible."""
    for path in root.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


def rotate_checkpoints(
    output_dir: str | os.PathLike, limit: int | None, keep: str | os.PathLike | None = None
) -> list[Path]:
    """Delete the oldest complete checkpoints beyond `limit`, never the one in `keep` (the best).

    Returns:
        The removed directories.
    """
    if not limit or limit <= 0:
        return []
    checkpoints = list_checkpoints(output_dir)
    keep_path = Path(keep).resolve() if keep else None
    effective = limit
    if keep_path is not None and limit == 1 and checkpoints and checkpoints[-1].resolve() != keep_path:
        effective = 2  # keep the best and the newest, or a resume would go back in time
    excess = len(checkpoints) - effective
    removable = [c for c in checkpoints if c.resolve() != keep_path]
    removed = removable[: max(excess, 0)]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    return removed


# ---- optimizer / scheduler / RNG states ----------------------------------------------------


def save_state(obj: Any, path: str | os.PathLike) -> None:
    """Write a state dict of tensors and plain Python values as a safetensors state file (no pickle)."""
    save_state_file(obj, path)


def load_state(path: str | os.PathLike) -> Any:
    """Read a state written by `save_state`; where only the `.pt`/`.pth` file of an older release or of
    Hugging Face's Trainer is there, that one, with `torch.load(weights_only=True)`.

    Raises:
        CheckpointError: the file is missing, damaged, or (a torch file) not plain state.
    """
    path = Path(path)
    legacy = legacy_twin(path)
    if not path.is_file() and path.suffix == STATE_SUFFIX and legacy.is_file():
        return load_legacy_state(legacy)
    return load_state_file(path)


def legacy_twin(path: Path) -> Path:
    """The `.pt`/`.pth` name an older release (or HF's Trainer) gave the state file `path`."""
    return path.with_suffix(".pth" if path.name.startswith("rng_state") else ".pt")


def has_state(path: Path) -> bool:
    """Whether the state file `path` (or its older `.pt`/`.pth` twin) is there."""
    return path.is_file() or legacy_twin(path).is_file()


def rng_state() -> dict[str, Any]:
    """Every RNG a training step may draw from, as tensors and plain values."""
    version, py_state, gauss = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": {"version": version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "kind": np_state[0],
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "cpu": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` captured."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state(
        (npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["cached_gaussian"])
    )
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- trainer state ----------------------------------------------------------------------


def callback_states(callbacks: Any) -> dict[str, Any]:
    """`state()` of every `ExportableState` callback, by class name, a list when a class appears more than once
    (saved in trainer_state.json, as transformers saves them)."""
    from .state import export_callbacks, is_stateful

    return export_callbacks(cb for cb in callbacks if is_stateful(cb))


# intervals whose change between the checkpoint and the resumed run transformers warns about
_RESUME_SETTINGS = ("logging_steps", "eval_steps", "save_steps", "train_batch_size")


def restore_callbacks(saved: dict[str, Any], callbacks: list[Any]) -> None:
    """Give stateful callbacks their saved state back, as transformers does.

    Each saved state rebuilds its callback (`type(cb)(**args)`, then `attributes` set) in place of
    the callback of that class; several callbacks of one class take the saved states in order. A
    saved state whose class this run does not have is ignored with a warning.
    """
    import warnings

    from .state import is_stateful

    missing = []
    for name, data in saved.items():
        slots = [i for i, cb in enumerate(callbacks) if type(cb).__name__ == name and is_stateful(cb)]
        if not slots:
            if name != "TrainerControl":  # transformers saves it too; the loop resets it each step
                missing.append(name)
            continue
        for i, state in zip(slots, data if isinstance(data, list) else [data]):
            callbacks[i] = type(callbacks[i]).from_state(state)
    if missing:
        warnings.warn(
            f"the checkpoint holds the state of callbacks this run does not have ({', '.join(missing)}); ignored",
            stacklevel=4,
        )


def restore_trainer_state(path: Path, current: Any, callbacks: Any) -> Any:
    """The `TrainerState` saved in checkpoint `path`, keeping this run's process flags and
    resolved intervals from `current` (a changed interval or batch size is warned about); the
    stateful callbacks in the list `callbacks` are rebuilt from their saved state (`restore_callbacks`).

    Raises:
        CheckpointError: trainer_state.json is unreadable.
    """
    from .state import TrainerState

    try:
        loaded = TrainerState.load_from_json(path / STATE_NAME)
    except ValueError as err:
        raise CheckpointError(f"checkpoint '{path}': {err}") from None
    import warnings

    for name in _RESUME_SETTINGS:
        before, now = getattr(loaded, name), getattr(current, name)
        if before is not None and now is not None and before != now:
            warnings.warn(
                f"resuming with {name}={now}, but the checkpoint was written with {name}={before}; the run goes on "
                f"with {now}",
                stacklevel=4,
            )
    loaded.is_local_process_zero, loaded.is_world_process_zero = (
        current.is_local_process_zero,
        current.is_world_process_zero,
    )
    loaded.max_steps, loaded.num_train_epochs = current.max_steps, current.num_train_epochs
    loaded.logging_steps, loaded.eval_steps, loaded.save_steps = (
        current.logging_steps,
        current.eval_steps,
        current.save_steps,
    )
    if isinstance(callbacks, list):
        restore_callbacks(loaded.stateful_callbacks, callbacks)
    return loaded


def restore_rng(path: Path, rank: int, world: int) -> None:
    """Set this rank's random state from `rng_state_<rank>.safetensors` in checkpoint `path`."""
    import warnings

    rng_file = path / RNG_NAME.format(rank=rank)
    if not has_state(rng_file) and rank > 0:  # written by fewer processes than resume it
        warnings.warn(f"{rng_file} missing: this rank's random state is not restored", stacklevel=3)
        return
    saved = load_state(rng_file)  # rank 0's is required (`checkpoint_problem`)
    try:
        set_rng_state(saved)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise CheckpointError(
            f"checkpoint file '{rng_file}' does not hold a random state ({short_error(err)})"
        ) from None


# ---- the checkpoint, defined once -----------------------------------------------------------


@dataclass
class Resumable:
    """Everything a loop hands to `save_checkpoint` / `load_checkpoint`.

    The layout is the same for one model or two:

        checkpoint-N/
          <model files>           save_models(dir): one model at the top, a pair under A/ and B/
          optimizer.safetensors   one per optimizer: key "" -> optimizer.safetensors, "A" -> optimizer_A.safetensors
          scheduler.safetensors   likewise (scheduler_A.safetensors, ...)
          scaler.pt               the fp16 gradient scaler, when there is one
          rng_state_<rank>.safetensors  every RNG of each rank
          loop_state_<rank>.json  each `stateful` item's state_dict() (the meter, data positions)
          training_args.json
          trainer_state.json      written last: the completion marker inside

    Adding a resumable item is one entry in `stateful` (anything with JSON-able
    `state_dict()` / `load_state_dict()`). Optimizer states are written by the main process, or,
    when FSDP shards the model (`shards`), by every rank into `optimizer_shards/` (and the model
    into `model_shards/`), as RNG and loop state already are.

    Attributes:
        state: The run's `TrainerState`.
        save_models: Writes the model files into a directory.
        load_models: Reads them back from a checkpoint directory into the live models.
        optimizers / schedulers: By model key ("" for a trainer's one model).
        stateful: Loop state by name, saved per rank as JSON.
        optional: Names in `stateful` a checkpoint may lack (one written by an older release or by
            Hugging Face's Trainer); the others are required to resume.
        callbacks: The callbacks whose `ExportableState` goes into trainer_state.json.
        restore_callbacks: Give them their saved state back on load
            (`args.restore_callback_states_from_checkpoint`).
    """

    state: Any
    save_models: Callable[[Path], None]
    load_models: Callable[[Path], None]
    optimizers: Mapping[str, Any]
    schedulers: Mapping[str, Any]
    stateful: Mapping[str, Any] = field(default_factory=dict)
    optional: frozenset[str] = frozenset()
    callbacks: Sequence[Any] = ()
    restore_callbacks: bool = True
    shards: Any = None  # `sharded.ShardedModel` (FSDP) or `DeepSpeedState`: the engine's per-rank files


class StateDicts:
    """Several stateful objects as one `stateful` item: {name: obj.state_dict()}; all are required back."""

    def __init__(self, items: Mapping[str, Any], what: str) -> None:
        self.items, self.what = items, what

    def state_dict(self) -> dict[str, Any]:
        return {name: item.state_dict() for name, item in self.items.items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        for name, item in self.items.items():
            if name not in state:
                raise CheckpointError(f"the checkpoint has no {self.what} for '{name}'; resume with the same settings")
            item.load_state_dict(state[name])


def keyed(filename: str, key: str) -> str:
    """optimizer.safetensors for the key "", optimizer_A.safetensors for "A" (optimizer_shards_A for a folder)."""
    if not key:
        return filename
    stem, dot, suffix = filename.rpartition(".")
    return f"{stem}_{key}{dot}{suffix}" if dot else f"{filename}_{key}"


def save_checkpoint(run: Resumable, args: Any, accel: Any) -> Path:
    """Write checkpoint-<global_step> of `run` atomically, then rotate old checkpoints; every rank calls it.

    Returns:
        The checkpoint directory.
    """
    state = run.state
    final = checkpoint_dir(args.output_dir, state.global_step)
    if state.best_global_step == state.global_step:
        state.best_model_checkpoint = str(final)
    state.stateful_callbacks = callback_states(run.callbacks)
    main = args.should_save  # rank 0, or the main process of each machine (save_on_each_node)
    loop_state = {name: item.state_dict() for name, item in run.stateful.items()}
    shards = run.shards
    with atomic_checkpoint(final, is_main=main, barrier=accel.wait_for_everyone) as tmp:
        if shards is not None and (shards.shard_checkpoints or not args.save_only_model):
            shards.save(tmp, {} if args.save_only_model else run.optimizers)  # every rank, its shard
        run.save_models(tmp)  # with model shards: the configuration and tokenizer only
        if not args.save_only_model:
            save_state(rng_state(), tmp / RNG_NAME.format(rank=accel.process_index))
            write_json(loop_state, tmp / LOOP_STATE_NAME.format(rank=accel.process_index))
            if main and shards is None:
                for key, optimizer in run.optimizers.items():
                    save_state(optimizer.state_dict(), tmp / keyed(OPTIMIZER_NAME, key))
            if main:
                for key, scheduler in run.schedulers.items():
                    save_state(scheduler.state_dict(), tmp / keyed(SCHEDULER_NAME, key))
                if accel.scaler is not None:
                    save_state(accel.scaler.state_dict(), tmp / SCALER_NAME)
        if main:
            write_json(args.to_dict(), tmp / ARGS_NAME)
            state.save_to_json(tmp / STATE_NAME)  # written last: the completion marker inside
    if main:
        rotate_checkpoints(args.output_dir, args.save_total_limit, state.best_model_checkpoint)
    return final


def load_checkpoint(path: Path, run: Resumable, accel: Any) -> Any:
    """Restore everything `save_checkpoint` wrote into `run`'s live objects, so the run continues bit for bit.

    Returns:
        The saved `TrainerState` (with this run's process flags and resolved intervals).

    Raises:
        CheckpointError: the checkpoint lacks an optimizer, scheduler or required loop state
            (saved with save_only_model=True, or by a run with other settings).
    """
    shards = run.shards
    optimizer_files = (
        [keyed(OPTIMIZER_NAME, k) for k in run.optimizers] if shards is None else shards.required_files(run.optimizers)
    )
    needed = optimizer_files + [keyed(SCHEDULER_NAME, k) for k in run.schedulers]
    missing = [name for name in needed if not has_state(path / name)]
    if missing:
        sharding = " (sharded checkpoints resume under FSDP only, and FSDP resumes only those)" if shards else ""
        raise CheckpointError(
            f"checkpoint '{path}' lacks {missing} (saved with save_only_model=True, or by a run with other models, "
            f"cycle_directions or engine{sharding}?); it can be loaded as a model but not resumed"
        )
    if shards is not None:
        with _loading(path, "the model and optimizer shards"):
            shards.load(path, run.optimizers)  # every rank, its shard of the weights and optimizer states
    else:
        with _loading(path, "the model weights"):
            run.load_models(path)
        for key, optimizer in run.optimizers.items():
            saved = load_state(path / keyed(OPTIMIZER_NAME, key))
            with _loading(path, "the optimizer state"):
                optimizer.load_state_dict(saved)
    for key, scheduler in run.schedulers.items():
        saved = load_state(path / keyed(SCHEDULER_NAME, key))
        with _loading(path, "the scheduler state"):
            scheduler.load_state_dict(saved)
    if accel.scaler is not None and has_state(path / SCALER_NAME):
        accel.scaler.load_state_dict(load_state(path / SCALER_NAME))
    loop_state = _read_loop_state(path, accel.process_index)
    for name, item in run.stateful.items():
        if name in loop_state:
            item.load_state_dict(loop_state[name])
        elif name not in run.optional:
            raise CheckpointError(
                f"checkpoint '{path}' has no saved {name} (loop_state_<rank>.json); it can be loaded as a model "
                "but not resumed"
            )
    loaded = restore_trainer_state(path, run.state, run.callbacks if run.restore_callbacks else ())
    restore_rng(path, accel.process_index, accel.num_processes)
    return loaded


@contextmanager
def _loading(path: Path, what: str) -> Iterator[None]:
    """Any failure inside is a one-line CheckpointError naming the checkpoint and what did not load."""
    try:
        yield
    except CheckpointError:
        raise
    except Exception as err:
        raise CheckpointError(
            f"checkpoint '{path}': {what} don't load ({short_error(err)}); resume with the same settings or from an "
            "older checkpoint"
        ) from None


def _read_loop_state(path: Path, rank: int) -> dict[str, Any]:
    """This rank's loop state (rank 0's when the run had fewer ranks); {} when there is none."""
    for candidate in (path / LOOP_STATE_NAME.format(rank=rank), path / LOOP_STATE_NAME.format(rank=0)):
        if candidate.is_file():
            try:
                return json.loads(candidate.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError) as err:
                raise CheckpointError(f"checkpoint file '{candidate}' is unreadable ({err})") from None
    return {}
