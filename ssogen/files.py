"""Writing files so that a failure never leaves a part of one behind and is reported in one line.

Owns: atomic writes (a temporary file beside the target, fsync, rename), and turning an operating-system
write failure (no space, a quota, a read-only file system or folder, a file-size limit) into a `WriteError`
that names the path and the cause, so the user sees one line and what to do, not a traceback.
"""

from __future__ import annotations

import errno
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from ssogen.errors import WriteError

_UMASK = os.umask(0)
os.umask(_UMASK)

# What the user can do about each cause; other errors are named by the system's own words.
CAUSES = {
    errno.ENOSPC: "no space left on the device (free some space)",
    errno.EDQUOT: "disk quota exceeded (free some of your quota, or write elsewhere)",
    errno.EROFS: "the file system is read-only (use a writable folder)",
    errno.EACCES: "permission denied (make it writable, or use a folder you can write)",
    errno.EPERM: "operation not permitted (make it writable, or use a folder you can write)",
    errno.EFBIG: "file too large: a file-size limit is in force (ulimit -f); lift it",
}
# pyarrow puts the errno in its message ("[errno 28]"), Rust writers (safetensors) say "(os error 27)".
_ERRNO_IN_TEXT = re.compile(r"(?:errno|os error) (\d+)", re.IGNORECASE)


def errno_of(exc: BaseException) -> int | None:
    """The operating-system error number behind `exc`, from the exception or its message."""
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    match = _ERRNO_IN_TEXT.search(str(exc))
    return int(match[1]) if match else None


def write_error(path: Path | str, exc: BaseException, doing: str = "") -> WriteError:
    """One line: what could not be written and why (``doing`` says what for, e.g. "converting the model")."""
    code = errno_of(exc)
    if code in CAUSES:
        cause = CAUSES[code]
    elif code is not None:
        cause = os.strerror(code)
    else:
        lines = str(exc).strip().splitlines()
        cause = f"{type(exc).__name__}: {lines[0] if lines else ''}"
    what = f" ({doing})" if doing else ""
    return WriteError(f"cannot write {path}{what}: {cause}")


@contextmanager
def writing(path: Path | str, doing: str = "") -> Iterator[None]:
    """Turn an `OSError` raised inside into a `WriteError` naming `path`."""
    try:
        yield
    except WriteError:
        raise
    except OSError as exc:
        raise write_error(path, exc, doing) from exc


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make renames in `path` durable; some file systems cannot fsync a folder, which is harmless."""
    with suppress(OSError):
        fsync_file(path)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path beside `path`; on success it is fsynced and renamed to `path`, else removed.

    Readers see the old file or the new one, never a part; a kill leaves at most a hidden ``.name.*`` file.
    A failure to write (in here or in the caller's block) is a `WriteError` naming `path`.
    """
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        os.close(fd)
    try:
        with writing(path):
            # mkstemp creates 0600 files; a dataset folder is meant to be read by others (and uploaded).
            os.chmod(tmp, 0o644 & ~_UMASK)
            yield Path(tmp)
            fsync_file(Path(tmp))
            os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            Path(tmp).unlink()
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write a file so that readers see the old content or the new, never a part."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
