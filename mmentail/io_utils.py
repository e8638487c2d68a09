"""Atomic writes: a reader sees the old output or the new one, never half of one.

Outputs get the permissions a plain `open` or `mkdir` would give them (0666 or
0777 less the umask), not the owner-only ones of the temporary files they are
written as: an export is often served by another user (a TF Serving container).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

# Read once, at import: reading the umask means setting it.
_UMASK = os.umask(0o022)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_directory(target: str | Path) -> Iterator[Path]:
    """Yields a temporary directory beside `target`; on success it replaces `target`.

    If the body raises, the temporary directory is removed and `target` is left
    as it was. An existing `target` is swapped out by two renames; the old copy
    is parked as `<target>.old` until the new one is in place, and
    :func:`recover_directory` puts it back if a crash falls between the renames.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_directory(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        os.chmod(tmp, 0o777 & ~_UMASK)
        yield tmp
        _fsync_tree(tmp)
        old = target.with_name(target.name + ".old")
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.rename(target, old)
        os.rename(tmp, target)
        _fsync_dir(target.parent)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def recover_directory(target: str | Path) -> None:
    """Restores `<target>.old` when a crash left it parked and `target` missing."""
    target = Path(target)
    old = target.with_name(target.name + ".old")
    if old.exists() and not target.exists():
        os.rename(old, target)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Writes `data` to `path` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Writes `text` (UTF-8) to `path` through a temporary file and a rename."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def _fsync_tree(root: Path) -> None:
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
