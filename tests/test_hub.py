"""push_to_hub / hub_strategy: what each strategy would upload, checked against a fake of the Hub.

Nothing here contacts the Hub: `trainformers.hub._api` is replaced by `FakeHub`, which records
each `create_repo` and `upload_folder` call (the folder's files listed at call time, filtered by
the call's ignore_patterns with huggingface_hub's own matcher). The real upload is not exercised.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import PadCollator, lm_rows, make_args, tiny_llama
from huggingface_hub.utils import filter_repo_objects

from trainformers import Trainer, TrainerCallback, hub

TOKEN = "hf_fake_secret_token_123"
TRAINING_STATE = {"optimizer.safetensors", "scheduler.safetensors", "trainer_state.json"}
# Trainer.create_model_card is another module's job; here a missing card must not stop the push
pytestmark = pytest.mark.filterwarnings("ignore:model card not written")


class FakeHub:
    """Stands in for `huggingface_hub.HfApi`: records calls, optionally sleeps or fails in uploads."""

    def __init__(self, sleep: float = 0.0, fail: bool = False) -> None:
        self.sleep, self.fail = sleep, fail
        self.gate: threading.Event | None = None  # when set: uploads wait for it first
        self.repos: list[dict] = []
        self.uploads: list[dict] = []
        self.api_tokens: list[str | None] = []
        self.threads: set[str] = set()

    def api(self, token):  # the factory: hub._api(token)
        self.api_tokens.append(token)
        return self

    def create_repo(self, repo_id, *, token=None, private=None, exist_ok=False):
        self.repos.append({"repo_id": repo_id, "token": token, "private": private, "exist_ok": exist_ok})
        return SimpleNamespace(repo_id=f"me/{repo_id}")  # the Hub answers with the namespaced id

    def upload_folder(
        self,
        *,
        repo_id,
        folder_path,
        path_in_repo=None,
        commit_message=None,
        token=None,
        revision=None,
        ignore_patterns=None,
    ):
        root = Path(folder_path)
        listed = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
        self.threads.add(threading.current_thread().name)
        if self.gate is not None:
            self.gate.wait(timeout=60)  # a bounded wait: a loop that blocked on uploads fails, not hangs
        time.sleep(self.sleep)
        if self.fail:
            raise RuntimeError(f"401 Unauthorized (token {token})")
        self.uploads.append(
            {
                "repo_id": repo_id,
                "path_in_repo": path_in_repo,
                "commit_message": commit_message,
                "token": token,
                "revision": revision,
                "ignore_patterns": ignore_patterns,
                "files": set(filter_repo_objects(listed, ignore_patterns=ignore_patterns)),
            }
        )
        return SimpleNamespace(commit_message=commit_message)

    def at(self, path_in_repo):
        return [u for u in self.uploads if u["path_in_repo"] == path_in_repo]


@pytest.fixture
def fake(monkeypatch):
    fake = FakeHub()
    monkeypatch.setattr(hub, "_api", fake.api)
    return fake


def make_trainer(tmp_path, **overrides):
    settings = {"push_to_hub": True, "hub_token": TOKEN, "hub_revision": "dev", "max_steps": 4}
    settings |= {"save_strategy": "steps", "save_steps": 2}
    settings.update(overrides)
    args = make_args(tmp_path, **settings)
    return Trainer(model=tiny_llama(), args=args, train_dataset=lm_rows(16), data_collator=PadCollator())


def pusher_of(trainer):
    """The `HubPusher` of the trainer's `HubCallback` (the callback that carries its uploads)."""
    from trainformers.callbacks import HubCallback

    return next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, HubCallback)).pusher


def assert_repo_created_once(fake):
    assert fake.repos == [{"repo_id": "run", "token": TOKEN, "private": None, "exist_ok": True}]
    assert set(fake.api_tokens) == {TOKEN}
    assert all(u["repo_id"] == "me/run" and u["token"] == TOKEN and u["revision"] == "dev" for u in fake.uploads)


def assert_final_push(upload):
    assert upload["commit_message"] == "End of training" and upload["path_in_repo"] is None
    assert {"model.safetensors", "config.json", "training_args.json"} <= upload["files"]
    assert not any(f.startswith(("checkpoint-", "_")) for f in upload["files"])  # checkpoints, staging stay out


def test_end_uploads_only_when_pushed(tmp_path, fake):
    trainer = make_trainer(tmp_path, hub_strategy="end")
    trainer.train()
    assert fake.uploads == [] and len(fake.repos) == 1  # created at train start, nothing pushed yet
    (tmp_path / "run" / "README.md").write_text("# card\n")  # a model card, if present, goes up too
    trainer.push_to_hub()
    assert_repo_created_once(fake)
    assert len(fake.uploads) == 1
    assert_final_push(fake.uploads[0])
    assert "README.md" in fake.uploads[0]["files"]
    assert (tmp_path / "run" / "checkpoint-4").is_dir()  # present locally, not uploaded


def test_every_save_pushes_model_files_at_each_checkpoint(tmp_path, fake):
    trainer = make_trainer(tmp_path, hub_strategy="every_save")
    trainer.train()
    assert [u["commit_message"] for u in fake.uploads] == [
        "Training in progress, step 2",
        "Training in progress, step 4",
    ]
    for upload in fake.uploads:
        assert upload["path_in_repo"] is None
        assert {"model.safetensors", "config.json", "training_args.json"} <= upload["files"]
        assert not upload["files"] & TRAINING_STATE and not any(f.startswith("rng_state") for f in upload["files"])
    assert fake.threads and all(t.startswith("hub-push") for t in fake.threads)  # off the training thread
    trainer.push_to_hub()
    assert_repo_created_once(fake)
    assert len(fake.uploads) == 3
    assert_final_push(fake.uploads[-1])
    assert not list((tmp_path / "run").glob("_hub-*"))  # staging snapshots removed after upload


def test_checkpoint_also_pushes_last_checkpoint_to_resume_from(tmp_path, fake):
    trainer = make_trainer(tmp_path, hub_strategy="checkpoint")
    trainer.train()
    trainer.push_to_hub()
    assert_repo_created_once(fake)
    last = fake.at("last-checkpoint")
    assert [u["commit_message"] for u in last] == [
        "Training in progress, step 2, checkpoint",
        "Training in progress, step 4, checkpoint",
    ]
    assert all(TRAINING_STATE | {"model.safetensors", "rng_state_0.safetensors"} <= u["files"] for u in last)
    root = fake.at(None)
    assert len(root) == 3 and not any(u["files"] & TRAINING_STATE for u in root)
    assert_final_push(root[-1])


def test_all_checkpoints_pushes_each_under_its_name(tmp_path, fake):
    trainer = make_trainer(tmp_path, hub_strategy="all_checkpoints", save_total_limit=1)
    trainer.train()
    trainer.push_to_hub()
    assert_repo_created_once(fake)
    # checkpoint-2 was rotated away locally right after its save: its snapshot still went up whole
    assert not (tmp_path / "run" / "checkpoint-2").exists()
    for name in ("checkpoint-2", "checkpoint-4"):
        (upload,) = fake.at(name)
        assert TRAINING_STATE | {"model.safetensors", "config.json"} <= upload["files"]
    assert "last-checkpoint" not in {u["path_in_repo"] for u in fake.uploads}
    assert_final_push(fake.at(None)[-1])


def test_slow_uploads_do_not_block_training_and_blocking_push_waits(tmp_path, monkeypatch):
    fake = FakeHub(sleep=1.0)
    fake.gate = threading.Event()  # every upload hangs until the last checkpoint is saved
    monkeypatch.setattr(hub, "_api", fake.api)
    finished_before_release: list[int] = []

    class ReleaseAtLastSave(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            if state.global_step == state.max_steps:
                finished_before_release.append(len(fake.uploads))
                fake.gate.set()

    trainer = make_trainer(tmp_path, max_steps=6, save_steps=1)
    trainer.add_callback(ReleaseAtLastSave)
    out = trainer.train()
    # all six checkpoints were saved while the first upload was still stuck: training never waited
    # (no wall-time bound here: under a loaded CI machine six saves can take seconds)
    assert finished_before_release == [0] and out.global_step == 6
    # at most one upload runs; a queued one is replaced by a newer checkpoint; the latest always runs,
    # and train() returns only after it has finished
    pusher = pusher_of(trainer)
    assert len(fake.uploads) + pusher.skipped == 6 and len(fake.uploads) <= 2
    assert fake.uploads[-1]["commit_message"] == "Training in progress, step 6"

    start = time.perf_counter()
    fake.gate = threading.Event()  # the next upload hangs until released: push_to_hub must not wait for it
    future = trainer.push_to_hub(blocking=False)
    assert not future.done()
    fake.gate.set()
    future.result()
    assert fake.uploads[-1]["commit_message"] == "End of training"
    trainer.push_to_hub("again")  # blocking: returns after the upload is recorded
    assert fake.uploads[-1]["commit_message"] == "again"
    assert time.perf_counter() - start >= 2 * fake.sleep


def test_failed_background_upload_warns_and_training_finishes(tmp_path, monkeypatch, caplog):
    fake = FakeHub(fail=True)
    monkeypatch.setattr(hub, "_api", fake.api)
    trainer = make_trainer(tmp_path, hub_strategy="checkpoint")
    with caplog.at_level(logging.WARNING, logger="trainformers.hub"):
        out = trainer.train()
    assert out.global_step == 4 and pusher_of(trainer).failed == 2
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 2 and all("Hub upload failed" in m for m in warned)
    assert TOKEN not in caplog.text and "<HUB_TOKEN>" in caplog.text  # the error quoted the token: masked
    with pytest.raises(RuntimeError, match="401"):
        trainer.push_to_hub()  # a blocking push re-raises


def test_token_never_written_to_logs_or_args(tmp_path, fake, caplog):
    trainer = make_trainer(tmp_path, hub_strategy="checkpoint")
    with caplog.at_level(logging.DEBUG):
        trainer.train()
        trainer.push_to_hub()
    run = tmp_path / "run"
    written = [run / "log.jsonl", run / "training_args.json", *run.glob("checkpoint-*/*.json")]
    assert len(written) >= 4
    for path in written:
        assert TOKEN not in path.read_text(), path
    assert TOKEN not in caplog.text


def test_save_model_pushes_and_no_hub_without_push_to_hub(tmp_path, fake, monkeypatch):
    trainer = make_trainer(tmp_path / "a", hub_strategy="end", max_steps=2)
    trainer.train()
    trainer.save_model()
    assert [u["commit_message"] for u in fake.uploads] == ["Model save"]
    assert_final_push({**fake.uploads[0], "commit_message": "End of training"})

    quiet = FakeHub()
    monkeypatch.setattr(hub, "_api", quiet.api)
    trainer = make_trainer(tmp_path / "b", push_to_hub=False, max_steps=2)
    trainer.train()
    trainer.save_model()
    assert quiet.repos == [] and quiet.uploads == []


def test_push_to_hub_rejects_unsupported_overrides(tmp_path, fake):
    trainer = make_trainer(tmp_path, push_to_hub=False)
    with pytest.raises(Exception, match="revision"):
        trainer.push_to_hub(revision="other")
    assert fake.uploads == []
