"""One run per folder: an exclusive lock on a run folder (``train --out``, ``fit(out_dir=...)``).

Two trainings writing into one folder mix their files (``last.pt`` of one run, ``best.pt`` of the
other, test metrics of the wrong model) or crash on each other's temporary files. :func:`fit`
therefore holds ``<run folder>/.lock`` for the whole run: a second run into a busy folder stops at
once with :class:`RunLockedError`, naming the folder and the holder (pid, host, start time,
command).

The lock is an OS file lock (``fcntl.flock``) on that file, so the kernel releases it when the
holder exits or is killed; the pid written into the file is for the message only. A lock file
left by a killed run is *stale*: the next run finds it unlocked, says so in a warning naming the
old pid, and takes it over. A run that ends (normally or by an exception) deletes the file, and
removes the folder again when the lock file was all it held (a run refused before any work leaves
no empty folder behind). Under ``torchrun`` only rank 0 takes the lock. POSIX only (Linux,
macOS); elsewhere runs are not locked and a warning says so.
"""
from __future__ import annotations

import functools
import inspect
import json
import os
import socket
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable, TypeVar

LOCK_NAME = ".lock"  # file inside the run folder

F = TypeVar("F", bound=Callable[..., Any])


class RunLockedError(RuntimeError):
    """Another live run holds the run folder; the message names the folder and the holder."""


def _holder_text(info: dict[str, Any] | None) -> str:
    """'pid 123 on host (started ..., command ...)' from a lock file's contents."""
    if not info:
        return "a process that is still starting (the lock file holds no pid yet)"
    text = f"pid {info.get('pid')} on {info.get('host')}"
    if info.get("pid") == os.getpid() and info.get("host") == socket.gethostname():
        text += " (this process)"
    return text + f", started {info.get('started')}, command: {info.get('command')}"


def _read(fd: int) -> dict[str, Any] | None:
    """The JSON holder record in the lock file (None when empty or unreadable)."""
    os.lseek(fd, 0, os.SEEK_SET)
    raw = os.read(fd, 65536)
    try:
        info = json.loads(raw.decode())
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return info if isinstance(info, dict) else None


class RunLock:
    """Exclusive lock on a run folder, as a context manager.

    Args:
        folder: the run folder; created when missing (and removed again on release if the lock
            file was all it held).

    Raises:
        RunLockedError: on entry, when another live process (or this one) holds the folder.
    """

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: int | None = None
        self._made_folder = False

    def acquire(self) -> "RunLock":
        """Take the lock (creating the folder when missing); raise :class:`RunLockedError` when held."""
        try:
            import fcntl
        except ImportError:  # Windows: no flock
            warnings.warn(f"run folder {self.folder} is not locked: file locks need a POSIX system", stacklevel=3)
            return self
        self._made_folder = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # held by a live process
                holder = _read(fd)
                os.close(fd)
                raise RunLockedError(
                    f"run folder {self.folder} is in use by another run: {_holder_text(holder)}. "
                    f"Wait for it to finish or write to another folder; two runs in one folder mix their "
                    f"checkpoints. (Lock file: {self.path}.)") from None
            try:  # a holder that was releasing may have deleted the file we opened: lock the current one
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        stale = _read(fd)
        if stale:
            warnings.warn(f"run folder {self.folder}: took over the stale lock of {_holder_text(stale)}; "
                          f"that run is no longer running (killed?)", stacklevel=3)
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(sys.argv) or sys.executable}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(info).encode())
        self._fd = fd
        return self

    def release(self) -> None:
        """Delete the lock file and let go; remove the folder again if this lock made it and it is empty."""
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still holding it: no one can lock a deleted file's twin
        finally:
            os.close(self._fd)
            self._fd = None
        if self._made_folder:
            try:
                self.folder.rmdir()  # only succeeds when empty: a run refused before any work
            except OSError:
                pass

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def locks_run_folder(argument: str = "out_dir") -> Callable[[F], F]:
    """Decorator: hold :class:`RunLock` on the function's ``argument`` folder while it runs.

    Nothing is locked when that argument is None (an in-memory run) or in a ``torchrun`` process
    other than rank 0 (rank 0 holds the lock for the whole job).

    Args:
        argument: name of the run-folder parameter of the decorated function.
    """
    def decorate(fn: F) -> F:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            folder = signature.bind_partial(*args, **kwargs).arguments.get(argument)
            if folder is None or os.environ.get("RANK", "0") != "0":
                return fn(*args, **kwargs)
            with RunLock(folder):
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate
