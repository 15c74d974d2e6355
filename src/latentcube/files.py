"""Safe file output: atomic writes, a lock per output, and the rule for writing over an existing path.

Every verb that writes uses these three pieces, so that a killed run, a full disk or a second run never
leaves a half-written file under its final name, never deletes what is not ours, and never writes into
an output another run is writing:

- ``atomic_path`` (and ``atomic_write_bytes``/``atomic_write_text``/``atomic_torch_save``): the data goes
  to a temporary sibling, is fsynced, and replaces the final name in one ``os.replace`` only on success;
  on failure the temporary file is removed and an old file under the final name is left as it was.
- ``OutputLock``: a lock file ``<path>.lock`` beside the output (not inside it, so that ``--overwrite``
  deleting the output cannot delete the lock, and so the lock can be taken before the output exists),
  holding the owner's pid, host and start time. A lock of a dead process on this host is taken over.
- ``check_output_path``: a new path is fine; an existing latentcube output is replaced only with
  ``--overwrite``; anything else (a folder of other files, a file) is never deleted.

This module sits at the bottom of the import graph: it imports only :mod:`latentcube.errors`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import logging
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from latentcube.errors import LatentcubeError

__all__ = [
    "OutputExistsError",
    "OutputInUseError",
    "OutputLock",
    "atomic_path",
    "atomic_torch_save",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_output_path",
]

log = logging.getLogger(__name__)

#: A lock file that cannot be parsed (its writer died between creating and filling it) counts as
#: stale once it is this many seconds old; younger, it may be a lock being written right now.
UNREADABLE_LOCK_GRACE_S = 10.0


class OutputExistsError(LatentcubeError, FileExistsError):
    """The output path exists: replace it only with ``--overwrite``, and never when it is not ours."""


class OutputInUseError(LatentcubeError, RuntimeError):
    """Another live run holds the lock on this output."""


def _tmp_sibling(path: Path) -> Path:
    # Same directory as the final name, so os.replace is an atomic rename on one filesystem.
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    # Makes the rename itself durable; not every platform can open a directory (Windows), hence suppress.
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary sibling path to write one file to; on success it replaces ``path`` atomically.

    The caller writes a complete file to the yielded path. When the ``with`` block ends without an
    exception the file is fsynced and ``os.replace``d onto ``path`` (and the directory fsynced), so
    ``path`` holds either its old content or the whole new one, never a part. When the block raises,
    the temporary file is removed and ``path`` is untouched. For single files only (a directory cannot
    be renamed over an existing one atomically).
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(final)
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, final)
    except BaseException:
        _remove(tmp)
        raise
    _fsync_dir(final.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding=encoding)


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save(obj, path)`` atomically: a full disk or a kill never leaves a truncated file."""
    import torch  # imported here: this module is also used by steps that never load torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    except OSError:
        return True  # cannot tell: assume alive, never take a lock that may be held
    return True


class OutputLock:
    """Hold ``<path>.lock`` while writing ``path``; refuse when another live run holds it.

    The lock file is created atomically (``O_CREAT | O_EXCL``) and holds JSON ``{pid, host, started,
    token}``. When it exists and names a live process (or a process on another host, whose liveness
    cannot be checked here) :class:`OutputInUseError` names that run and the fix. A lock left by a dead
    process on this host is taken over with a logged warning. The lock is removed on exit, only if it is
    still ours. ``what`` names the output in messages ("store", "run folder", ...).
    """

    def __init__(self, path: str | os.PathLike[str], what: str = "store") -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.what = what
        self._token: str | None = None

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _info(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "token": self._token,
        }

    def _read(self, path: Path) -> dict[str, Any] | None:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and isinstance(data.get("pid"), int) else None

    def _is_stale(self, info: dict[str, Any] | None, path: Path) -> bool:
        if info is None:
            try:
                age = time.time() - path.stat().st_mtime
            except FileNotFoundError:
                return True
            return age > UNREADABLE_LOCK_GRACE_S
        return info.get("host") == socket.gethostname() and not _pid_alive(int(info["pid"]))

    def _in_use(self, info: dict[str, Any] | None) -> OutputInUseError:
        if info is None:
            who = "a run that is creating its lock right now"
        else:
            who = (
                f"the run of pid {info.get('pid')} on host {info.get('host')}, started {info.get('started')}"
            )
        return OutputInUseError(
            f"{self.what} {self.path} is being written by {who} (lock file {self.lock_path}). "
            f"Fix: wait for that run to finish or stop it, or choose another --out; if that run is no "
            f"longer running, delete {self.lock_path}"
        )

    def acquire(self) -> None:
        """Take the lock or raise :class:`OutputInUseError`."""
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        self._token = uuid.uuid4().hex
        for _ in range(5):
            try:
                fd = os.open(self.lock_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                info = self._read(self.lock_path)
                if not self._is_stale(info, self.lock_path):
                    raise self._in_use(info) from None
                self._take_over(info)
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self._info(), f)
                f.flush()
                os.fsync(f.fileno())
            return
        raise self._in_use(self._read(self.lock_path))

    def _take_over(self, info: dict[str, Any] | None) -> None:
        # Move the stale lock aside first and check what was moved: two runs taking over at once must
        # not both succeed, and a fresh lock moved aside by mistake is put back.
        aside = self.lock_path.with_name(f"{self.lock_path.name}.stale-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(self.lock_path, aside)
        except FileNotFoundError:
            return  # someone else removed it; try to create again
        moved = self._read(aside)
        if moved is not None and not self._is_stale(moved, aside):
            with contextlib.suppress(OSError):
                os.link(aside, self.lock_path)
            aside.unlink(missing_ok=True)
            raise self._in_use(moved)
        aside.unlink(missing_ok=True)
        if info is None:
            log.warning(
                "taking over the unreadable lock file %s of %s %s", self.lock_path, self.what, self.path
            )
        else:
            log.warning(
                "taking over the lock of %s %s left by pid %s on %s (started %s), which is no longer running",
                self.what,
                self.path,
                info.get("pid"),
                info.get("host"),
                info.get("started"),
            )

    def release(self) -> None:
        """Remove the lock file if it is still ours."""
        if self._token is None:
            return
        info = self._read(self.lock_path)
        if info is not None and info.get("token") == self._token:
            self.lock_path.unlink(missing_ok=True)
        self._token = None


def check_output_path(
    path: str | os.PathLike[str],
    *,
    overwrite: bool,
    is_ours: Callable[[Path], bool],
    what: str,
) -> bool:
    """Apply the rule of every verb that writes to output ``path``; return whether it must be replaced.

    - ``path`` does not exist, or is an empty directory: fine, returns ``False`` (nothing to replace);
    - ``path`` exists and ``is_ours(path)`` (a latentcube ``what`` the verb may replace): an
      :class:`OutputExistsError` unless ``overwrite``; with ``overwrite`` returns ``True`` and the caller
      deletes or replaces it;
    - ``path`` exists and is not ours (a folder of other files, a file): always an error, even with
      ``overwrite``, since deleting it could lose the user's data.
    """
    p = Path(path)
    if not p.exists() and not p.is_symlink():
        return False
    if p.is_dir() and not p.is_symlink() and not any(p.iterdir()):
        return False
    if not is_ours(p):
        raise OutputExistsError(
            f"{p} exists and is not a latentcube {what}; refusing to delete it. "
            "Fix: choose an empty or new --out"
        )
    if not overwrite:
        raise OutputExistsError(
            f"{what} {p} exists. Fix: pass --overwrite to replace it, or choose another --out"
        )
    return True


def file_sha256(path: str | Path) -> str:
    """SHA-256 hex digest of a file (the model-file identity in embedding stores and GPP caches), read in 1 MiB pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
