"""RunLock: one writer per output_dir; dead runs' locks are taken over, the same process may re-enter."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from trainformers.errors import CheckpointError
from trainformers.run_lock import LOCK_NAME, RunLock

SRC = Path(__file__).resolve().parents[1] / "src" / "trainformers"

# Holds the lock until stdin closes. The package is stubbed so that only run_lock and errors are
# imported: `import trainformers` pulls in torch and transformers (~10 s on our machines).
HOLDER = f"""
import sys, types
package = types.ModuleType("trainformers")
package.__path__ = [{str(SRC)!r}]
sys.modules["trainformers"] = package
from trainformers.run_lock import RunLock
lock = RunLock(sys.argv[1])
lock.acquire()
print("locked", flush=True)
if sys.argv[2] == "hold":
    sys.stdin.read()
    lock.release()
"""


def _holder(output_dir: Path, mode: str = "hold") -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(output_dir), mode], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None and process.stdout.readline() == "locked\n"
    return process


def test_second_process_is_refused_until_the_first_releases(tmp_path):
    output_dir = tmp_path / "run"
    holder = _holder(output_dir)
    try:
        record = json.loads((output_dir / LOCK_NAME).read_text())
        assert record["pid"] == holder.pid and record["host"] == socket.gethostname()
        with pytest.raises(CheckpointError) as refused:
            RunLock(output_dir).acquire()
        assert str(refused.value) == (
            f"output_dir '{output_dir}' is in use by another run (pid {holder.pid} on host {socket.gethostname()} "
            f"since {record['started']}); wait for it to finish, or use another output_dir"
        )
    finally:
        holder.communicate("")  # closing stdin lets it release
    assert holder.returncode == 0 and not (output_dir / LOCK_NAME).exists()
    lock = RunLock(output_dir)
    assert lock.acquire() is None
    lock.release()


def test_lock_of_a_killed_run_is_taken_over_with_a_notice(tmp_path):
    holder = _holder(tmp_path)
    holder.kill()  # SIGKILL: no atexit, the file stays, the kernel drops the flock
    holder.communicate()
    assert (tmp_path / LOCK_NAME).exists()
    expected = f"took over the stale lock of pid {holder.pid} (host {socket.gethostname()}), which is no longer running"
    lock = RunLock(tmp_path)
    with pytest.warns(UserWarning, match="took over") as caught:
        assert lock.acquire() == expected
    assert str(caught[0].message) == expected
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / LOCK_NAME).exists()


def test_garbage_lock_file_with_a_free_flock_is_stale(tmp_path):
    (tmp_path / LOCK_NAME).write_bytes(b"\x00\xffnot json")
    with pytest.warns(UserWarning, match=r"pid \? \(host \?\)"), RunLock(tmp_path):
        assert json.loads((tmp_path / LOCK_NAME).read_text())["argv"] == sys.argv
    assert not (tmp_path / LOCK_NAME).exists()


def test_same_process_reenters_and_the_last_release_removes_the_file(tmp_path):
    first, second = RunLock(tmp_path), RunLock(tmp_path)
    first.acquire()
    assert second.acquire() is None  # a second train() in the same process
    first.release()
    first.release()  # releasing more than acquired is a no-op
    assert (tmp_path / LOCK_NAME).exists()
    second.release()
    assert not (tmp_path / LOCK_NAME).exists()


def test_release_leaves_a_file_that_is_no_longer_ours(tmp_path):
    lock = RunLock(tmp_path)
    lock.acquire()
    os.replace(tmp_path / LOCK_NAME, tmp_path / "moved")
    (tmp_path / LOCK_NAME).write_text("someone else's")
    lock.release()
    assert (tmp_path / LOCK_NAME).read_text() == "someone else's"


def test_exit_without_release_removes_the_file(tmp_path):
    holder = _holder(tmp_path / "a" / "b", mode="exit")  # creates the parents too
    assert holder.wait() == 0
    assert not (tmp_path / "a" / "b" / LOCK_NAME).exists()


def test_disabled_lock_does_nothing(tmp_path):
    with RunLock(tmp_path / "run", enabled=False):
        assert not (tmp_path / "run").exists()
