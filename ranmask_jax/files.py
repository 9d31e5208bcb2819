"""Files a run reads and writes: JSON files with errors that name them, fingerprints, and the append-only result
file that certification (and the attack harness) stream rows into.

``RowFile`` guarantees: rows are only ever appended (a row cut by a crash is removed by truncating the file at the
last complete row, never by rewriting it); an exclusive lock (released by the OS when the process dies, even by
kill -9) refuses a second run into the same file; a duplicate key or a damaged row in the middle is an error naming
the line.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def error_line(e: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (at most ``limit`` characters), or its type when it has none: what
    a one-line ``error:`` says of a library's multi-line failure."""
    text = str(e).strip()
    return text.splitlines()[0][:limit] if text else type(e).__name__


class FileError(ValueError):
    """A file that cannot be used as it is; the message names it."""


def read_json(path: str | os.PathLike) -> Any:
    """The parsed contents of a JSON file; a damaged file is a ``FileError`` naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FileError(f"{path}: damaged JSON ({e}); restore it or delete the run directory") from None


@contextlib.contextmanager
def replacing(path: str | os.PathLike):
    """Write a file whole or not at all: yields a temporary name beside ``path``, renamed to ``path`` when the
    block succeeds and removed when it fails. A write error (a full disk) is an ``OSError`` naming ``path``; the
    earlier version of the file, if any, is left as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        raise OSError(f"{path}: cannot write it ({e.strerror or e}); nothing was replaced") from None
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    """``path``'s new contents, whole or not at all (``replacing``)."""
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


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
    lines = data.decode("utf-8", errors="replace").split("\n")
    last = max((i for i, line in enumerate(lines, 1) if line.strip()), default=0)
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            where = "the last row is complete but not JSON" if i == last else "damaged row in the middle of the file"
            raise FileError(f"{path}:{i}: {where}; remove that line to resume") from None
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

    The lock is on the row file itself (``flock``, released by the OS when the process ends, even by kill -9), so
    no second writer can get in by deleting some other file. ``PATH.lock`` beside it only says who is writing (pid
    and start time) for the error a second run gets; it is removed on exit, and a stale one is harmless.
    """

    def __init__(self, path: str | os.PathLike, key: str = "index"):
        self.path = Path(path)
        self.key = key
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.rows: list[dict] = []
        self._f = None

    def __enter__(self) -> RowFile:
        parent = self.path.parent
        if parent.is_symlink() and not parent.exists():
            raise FileError(f"{parent}: a symbolic link to {os.readlink(parent)}, which does not exist; give an "
                            "output directory")
        if parent.exists() and not parent.is_dir():
            raise FileError(f"{parent}: a file, not a directory; give an output directory")
        parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a", encoding="utf-8")  # creates it; appends only
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            note = self.lock_path.read_text().splitlines() if self.lock_path.exists() else []
            holder = note[0] if note else "another process"
            raise RunLocked(f"{self.path.parent}: another run is writing {self.path.name} ({holder}); wait for it to "
                            "finish, or use another output directory") from None
        try:
            if os.fstat(f.fileno()).st_ino != os.stat(self.path).st_ino:  # replaced between open and lock
                raise RunLocked(f"{self.path}: replaced by another process while this run opened it; retry")
            self.lock_path.write_text(
                f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
                f"Only says who writes {self.path.name}: the lock is held on {self.path.name} itself and ends with "
                "that process. Deleting this file changes nothing.\n")
            self.rows = self._load()
        except BaseException:
            f.close()
            raise
        self._f = f
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
        """Write one row, flushed and fsynced; a write error (a full disk) names the file. A row cut by it is
        dropped when the file is next opened, so the rows before it are kept."""
        try:
            self._f.write(json.dumps(row) + "\n")
            self._f.flush()
            os.fsync(self._f.fileno())
        except OSError as e:
            raise OSError(f"{self.path}: cannot write a row ({e.strerror or e}); the {len(self.rows)} rows before it "
                          "are kept, and a rerun resumes after them") from None
        self.rows.append(row)

    def __exit__(self, *exc) -> None:
        if self._f is not None:
            with contextlib.suppress(OSError):  # the note is ours only while it names this process
                if self.lock_path.read_text().startswith(f"pid {os.getpid()},"):
                    self.lock_path.unlink()
            self._f.close()  # releases the lock
            self._f = None
