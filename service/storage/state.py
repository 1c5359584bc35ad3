"""The app's storage, opened on first use (so building the app touches no disk)."""

from __future__ import annotations

import threading
from functools import cached_property
from pathlib import Path

from service.jobs.ledger import JobLedger
from service.storage.datasets import DatasetStore
from service.storage.db import Database
from service.storage.idempotency import IdempotencyKeys
from service.storage.models import ModelStore


class Storage:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._lock = threading.Lock()

    @cached_property
    def db(self) -> Database:
        with self._lock:
            return Database(self.data_dir / "ntk.sqlite3")

    @cached_property
    def datasets(self) -> DatasetStore:
        return DatasetStore(self.db, self.data_dir)

    @cached_property
    def models(self) -> ModelStore:
        return ModelStore(self.db, self.data_dir)

    @cached_property
    def jobs(self) -> JobLedger:
        return JobLedger(self.db)

    @cached_property
    def idempotency(self) -> IdempotencyKeys:
        return IdempotencyKeys(self.db)

    def close(self) -> None:
        """Close the ledger; the next use reopens it (an app may run several lifespans)."""
        if "db" in self.__dict__:
            self.db.close()
        for name in ("db", "datasets", "models", "jobs", "idempotency"):
            self.__dict__.pop(name, None)
