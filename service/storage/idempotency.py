"""``Idempotency-Key`` records: a retry with the same key and body gets the original resource."""

from __future__ import annotations

from service.problems import invalid
from service.storage.db import Database
from service.timestamps import utc_timestamp


class IdempotencyKeys:
    def __init__(self, db: Database) -> None:
        self.db = db

    def lookup(self, owner: str, endpoint: str, key: str, fingerprint: str) -> str | None:
        """The resource id an earlier identical request created; 422 if the key was used for another body."""
        rows = self.db.query(
            "SELECT fingerprint, resource_id FROM idempotency WHERE owner=? AND endpoint=? AND key=?",
            (owner, endpoint, key),
        )
        if not rows:
            return None
        if rows[0]["fingerprint"] != fingerprint:
            raise invalid(["header", "Idempotency-Key"],
                          "this Idempotency-Key was already used with a different request body; use a new key")
        return str(rows[0]["resource_id"])

    def remember(self, owner: str, endpoint: str, key: str, fingerprint: str, resource_id: str) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO idempotency VALUES (?, ?, ?, ?, ?, ?)",
            (owner, endpoint, key, fingerprint, resource_id, utc_timestamp()),
        )
