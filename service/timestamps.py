"""The one timestamp format of the service: RFC 3339 in UTC with milliseconds and ``Z``."""

from __future__ import annotations

import datetime as dt


def utc_timestamp(seconds: float | None = None) -> str:
    """``seconds`` since the epoch (default: now) as e.g. ``2025-01-31T12:00:00.123Z``."""
    moment = dt.datetime.now(dt.UTC) if seconds is None else dt.datetime.fromtimestamp(seconds, dt.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
