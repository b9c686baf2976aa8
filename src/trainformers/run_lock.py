"""One writer per output_dir: `RunLock` holds `<output_dir>/.trainformers.lock` while a run writes there.

Two runs sharing an output_dir delete each other's `checkpoint-N.tmp` and log every row twice, so
the second one is refused. The lock is an `fcntl.flock` on the file, which the kernel drops when
the holder dies (even by SIGKILL); the file also records who holds it (JSON: pid, host, started,
argv) so the refusal can name the owner, and a file left by a dead run is taken over with a notice.
Limits: flock is authoritative, the recorded pid and host are only reported. On a local disk that
covers every process of the machine; on Linux NFS flock is emulated with POSIX locks shared by the
clients, but some shared filesystems (e.g. Lustre without `-o flock`) keep flocks per host, and
there two hosts can both hold the lock. On Windows (no `fcntl`) it does nothing. In a distributed
run only the process that saves (rank 0) should lock: pass `enabled=False` on the others.
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import sys
import threading
import warnings
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Any

from .errors import CheckpointError

if sys.platform != "win32":
    import fcntl

LOCK_NAME = ".trainformers.lock"


@dataclass
class _Hold:
    fd: int
    holders: int
    pid: int  # a forked child inherits `_held` but not the ownership


# realpath of the lock file -> its hold: a process locks a path once, later RunLocks there share it
_held: dict[str, _Hold] = {}
_held_guard = threading.Lock()


class RunLock:
    """Holds `<output_dir>/.trainformers.lock` between `acquire()` and `release()` (or as a context).

    Re-entrant within a process: a second `RunLock` on the same output_dir (another `train()`, a
    hyperparameter trial) shares the lock, and the file goes when the last holder releases it or
    the process exits.
    """

    def __init__(self, output_dir: str | os.PathLike[str], enabled: bool = True) -> None:
        self.output_dir = os.fspath(output_dir)
        self.path = os.path.join(self.output_dir, LOCK_NAME)
        self.enabled = enabled
        self._depth = 0
        self._key = ""  # the lock file's realpath, fixed when first acquired

    def acquire(self) -> str | None:
        """Lock output_dir (creating it) for this process.

        Returns:
            The one-line notice, also given as a warning, when a dead run's lock was taken over; else None.

        Raises:
            CheckpointError: another live process holds the lock.
        """
        if not self.enabled or sys.platform == "win32":
            return None
        os.makedirs(self.output_dir, exist_ok=True)
        key = self._key = self._key or os.path.realpath(self.path)
        notice = None
        with _held_guard:
            hold = _held.get(key)
            if hold is not None and hold.pid == os.getpid():
                hold.holders += 1
            else:
                fd, previous = _lock(self.path, self.output_dir)
                _held[key] = _Hold(fd, 1, os.getpid())
                if previous.strip():  # the flock was free, so whoever wrote this has stopped
                    owner = f"pid {_field(previous, 'pid')} (host {_field(previous, 'host')})"
                    notice = f"took over the stale lock of {owner}, which is no longer running"
        self._depth += 1
        if notice is not None:
            warnings.warn(notice, stacklevel=2)
        return notice

    def release(self) -> None:
        """Drop one hold; the last one deletes the file (if it is still ours) and unlocks."""
        if self._depth == 0:
            return
        self._depth -= 1
        _drop(self._key)

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.release()


def _lock(path: str, output_dir: str) -> tuple[int, str]:
    """flock the file at `path`, record this process in it, and return (fd, its previous content)."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _read(fd)
            os.close(fd)
            pid, host, started = (_field(owner, key) for key in ("pid", "host", "started"))
            raise CheckpointError(
                f"output_dir '{output_dir}' is in use by another run (pid {pid} on host {host} since {started}); "
                "wait for it to finish, or use another output_dir"
            ) from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:  # else the holder released (deleted) it between our open and flock: open the new one
            break
        os.close(fd)
    previous = _read(fd)
    started = datetime.now().astimezone().isoformat(timespec="seconds")
    record = {"pid": os.getpid(), "host": socket.gethostname(), "started": started, "argv": sys.argv}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
    return fd, previous


def _drop(key: str, everything: bool = False) -> None:
    with _held_guard:
        hold = _held.get(key)
        if hold is None or hold.pid != os.getpid():
            return
        hold.holders = 0 if everything else hold.holders - 1
        if hold.holders > 0:
            return
        del _held[key]
        fd = hold.fd
        try:  # unlink before unlocking, and only the file we locked (never a newer run's)
            if os.path.samestat(os.fstat(fd), os.stat(key)):
                os.unlink(key)
        except FileNotFoundError:
            pass
        os.close(fd)


def _read(fd: int) -> str:
    return os.pread(fd, 1 << 16, 0).decode(errors="replace")


def _field(content: str, key: str) -> str:
    """One field of a lock file's JSON, or '?' when the file is empty, unreadable or lacks it."""
    try:
        record: Any = json.loads(content)
    except ValueError:
        return "?"
    return str(record.get(key, "?")) if isinstance(record, dict) else "?"


@atexit.register
def _release_all() -> None:
    for key in list(_held):
        _drop(key, everything=True)
