"""The durable job ledger. Only the API process writes it; workers write files, never rows.

A job row keeps the validated request (``request``, JSON), the execution ``plan`` (paths, tile
size, tile count: everything needed to resume after a restart), ``status`` ∈ queued, running,
succeeded, failed, cancelled, ``progress`` ∈ [0, 1], an ``error`` problem document when
failed, and a small ``result`` reference (e.g. the model id of a fit job).
"""

from __future__ import annotations

import json
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any

from service.storage.db import Database
from service.timestamps import utc_timestamp

ACTIVE = ("queued", "running")
FINISHED = ("succeeded", "failed", "cancelled")
_ID = re.compile(r"^job_[0-9a-f]{24}$")


def new_job_id() -> str:
    return f"job_{secrets.token_hex(12)}"


@dataclass(frozen=True, slots=True)
class Job:
    id: str
    owner: str
    type: str
    status: str
    progress: float
    created_at: str
    started_at: str | None
    finished_at: str | None
    error: dict[str, Any] | None
    request: dict[str, Any]
    plan: dict[str, Any]
    result: dict[str, Any] | None
    seq: int


def _job(row: Any) -> Job:
    r = dict(row)
    return Job(id=r["id"], owner=r["owner"], type=r["type"], status=r["status"], progress=r["progress"],
               created_at=r["created_at"], started_at=r["started_at"], finished_at=r["finished_at"],
               error=json.loads(r["error"]) if r["error"] else None, request=json.loads(r["request"]),
               plan=json.loads(r["plan"]), result=json.loads(r["result"]) if r["result"] else None, seq=r["seq"])


class JobLedger:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create(self, job_id: str, owner: str, job_type: str, request: dict[str, Any], plan: dict[str, Any]) -> Job:
        self.db.execute(
            "INSERT INTO jobs VALUES (?, ?, ?, 'queued', 0.0, ?, NULL, NULL, NULL, ?, ?, NULL, ?)",
            (job_id, owner, job_type, utc_timestamp(), json.dumps(request), json.dumps(plan), time.time_ns()),
        )
        return self.require(job_id)

    def require(self, job_id: str) -> Job:
        rows = self.db.query("SELECT * FROM jobs WHERE id=?", (job_id,))
        return _job(rows[0])

    def get(self, owner: str, job_id: str) -> Job | None:
        if not _ID.match(job_id):
            return None
        rows = self.db.query("SELECT * FROM jobs WHERE id=? AND owner=?", (job_id, owner))
        return _job(rows[0]) if rows else None

    def list(self, owner: str, limit: int, before_seq: int | None, status: str | None) -> list[Job]:
        sql = "SELECT * FROM jobs WHERE owner=? AND seq < ?" + (" AND status=?" if status else "")
        params: list[Any] = [owner, before_seq if before_seq is not None else 2**63 - 1]
        params += [status] if status else []
        return [_job(r) for r in self.db.query(sql + " ORDER BY seq DESC LIMIT ?", (*params, limit))]

    def active(self) -> list[Job]:
        return [_job(r) for r in self.db.query("SELECT * FROM jobs WHERE status IN ('queued', 'running')")]

    def start(self, job_id: str) -> None:
        self.db.execute("UPDATE jobs SET status='running', started_at=COALESCE(started_at, ?) "
                        "WHERE id=? AND status IN ('queued', 'running')", (utc_timestamp(), job_id))

    def progress(self, job_id: str, fraction: float) -> None:
        self.db.execute("UPDATE jobs SET progress=MAX(progress, ?) WHERE id=? AND status='running'",
                        (min(max(fraction, 0.0), 1.0), job_id))

    def finish(self, job_id: str, status: str, *, error: dict[str, Any] | None = None,
               result: dict[str, Any] | None = None) -> bool:
        """Move an active job to a final status; False if it had already finished."""
        before = self.require(job_id).status
        if before not in ACTIVE:
            return False
        self.db.execute(
            "UPDATE jobs SET status=?, finished_at=?, error=?, result=?, progress=CASE WHEN ?='succeeded' THEN 1.0 "
            "ELSE progress END WHERE id=? AND status IN ('queued', 'running')",
            (status, utc_timestamp(), json.dumps(error) if error else None, json.dumps(result) if result else None, status,
             job_id),
        )
        return True

    def delete(self, job_id: str) -> None:
        self.db.execute("DELETE FROM jobs WHERE id=?", (job_id,))
