"""Hub uploads for `args.push_to_hub`, per `args.hub_strategy`, never blocking training.

`HubPusher` creates the repository once and uploads with `huggingface_hub`'s `create_repo` and
`upload_folder`, reached through `_api` (what tests replace). Checkpoints upload on one background
thread: one runs, a newer one replaces one still queued, a failure is logged as a warning, never raised.
CI tests this only against a fake of those two calls (tests/test_hub.py); no real upload runs there.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import warnings
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from pathlib import Path
from typing import Any

from .checkpoint import PREFIX, TMP_SUFFIX, checkpoint_dir, is_training_state
from .events import TrainerCallback

logger = logging.getLogger(__name__)

# never uploaded with the output_dir: checkpoints, half-written checkpoints, staging folders
END_IGNORE = ["_*", f"{PREFIX}-*/", f"*{TMP_SUFFIX}", f"*{TMP_SUFFIX}/"]


def _api(token: str | None) -> Any:
    """The `huggingface_hub.HfApi` every call goes through (tests replace this function)."""
    from huggingface_hub import HfApi

    return HfApi(token=token)


def _is_model_file(relative: Path) -> bool:
    """Files a checkpoint pushes to the repo root: all but its training state (uploaded with the checkpoint folder)."""
    return not is_training_state(relative.parts[0])


def _link_tree(src: Path, dst: Path, keep: Callable[[Path], bool] = lambda _: True) -> Path:
    """Hard-link (copy where links fail) `src`'s files into `dst`: a snapshot that rotation can't delete.

    Safe because a checkpoint's files are never rewritten in place: it is written under a temporary
    name, renamed, and replaced or rotated by deleting the directory.
    """
    for path in sorted(src.rglob("*")):
        relative = path.relative_to(src)
        if not path.is_file() or not keep(relative):
            continue
        target = dst / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)
    dst.mkdir(parents=True, exist_ok=True)
    return dst


class HubPusher:
    """Create one Hub repository and upload folders to it, in the background where asked.

    Args:
        repo_id: the repository ('user/name' or 'name').
        strategy: 'end', 'every_save', 'checkpoint' or 'all_checkpoints' (see `on_checkpoint`).
        token: the Hub token; passed to every call, never logged.
        private: create the repository as private (None: the account default).
        revision: the branch uploads go to (None: main).
        staging_dir: where checkpoint snapshots are linked while they upload (a `_hub-*` folder
            inside it, which `END_IGNORE` keeps out of uploads); same filesystem as the checkpoints.
    """

    def __init__(
        self,
        repo_id: str,
        *,
        strategy: str = "every_save",
        token: str | None = None,
        private: bool | None = None,
        revision: str | None = None,
        staging_dir: str | os.PathLike | None = None,
    ) -> None:
        self.repo_id, self.strategy = repo_id, strategy
        self.private, self.revision = private, revision
        self._token = token
        self._staging_dir = staging_dir
        self._created = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hub-push")
        self._lock = threading.Lock()
        self._latest: Future | None = None  # the last background upload submitted
        self._latest_replaceable = False
        self.skipped = 0  # checkpoint uploads replaced by a newer one before they started
        self.failed = 0  # background uploads that raised (logged as warnings)

    @classmethod
    def from_args(cls, args: Any) -> HubPusher:
        """A pusher for `TrainingArguments`: hub_model_id or the output_dir's name, hub_* settings."""
        return cls(
            args.hub_model_id or Path(args.output_dir).absolute().name,
            strategy=args.hub_strategy,
            token=args.hub_token,
            private=args.hub_private_repo,
            revision=args.hub_revision,
            staging_dir=args.output_dir,
        )

    def create_repo(self) -> str:
        """Create the repository (once; it may already exist) and return its full id."""
        if not self._created:
            url = _api(self._token).create_repo(self.repo_id, token=self._token, private=self.private, exist_ok=True)
            self.repo_id = getattr(url, "repo_id", None) or self.repo_id
            self._created = True
        return self.repo_id

    def push_folder(
        self,
        folder: str | os.PathLike,
        path_in_repo: str | None = None,
        commit_message: str = "Upload folder",
        blocking: bool = True,
        ignore_patterns: list[str] | None = None,
    ) -> Any:
        """Upload `folder` (to `path_in_repo`, default the repo root).

        A blocking push first waits for the background uploads, then raises what the upload raises.
        A background push returns a Future at once; leave the folder unchanged until it is done.
        Its failure is logged as a warning and its result is then None.

        Returns:
            upload_folder's CommitInfo, or a Future of it when `blocking=False`.
        """
        self.create_repo()
        folder = Path(folder)
        if blocking:
            self.wait()
            return self._upload(folder, path_in_repo, commit_message, ignore_patterns)
        return self._submit(lambda: self._upload(folder, path_in_repo, commit_message, ignore_patterns), commit_message)

    def on_save_model(
        self, folder: str | os.PathLike, commit_message: str = "Model save", blocking: bool = True
    ) -> Any:
        """`save_model()`/`push_to_hub()`: upload a saved model folder to the repo root (every strategy).

        Checkpoint folders, half-written ones (`*.tmp`) and `_*` (staging) stay out.
        """
        return self.push_folder(folder, commit_message=commit_message, blocking=blocking, ignore_patterns=END_IGNORE)

    def on_checkpoint(self, ckpt_dir: str | os.PathLike, commit_message: str | None = None) -> Future | None:
        """Upload a new checkpoint per strategy, in the background; None for 'end' (nothing to push).

        every_save: the model files (not optimizer, scheduler, RNG or trainer state) to the repo root;
        checkpoint: those, and the whole checkpoint to `last-checkpoint/` (to resume from);
        all_checkpoints: those, and the whole checkpoint under its own name (`checkpoint-N/`).
        """
        if self.strategy == "end":
            return None
        self.create_repo()
        ckpt_dir = Path(ckpt_dir)
        message = commit_message or f"Training in progress, {ckpt_dir.name.replace('-', ' ')}"
        staging = Path(tempfile.mkdtemp(prefix="_hub-", dir=self._staging_dir or ckpt_dir.parent))
        uploads = [(_link_tree(ckpt_dir, staging / "model", _is_model_file), None, message)]
        if self.strategy in ("checkpoint", "all_checkpoints"):
            path_in_repo = "last-checkpoint" if self.strategy == "checkpoint" else ckpt_dir.name
            uploads.append((_link_tree(ckpt_dir, staging / "checkpoint"), path_in_repo, f"{message}, checkpoint"))

        def job() -> None:
            for folder, path_in_repo, msg in uploads:
                self._upload(folder, path_in_repo, msg, None)

        future = self._submit(job, message, replaceable=True)
        future.add_done_callback(lambda _: shutil.rmtree(staging, ignore_errors=True))  # also when replaced
        return future

    def wait(self) -> None:
        """Block until every background upload has finished (their failures were already logged)."""
        while True:
            with self._lock:
                latest = self._latest
            if latest is None or latest.done():
                return
            logger.info("waiting for the Hub upload in progress to finish")
            wait_futures([latest])  # one worker, first in first out: the latest finishes last

    def _submit(self, job: Callable[[], Any], description: str, replaceable: bool = False) -> Future:
        with self._lock:
            previous = self._latest
            if self._latest_replaceable and previous is not None and previous.cancel():
                self.skipped += 1  # still queued: this newer checkpoint supersedes it
                logger.info("a queued Hub upload was skipped: superseded by '%s'", description)
            self._latest = self._executor.submit(self._guarded, job, description)
            self._latest_replaceable = replaceable
            return self._latest

    def _guarded(self, job: Callable[[], Any], description: str) -> Any:
        try:
            return job()
        except Exception as exc:  # noqa: BLE001 - a failed background upload never stops training
            self.failed += 1
            logger.warning("Hub upload failed (%s): %s: %s", description, type(exc).__name__, self._redact(str(exc)))
            return None

    def _redact(self, text: str) -> str:
        return text.replace(self._token, "<HUB_TOKEN>") if self._token else text

    def _upload(
        self, folder: Path, path_in_repo: str | None, commit_message: str, ignore_patterns: list[str] | None
    ) -> Any:
        return _api(self._token).upload_folder(
            repo_id=self.repo_id,
            folder_path=str(folder),
            path_in_repo=path_in_repo,
            commit_message=commit_message,
            token=self._token,
            revision=self.revision,
            ignore_patterns=ignore_patterns,
        )


class HubCallback(TrainerCallback):
    """A `Trainer`'s Hub uploads, as callback events: the loop itself knows nothing of the Hub.

    With `args.push_to_hub`: the repository is created when training begins (a bad token fails
    before the first step), each saved checkpoint is uploaded in the background (`hub_strategy`),
    and training ends only after the uploads did. `push_model` is what `Trainer.push_to_hub`
    calls (with or without `args.push_to_hub`, as in HF); `write_model_card` is
    `Trainer.create_model_card`.
    """

    def __init__(self) -> None:
        self.pusher: HubPusher | None = None

    def pusher_for(self, args: Any) -> HubPusher:
        """This run's `HubPusher`, created with its repository on first use (main process only)."""
        if self.pusher is None:
            self.pusher = HubPusher.from_args(args)
            self.pusher.create_repo()
        return self.pusher

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if args.push_to_hub and state.is_world_process_zero:
            self.pusher_for(args)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if args.push_to_hub and args.hub_strategy != "end" and state.is_world_process_zero:
            # the pusher snapshots the checkpoint (hard links) and uploads it in the background
            folder = checkpoint_dir(args.output_dir, state.global_step)
            self.pusher_for(args).on_checkpoint(folder, f"Training in progress, step {state.global_step}")

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.pusher is not None:
            self.pusher.wait()  # the last checkpoint's background upload ends before train() returns

    def write_model_card(self, trainer: Any, **card: Any) -> Path:
        """Write README.md (a model card) into the trainer's output_dir (`trainformers.modelcard`)."""
        from .modelcard import create_model_card

        return create_model_card(trainer, **card)

    def push_model(self, trainer: Any, folder: Path, commit_message: str, blocking: bool = True, **card: Any) -> Any:
        """Upload `folder` to the repository root, with a model card when it is the output_dir."""
        if folder.resolve() == Path(trainer.args.output_dir).resolve():
            try:
                trainer.create_model_card(**card)
            except Exception as exc:  # noqa: BLE001 - an optional extra: the model goes up without it
                warnings.warn(f"model card not written ({type(exc).__name__}: {exc}); pushing without it", stacklevel=3)
        return self.pusher_for(trainer.args).on_save_model(folder, commit_message, blocking)
