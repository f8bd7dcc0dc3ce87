"""One writer per output folder: the exclusive lock that build, merge and push take before they touch a folder.

Owns: the lock file ``.ssogen/lock`` inside the folder, refusing a second process (exit 2, naming the holder:
pid, host, command and since when) and taking over, with a warning, the lock of a process that died holding it.

The lock itself is the operating system's (`fcntl.flock`): the kernel releases it when its process ends in any
way, SIGKILL included, and an NFS server releases the lock of a crashed client when its lease runs out. So a
stale lock never blocks anyone, and no guess ("is pid 4242 on node7 still alive?") is ever needed; the file's
content only says who holds it, for the messages. Why not the `filelock` package: it truncates the lock file
when it opens it, so the holder could not be named, and it never says who holds a lock. Why not a bare
``O_EXCL`` lock file: a killed process leaves it behind, and only such a guess could tell it is stale.

The lock is re-entrant within a process (the CLI takes it before it loads anything, `pipeline.build` takes it
again for callers of the library). It is not inherited by spawned processes (vLLM's workers); a process that
`fork`s while holding it shares it with the child.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ssogen import __version__
from ssogen.errors import UsageError
from ssogen.files import writing

logger = logging.getLogger(__name__)

LOCK_FILE = ".ssogen/lock"
# File systems without flock (some FUSE or Lustre mounts) answer with one of these.
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}
_READ_ONLY = {errno.EROFS, errno.EACCES, errno.EPERM}


class FolderLocked(UsageError):
    """Another process holds the folder's lock (exit 2: nothing was done)."""


@dataclass(frozen=True)
class Holder:
    """Who holds (or held) a lock, as written into the lock file."""

    pid: int
    host: str
    command: str
    since: float  # seconds since the epoch

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.since))
        return f"pid {self.pid} on host {self.host} running `{self.command}` since {when} ({_ago(self.since)} ago)"

    @classmethod
    def parse(cls, text: str) -> Holder | None:
        try:
            data = json.loads(text)
            return cls(int(data["pid"]), str(data["host"]), str(data["command"]), float(data["since"]))
        except (ValueError, KeyError, TypeError):
            return None


def _ago(since: float) -> str:
    seconds = max(0, int(time.time() - since))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


@dataclass
class _Held:
    fd: int | None  # None: the file system has no locks, or a read-only folder nobody can write either
    depth: int


_held: dict[str, _Held] = {}
_guard = threading.Lock()


@contextmanager
def folder_lock(root: Path, command: str, *, read_only: bool = False) -> Iterator[None]:
    """Hold the exclusive lock of the folder `root` (created if missing) for the duration of the block.

    Raises `FolderLocked` (exit 2) at once when another process holds it. ``read_only`` is for commands that
    only read the folder (push, merge's inputs): a folder they cannot write into is used unlocked, since no
    other ssogen process can write into it either.
    """
    key = os.path.realpath(root)
    with _guard:
        held = _held.get(key)
        if held is None:
            held = _held[key] = _Held(_acquire(Path(root), command, read_only), 0)
        held.depth += 1
    try:
        yield
    finally:
        with _guard:
            held.depth -= 1
            if held.depth == 0:
                del _held[key]
                _release(held.fd)


def _acquire(root: Path, command: str, read_only: bool) -> int | None:
    path = root / LOCK_FILE
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        if read_only and exc.errno in _READ_ONLY:
            logger.debug("%s cannot be locked (%s); it cannot be written either, so it is read unlocked", root, exc)
            return None
        with writing(path, "taking the folder's lock"):
            raise
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        previous = Holder.parse(_read(fd))
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            holder = previous.describe() if previous else "its pid and host are not written yet"
            raise FolderLocked(
                f"{root} is in use by another ssogen process: {holder}. Only one process may write a folder: "
                f"wait for that one to finish or stop it, or use another folder (each shard needs its own --output)."
            ) from None
        if exc.errno in _NO_LOCKS:
            logger.warning(
                "the file system of %s does not support file locks (%s): ssogen cannot stop a second process "
                "from writing this folder; make sure only one does",
                root,
                os.strerror(exc.errno),
            )
            return None
        raise
    previous = Holder.parse(_read(fd))
    if previous is not None:
        # A clean release empties the file, so a name left in it is a holder that died holding the lock.
        logger.warning(
            "took over the lock of %s, left by pid %d on host %s (`%s`, since %s): that process ended "
            "without releasing it (killed or crashed)",
            root,
            previous.pid,
            previous.host,
            previous.command,
            time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(previous.since)),
        )
    me = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": command,
        "since": time.time(),
        "ssogen": __version__,  # for people reading the file by hand
    }
    try:
        with writing(path, "taking the folder's lock"):
            data = (json.dumps(me) + "\n").encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
            os.fsync(fd)
    except BaseException:
        _release(fd)
        raise
    logger.debug("locked %s (%s)", root, command)
    return fd


def _read(fd: int) -> str:
    try:
        return os.pread(fd, 4096, 0).decode("utf-8", errors="replace")
    except OSError:
        return ""


def _release(fd: int | None) -> None:
    if fd is None:
        return
    try:
        os.ftruncate(fd, 0)  # an empty file tells the next holder the release was clean
    except OSError:
        pass
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
