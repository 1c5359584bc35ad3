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
