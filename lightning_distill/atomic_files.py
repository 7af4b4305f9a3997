"""Files that appear whole or not at all: written under a temporary name beside their place, then renamed.

Frame stores, teacher-target caches and small JSON markers are all written this way, so a reader (another rank,
a rerun, a crashed run's successor) never sees a partial file. Temporaries are named ``.<name>.tmp-<random>``;
whoever holds the output's lock (``exclusive``) may delete any left by a killed run
(``remove_stale_temporaries``).
"""

from __future__ import annotations

import fcntl
import glob
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def replacing(path: str | Path, *, durable: bool = True) -> Iterator[Path]:
    """Yield a new, empty temporary file beside ``path``; when the body finishes, rename it over ``path``.

    The temporary gets the mode a plain ``open(path, "w")`` would give (0666 less the umask), not ``mkstemp``'s
    0600, so a store converted by one user can be read by the group it was meant for.

    Args:
        path: where the file goes; its directory must exist.
        durable: fsync the file before the rename, so that after a power loss the name never points at a file
            whose blocks were not written (see ``data/frame_store.py``).

    On an error in the body the temporary is removed and ``path`` is left as it was.
    """
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=temporary_prefix(path), dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        os.chmod(tmp, 0o666 & ~current_umask())
        yield tmp
        if durable:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def exclusive(path: Path) -> Iterator[int]:
    """Hold an exclusive lock on ``<path>.lock`` (blocking until other writers of ``path`` finish); yields the lock
    file's descriptor.

    The lock file stays: deleting it would let a waiting process lock a file a newcomer no longer sees. The holder
    writes its pid into it, so a process that has to wait can say for whom. The lock is released when every
    descriptor of it is closed, including copies in forked children: close those (see ``data/convert.py``).
    """
    with open(path.with_name(path.name + ".lock"), "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "unknown"
            print(f"waiting for another process ({holder}) writing {path} to finish", file=sys.stderr)
            fcntl.flock(lock, fcntl.LOCK_EX)
        lock.truncate(0)
        lock.write(str(os.getpid()))
        lock.flush()
        try:
            yield lock.fileno()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def temporary_prefix(path: Path) -> str:
    """The name prefix of ``path``'s temporaries."""
    return f".{path.name}.tmp-"


def remove_stale_temporaries(path: Path) -> None:
    """Delete temporaries of ``path`` left by killed runs; call only while holding ``path``'s lock."""
    for stale in path.parent.glob(glob.escape(temporary_prefix(path)) + "*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


def write_json_atomic(path: str | Path, payload: Any) -> None:
    """Write JSON so that readers see the old file or the whole new one (its directory is created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path, durable=False) as tmp:
        tmp.write_text(json.dumps(payload, indent=2) + "\n")


def current_umask() -> int:
    """The process's umask, read without changing it where the system allows (Linux's /proc)."""
    if sys.platform.startswith("linux"):
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
        except OSError:
            pass
    mask = os.umask(0o022)  # the only portable way to read it is to set it, then put it back
    os.umask(mask)
    return mask
