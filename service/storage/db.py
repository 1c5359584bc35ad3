"""The SQLite ledger: one file, written only by the API process.

A write that finds the disk full ("database or disk is full") is the 507 problem
(:func:`service.storage.faults.writing`); :meth:`Database.transaction` groups writes so that a
resource's row and its ``Idempotency-Key`` record are kept together or not at all.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from service.storage.faults import writing

_SCHEMA = """
CREATE TABLE IF NOT EXISTS datasets (
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, name TEXT, shape TEXT NOT NULL, dtype TEXT NOT NULL,
    sha256 TEXT NOT NULL, bytes INTEGER NOT NULL, created_at TEXT NOT NULL, seq INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS datasets_owner_seq ON datasets (owner, seq DESC);
CREATE TABLE IF NOT EXISTS models (
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, meta TEXT NOT NULL, created_at TEXT NOT NULL, seq INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS models_owner_seq ON models (owner, seq DESC);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, type TEXT NOT NULL, status TEXT NOT NULL, progress REAL NOT NULL,
    created_at TEXT NOT NULL, started_at TEXT, finished_at TEXT, error TEXT, request TEXT NOT NULL,
    plan TEXT NOT NULL, result TEXT, seq INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_owner_seq ON jobs (owner, seq DESC);
CREATE TABLE IF NOT EXISTS idempotency (
    owner TEXT NOT NULL, endpoint TEXT NOT NULL, key TEXT NOT NULL, fingerprint TEXT NOT NULL,
    resource_id TEXT NOT NULL, created_at TEXT NOT NULL, PRIMARY KEY (owner, endpoint, key)
);
"""


class Database:
    """A serialized SQLite connection (calls are short; a lock keeps threads from interleaving)."""

    def __init__(self, path: Path) -> None:
        self._dir = path.parent
        self._lock = threading.RLock()  # re-entrant: execute() inside transaction()
        with self._writing():
            path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._conn.row_factory = sqlite3.Row
            with self._lock:
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.executescript(_SCHEMA)

    def _writing(self) -> Any:
        return writing("the ledger record", "ledger", self._dir)

    def execute(self, sql: str, params: Iterable[Any] = ()) -> None:
        with self._lock, self._writing():
            self._conn.execute(sql, tuple(params))

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """The statements run inside (by this thread) commit together at the end, or not at all."""
        with self._lock, self._writing():
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:  # SQLite may already have rolled back (e.g. disk full)
                    with contextlib.suppress(sqlite3.Error):
                        self._conn.execute("ROLLBACK")
                raise

    def query(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, tuple(params)).fetchall()

    def ping(self) -> None:
        self.query("SELECT 1")

    def close(self) -> None:
        with self._lock:
            self._conn.close()
