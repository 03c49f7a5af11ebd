"""One mirror file, opened only while it is used.

DuckDB lets one process open a file read-write and then locks out every other process,
readers included. So no process keeps the file: each use opens it (or joins this process's
open connection), and the last user closes it after `linger_s`. A sync commits a batch and
lets go; `show`, `sql` or a notebook in another process get in between batches. Whoever
finds the file locked waits with backoff, says once that it is waiting, and gives up with
`MirrorBusyError` after `wait_s`. Within one process every user shares one connection
(a cursor each), so a notebook can run a sync and read the mirror without conflict.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Optional

import duckdb

from ..errors import InvalidPathError, MirrorBusyError, MirrorNotFound, NotAMirrorError, StoreError
from ..paths import default_db_path
from . import schema

__all__ = ["Database"]

_DUCKDB_MAGIC = b"DUCK"
#: DuckDB's lock error names the holder: "Conflicting lock is held in /usr/bin/python3.11 (PID 4242) by user ..."
_HOLDER = re.compile(r"held in (?P<program>.+?) \(PID (?P<pid>\d+)\)")
#: What DuckDB (or the OS) says when the file or its folder cannot be written.
_READ_ONLY_SIGNS = ("permission denied", "read-only file system", "read only file system")


def lock_holder(message: str) -> str:
    """`PID 4242 (python3.11)` from DuckDB's lock error, or `another process` when it names none."""
    found = _HOLDER.search(message)
    if found is None:
        return "another process"
    return f"PID {found['pid']} ({os.path.basename(found['program'].strip())})"


class Database:
    """A mirror database file; `connect()` and `transaction()` hand out cursors."""

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        read_only: bool = False,
        wait_s: float = 120.0,
        linger_s: float = 0.0,
        on_wait: Optional[Callable[[str], None]] = None,
    ) -> None:
        self.path = Path(path).expanduser() if path is not None else default_db_path()
        self.read_only = read_only
        self.wait_s = wait_s
        self.linger_s = linger_s
        self.on_wait = on_wait
        self._lock = threading.RLock()
        self._conn: Optional[duckdb.DuckDBPyConnection] = None
        self._users = 0
        self._timer: Optional[threading.Timer] = None
        self.opens = 0

    def __repr__(self) -> str:
        return f"Database(path={str(self.path)!r}, read_only={self.read_only})"

    # ---- opening ---------------------------------------------------------------------------
    def _check_file(self) -> bool:
        """True if the file exists; refuse, without touching it, a file that is not DuckDB."""
        if not self.path.exists():
            if self.read_only:
                raise MirrorNotFound(f"no mirror at {self.path} (run `np-mirror sync` first, or open an existing mirror)")
            return False
        if self.path.is_dir():
            raise NotAMirrorError(f"{self.path} is a directory, not a mirror file")
        with open(self.path, "rb") as fh:
            head = fh.read(16)
        if len(head) < 12 or head[8:12] != _DUCKDB_MAGIC:
            raise NotAMirrorError(f"{self.path} is not a DuckDB database (left untouched)")
        return True

    def _read_only_error(self, why: str) -> InvalidPathError:
        return InvalidPathError(
            f"the mirror {self.path} is read-only ({why}); writing needs write access to the file and its "
            "folder: copy it somewhere writable, or open it read-only (as the reading commands do)"
        )

    def _check_writable(self, existed: bool) -> None:
        """A writer refuses a mirror it cannot write, before DuckDB says something misleading."""
        folder = self.path.parent
        if existed and not os.access(self.path, os.W_OK):
            raise self._read_only_error("no write permission on the file, or a read-only file system")
        if folder.is_dir() and not os.access(folder, os.W_OK | os.X_OK):
            raise self._read_only_error(f"its folder {folder} is not writable, and DuckDB writes its log there")

    def _open(self) -> duckdb.DuckDBPyConnection:
        existed = self._check_file()
        if not self.read_only:
            self._check_writable(existed)
        if not existed:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise InvalidPathError(f"cannot create a mirror at {self.path}: {exc.strerror or exc}") from None
        deadline = time.monotonic() + self.wait_s
        delay = 0.02
        told = False
        while True:
            try:
                con = duckdb.connect(str(self.path), read_only=self.read_only)
                break
            except (duckdb.IOException, duckdb.ConnectionException) as exc:
                text = str(exc)
                if "different configuration" in text:
                    raise StoreError(
                        f"{self.path} is already open in this process with another mode; "
                        "use one Mirror per file in a process"
                    ) from None
                if "lock" not in text.lower():
                    if not self.read_only and any(sign in text.lower() for sign in _READ_ONLY_SIGNS):
                        raise self._read_only_error(text.splitlines()[0]) from None
                    raise NotAMirrorError(f"{self.path} cannot be opened as a mirror: {text.splitlines()[0]}") from None
                holder = lock_holder(text)
                if time.monotonic() >= deadline:
                    raise MirrorBusyError(
                        f"{self.path} stayed locked by {holder} for {self.wait_s:g} s; let it finish or stop it"
                    ) from None
                if not told and self.on_wait is not None:
                    self.on_wait(f"waiting up to {self.wait_s:g} s for {holder} to release {self.path} ...")
                    told = True
                time.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 1.0)
        try:
            self._prepare(con, existed)
        except BaseException:
            con.close()
            raise
        self.opens += 1
        return con

    def _prepare(self, con: duckdb.DuckDBPyConnection, existed: bool) -> None:
        con.execute("SET TimeZone = 'UTC'")
        version = schema.current_version(con)
        if version == schema.SCHEMA_VERSION:
            return
        if version is not None and version < 0:
            tables = sorted(r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall())
            raise NotAMirrorError(
                f"{self.path} is a DuckDB database but not an np-mirror mirror "
                f"(tables: {', '.join(tables[:6])}{'…' if len(tables) > 6 else ''}); left untouched"
            )
        if version is not None and version > schema.SCHEMA_VERSION:
            raise StoreError(f"{self.path} was written by a newer np-mirror (schema {version}); upgrade np-mirror")
        if self.read_only:
            if version is None:
                raise StoreError(f"{self.path} is an empty database, not yet a mirror")
            raise StoreError(f"{self.path} needs a schema upgrade; run any writing command (e.g. sync) once")
        schema.migrate(con)

    # ---- using -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A cursor on this process's connection, opened on demand and released after use."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            if self._conn is None:
                self._conn = self._open()
            self._users += 1
            cursor = self._conn.cursor()
        try:
            yield cursor
        finally:
            cursor.close()
            with self._lock:
                self._users -= 1
                if self._users == 0:
                    if self.linger_s <= 0:
                        self._close_now()
                    else:
                        self._timer = threading.Timer(self.linger_s, self._close_if_idle)
                        self._timer.daemon = True
                        self._timer.start()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """All or nothing: commit on success, roll back on any error (Ctrl-C included)."""
        if self.read_only:
            raise StoreError(f"{self.path} is open read-only")
        with self.connect() as cur:
            cur.execute("BEGIN TRANSACTION")
            try:
                yield cur
            except BaseException:
                with contextlib.suppress(duckdb.Error):
                    cur.execute("ROLLBACK")
                raise
            try:
                cur.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(duckdb.Error):
                    cur.execute("ROLLBACK")
                raise

    def _close_if_idle(self) -> None:
        with self._lock:
            if self._users == 0:
                self._close_now()

    def _close_now(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(duckdb.Error):
                self._conn.close()
            self._conn = None

    @property
    def is_open(self) -> bool:
        return self._conn is not None

    def close(self) -> None:
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._close_now()
