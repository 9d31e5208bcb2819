"""Files a run reads and writes: JSON files with errors that name them, fingerprints, and the append-only result
file that certification (and the attack harness) stream rows into.

``RowFile`` guarantees: rows are only ever appended (a row cut by a crash is removed by truncating the file at the
last complete row, never by rewriting it); an exclusive lock (released by the OS when the process dies, even by
kill -9) refuses a second run into the same file; a duplicate key or a damaged row in the middle is an error naming
the line.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class FileError(ValueError):
    """A file that cannot be used as it is; the message names it."""


def read_json(path: str | os.PathLike) -> Any:
    """The parsed contents of a JSON file; a damaged file is a ``FileError`` naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FileError(f"{path}: damaged JSON ({e}); restore it or delete the run directory") from None


def fingerprint_files(paths: list[Path]) -> str:
    """SHA-256 of the files' bytes, in the given order (16 hex digits)."""
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def fingerprint_rows(rows: list[Any]) -> str:
    """SHA-256 of JSON-serialisable rows (16 hex digits)."""
    h = hashlib.sha256()
    for r in rows:
        h.update(json.dumps(r, sort_keys=True, ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()[:16]


class RunLocked(OSError):
    pass


def _is_json(data: bytes) -> bool:
    try:
        json.loads(data)
        return True
    except ValueError:
        return False


def parse_rows(data: bytes, path: Path, key: str, seen: dict | None = None) -> list[dict]:
    """The rows of a JSONL file's complete lines; a damaged row, a row without ``key`` or a second row for a key
    (also across files, through ``seen``) is a ``FileError`` naming the line."""
    rows, seen = [], {} if seen is None else seen
    for i, line in enumerate(data.decode("utf-8", errors="replace").split("\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise FileError(f"{path}:{i}: damaged row in the middle of the file; remove that line to resume") \
                from None
        k = row.get(key) if isinstance(row, dict) else None
        if k is None:
            raise FileError(f"{path}:{i}: row without {key!r}")
        if k in seen:
            raise FileError(f"{path}:{i}: a second row for {key} {k} (the first is at {seen[k]}); two runs wrote "
                            "these rows, or a file was edited: remove one")
        seen[k] = f"{path.name}:{i}"
        rows.append(row)
    return rows


def read_rows(path: Path, key: str = "index", seen: dict | None = None) -> list[dict]:
    """The complete rows of a row file another process may still be appending to (a partial last line is
    ignored, not repaired)."""
    if not path.exists():
        return []
    data = path.read_bytes()
    return parse_rows(data[: data.rfind(b"\n") + 1], path, key, seen)


class RowFile:
    """An append-only JSONL file of rows keyed by ``key``, held under an exclusive lock while open.

    ``with RowFile(path) as rf: rf.rows ...; rf.append(row)``. Opening reads the existing rows (repairing a torn last
    row by truncation, refusing duplicates); each ``append`` is written, flushed and fsynced before it returns.
    """

    def __init__(self, path: str | os.PathLike, key: str = "index"):
        self.path = Path(path)
        self.key = key
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.rows: list[dict] = []
        self._lock = None
        self._f = None

    def __enter__(self) -> RowFile:
        parent = self.path.parent
        if parent.is_symlink() and not parent.exists():
            raise FileError(f"{parent}: a symbolic link to {os.readlink(parent)}, which does not exist; give an "
                            "output directory")
        if parent.exists() and not parent.is_dir():
            raise FileError(f"{parent}: a file, not a directory; give an output directory")
        parent.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.lock_path, "a+")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.seek(0)
            holder = self._lock.read().strip() or "another process"
            self._lock.close()
            raise RunLocked(f"{self.path.parent}: another run is writing {self.path.name} ({holder}); wait for it to "
                            "finish, or use another output directory") from None
        self._lock.seek(0)
        self._lock.truncate()
        self._lock.write(f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        self._lock.flush()
        try:
            self.rows = self._load()
            self._f = open(self.path, "a", encoding="utf-8")
        except BaseException:
            self._release()
            raise
        return self

    def _load(self) -> list[dict]:
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        complete = data.rfind(b"\n") + 1
        if complete < len(data):  # a row cut by a crash: drop it by truncating, never by rewriting the file
            if _is_json(data[complete:]):  # a complete last row that only lacks its newline
                with open(self.path, "ab") as f:
                    f.write(b"\n")
                data += b"\n"
            else:
                log.warning("%s:%d: dropping a partial last row (interrupted write)", self.path,
                            data.count(b"\n") + 1)
                os.truncate(self.path, complete)
                data = data[:complete]
        return parse_rows(data, self.path, self.key)

    def append(self, row: dict) -> None:
        self._f.write(json.dumps(row) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())
        self.rows.append(row)

    def _release(self) -> None:
        if self._lock is not None:
            fcntl.flock(self._lock, fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def __exit__(self, *exc) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
        self._release()
