"""Errors: every problem+json answer (RFC 9457) becomes a :class:`ProblemError`."""

from __future__ import annotations

from typing import Any

import httpx


class ProblemError(Exception):
    """An error answer of the service (any 4xx/5xx), with the problem document's fields.

    ``status`` (HTTP status), ``title``, ``detail``, ``errors`` (``[{"loc": [...], "msg": ...}]``
    naming each offending value), ``type`` (a URI naming the kind of problem), ``request_id``
    (the ``X-Request-ID`` to quote in a report) and ``document`` (the whole problem, a dict).
    """

    def __init__(self, status: int, title: str, detail: str, errors: list[dict[str, Any]] | None = None, *,
                 type: str = "about:blank", request_id: str | None = None,
                 document: dict[str, Any] | None = None) -> None:
        self.status = status
        self.title = title
        self.detail = detail
        self.errors = list(errors or [])
        self.type = type
        self.request_id = request_id
        self.document = document if document is not None else {
            "type": type, "title": title, "status": status, "detail": detail, "errors": self.errors}
        super().__init__(str(self))

    def __str__(self) -> str:
        text = f"{self.status} {self.title}: {self.detail}"
        extra = [e for e in self.errors if str(e.get("msg", "")) not in self.detail]  # what the detail leaves out
        where = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', []))}: {e.get('msg', '')}" for e in extra)
        return f"{text} [{where}]" if where else text

    @classmethod
    def from_document(cls, document: dict[str, Any], request_id: str | None = None) -> ProblemError:
        """From a problem document (an error answer, or a failed job's ``error``)."""
        return cls(int(document.get("status", 500)), str(document.get("title", "Error")),
                   str(document.get("detail", "")), document.get("errors") or [],
                   type=str(document.get("type", "about:blank")), request_id=request_id, document=document)

    @classmethod
    def from_response(cls, response: httpx.Response) -> ProblemError:
        """From an error response: its problem document, or (any other body) its status and text."""
        request_id = response.headers.get("x-request-id")
        media = response.headers.get("content-type", "").split(";")[0].strip().lower()
        if media in ("application/problem+json", "application/json"):
            try:
                document = response.json()
            except ValueError:
                document = None
            if isinstance(document, dict) and "status" in document:
                return cls.from_document(document, request_id)
        return cls(response.status_code, response.reason_phrase or "Error", response.text[:2000],
                   request_id=request_id)


class JobFailed(ProblemError):
    """A job ended ``failed`` (its ``error`` problem) or ``cancelled``; ``job`` is its last document."""

    def __init__(self, job: dict[str, Any]) -> None:
        error = job.get("error") or {"status": 409, "title": "Job cancelled",
                                     "detail": f"job {job.get('id')} was {job.get('status')}"}
        base = ProblemError.from_document(error)
        super().__init__(base.status, base.title, base.detail, base.errors, type=base.type, document=base.document)
        self.job = job
