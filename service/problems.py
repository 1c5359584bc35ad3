"""RFC 9457 problem details: the one error format of the API.

Every error leaves the service as ``application/problem+json``::

    {"type", "title", "status", "detail", "errors": [{"loc": [...], "msg": "..."}]}

Raise :class:`ProblemError` anywhere (routers, dependencies, middleware-wrapped
receive) and the handlers in :mod:`service.errors` render it.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

from pydantic import BaseModel, Field

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_BASE = "https://ntk-service.dev/problems/"


class ProblemItem(BaseModel):
    """One located complaint: where in the request (``loc``) and what to fix (``msg``)."""

    loc: list[str | int] = Field(description="Path to the offending value, e.g. ['body', 'x1', 3].")
    msg: str


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str = Field(description="URI naming the kind of problem.")
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[ProblemItem] = Field(default_factory=list)


class ProblemError(Exception):
    """An error the client can act on; rendered as a problem document."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        slug: str | None = None,
        title: str | None = None,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.slug = slug
        self.title = title or HTTPStatus(status).phrase
        self.errors = errors or []
        self.headers = headers or {}

    def to_problem(self, instance: str | None = None) -> Problem:
        return Problem(
            type=PROBLEM_BASE + self.slug if self.slug else "about:blank",
            title=self.title,
            status=self.status,
            detail=self.detail,
            instance=instance,
            errors=[ProblemItem(**e) for e in self.errors],
        )


def invalid(loc: list[str | int], msg: str) -> ProblemError:
    """A 422 for one value the client sent: ``loc`` names it, ``msg`` says what to fix."""
    return ProblemError(422, msg, slug="validation-error", title="Invalid request",
                        errors=[{"loc": loc, "msg": msg}])


def too_large(limit: str, detail: str, advice: str = "Submit large work as an asynchronous job: POST /v1/jobs."
              ) -> ProblemError:
    """A 413 naming the ``limit`` setting that was exceeded; by default it points to asynchronous jobs."""
    return ProblemError(
        413,
        f"{detail} (limit NTK_{limit.upper()}). {advice}",
        slug="limit-exceeded",
        title="Request exceeds a size limit",
        errors=[{"loc": ["limits", limit], "msg": detail}],
    )


def job_failed(detail: str) -> dict[str, Any]:
    """The problem document (JSON-ready) stored as a failed job's ``error``."""
    return {"type": PROBLEM_BASE + "job-failed", "title": "Job failed", "status": 422, "detail": detail, "errors": []}


#: The OpenAPI response of operations that write to the data store (``responses=`` of a route).
INSUFFICIENT_STORAGE: dict[int | str, dict[str, Any]] = {507: {
    "description": "What the request would store does not fit in the data directory; nothing of it was kept.",
    "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
}}


def _bytes_text(n: int) -> str:
    for unit, size in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            return f"{n} bytes ({n / size:.1f} {unit})"
    return f"{n} bytes"


def insufficient_storage(what: str, free_bytes: int | None, loc: list[str | int],
                         needed_bytes: int | None = None) -> ProblemError:
    """A 507: ``what`` (e.g. "the dataset upload") did not fit in the data directory; nothing of it was kept.

    ``loc`` names the part of the store that was full (``["store", "datasets"]``); ``free_bytes`` is
    the space left on its filesystem (None if it could not be read), ``needed_bytes`` what the write
    needed when known.
    """
    need = "" if needed_bytes is None else f" (needs {_bytes_text(needed_bytes)})"
    free = "unknown" if free_bytes is None else _bytes_text(free_bytes)
    msg = f"{what}{need} does not fit in the data store: {free} free"
    return ProblemError(
        507,
        f"{msg[0].upper()}{msg[1:]}. Nothing of it was kept; free space (delete datasets, models or jobs you "
        "no longer need) and retry.",
        slug="insufficient-storage",
        title="Insufficient storage",
        errors=[{"loc": loc, "msg": msg}],
    )
