"""Small, safe file helpers: atomic writes, content hashes, stale temp files and the build lock.

Every file spark-hub writes goes through `atomic_write` (temp file in the same folder + fsync +
rename), so a kill at any point never leaves a truncated file behind. A kill can leave the temp
file itself (``.NAME.XXXXXXXX.tmp``); `clean_stale_temps` removes those when the next build starts.
Temp files are created with mode ``0o666`` minus the umask, like any other file the user writes
(typically 0644), so a dataset folder is readable by the others on a shared machine.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import secrets
from pathlib import Path
from typing import Any, Iterator

from spark_hub.errors import SparkHubError

logger = logging.getLogger(__name__)

TEMP_SUFFIX = ".tmp"
LOCK_NAME = "build.lock"


def _temp_name(path: Path) -> Path:
    return path.parent / f".{path.name}.{secrets.token_hex(4)}{TEMP_SUFFIX}"


def is_temp_name(name: str) -> bool:
    """True for the name of a temp file written by `atomic_path` (``.NAME.XXXXXXXX.tmp``)."""
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path``.

    The temp file is created with ``0o666`` and the process umask applies (``tempfile.mkstemp``
    would force 0600 on the result).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp_path = _temp_name(path)
        try:
            fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:  # pragma: no cover - 32 random bits
            continue
    os.close(fd)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def clean_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Remove the temp files a killed writer left under ``folder``; returns what was removed.

    Call it only while holding the folder's `BuildLock`: then no live writer owns a temp file.
    """
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for root, _dirs, files in os.walk(folder):
        for name in files:
            if is_temp_name(name):
                p = Path(root) / name
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
                    removed.append(p)
    if removed:
        logger.info("removed %d stale temp file(s) left by an interrupted run in %s", len(removed), folder)
    return removed


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ----------------------------------------------------------------------------- locking


class BuildLock:
    """An exclusive, non-blocking lock on a folder or file that one build writes.

    The lock is an OS advisory lock (``fcntl.flock``) on ``lock_path``, which holds the owner's pid.
    The OS drops it when the process dies (SIGKILL included), so a killed build never blocks the
    next one. Taking a lock another process (or another `BuildLock` in this one) holds raises
    `SparkHubError` at once: "another build (pid N) is writing TARGET".
    """

    def __init__(self, lock_path: str | os.PathLike, target: str | os.PathLike):
        self.lock_path = Path(lock_path)
        self.target = Path(target)
        self._fd: int | None = None
        self._writable = True

    def acquire(self) -> "BuildLock":
        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX: no lock, say so once
            logger.debug("no fcntl on this platform: concurrent builds on %s are not detected", self.target)
            return self
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o666)
            self._writable = True
        except PermissionError:  # another user's lock file: a read-only descriptor locks as well
            try:
                fd = os.open(self.lock_path, os.O_RDONLY)
            except OSError as e:
                raise SparkHubError(f"cannot lock {self.target}: {e.strerror} ({self.lock_path})") from None
            self._writable = False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise SparkHubError(
                f"another build (pid {self._owner()}) is writing {self.target}",
                hint="wait for it to finish, or use another --output-dir / cache path",
            ) from None
        if self._writable:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def _owner(self) -> str:
        """The pid written by the holder (it writes it right after locking: wait a moment for it)."""
        import time

        for _ in range(20):
            with contextlib.suppress(OSError, ValueError):
                text = self.lock_path.read_text().strip()
                if text:
                    return str(int(text))
            time.sleep(0.01)
        return "unknown"

    def release(self) -> None:
        if self._fd is None:
            return
        import fcntl

        if self._writable:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "BuildLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
