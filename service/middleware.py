"""The one ASGI middleware: request id, body-size limit, access log, metrics, last-resort 500.

Each concern is a small piece below, composed in :class:`RequestContextMiddleware`:

- :func:`request_id_of`: the client's ``X-Request-ID`` if well-formed, else a new one; every
  response carries it (:class:`ResponseTracker`);
- :class:`BodyLimit`: ``413`` for a body over its limit, by ``Content-Length`` or as it arrives;
- :func:`record`: one access-log line and the request metrics, whatever the outcome. A request
  that ends without a response (its client disconnected while it waited for compute) is logged
  and counted with status 499, as nginx does;
- :func:`last_resort_problem`: the middleware sits inside Starlette's ServerErrorMiddleware and
  outside the exception handlers, so an unexpected exception becomes a ``500`` problem that
  leaks nothing and is logged with the request id.
"""

from __future__ import annotations

import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.observability import Metrics, logger, request_id_var
from service.problems import ProblemError, too_large
from service.responses import problem_response

_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def request_id_of(headers: dict[bytes, bytes]) -> str:
    """The client's ``X-Request-ID`` when it is a safe token, else a fresh random id."""
    sent_id = headers.get(b"x-request-id", b"").decode("latin-1")
    return sent_id if _CLIENT_ID.match(sent_id) else uuid.uuid4().hex


class ResponseTracker:
    """Sends the response with ``X-Request-ID`` added, remembering whether it started and its status."""

    def __init__(self, send: Send, request_id: str) -> None:
        self._send = send
        self._request_id = request_id.encode()
        self.started = False
        self.status = 500

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            self.status = message["status"]
            message["headers"] = [*message.get("headers", []), (b"x-request-id", self._request_id)]
        await self._send(message)


class BodyLimit:
    """The request body's size limit: ``setting`` (the limit's name for the 413) and ``limit`` bytes."""

    def __init__(self, setting: str, limit: int) -> None:
        self.setting = setting
        self.limit = limit
        self.received = 0
        self.overflow: ProblemError | None = None  # raised once the body went over the limit

    def check_declared(self, headers: dict[bytes, bytes]) -> None:
        """413 at once when ``Content-Length`` already says the body is too large."""
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            raise too_large(self.setting, f"Request body of {int(declared)} bytes exceeds {self.limit} bytes")

    def receive(self, receive: Receive) -> Receive:
        """``receive`` that counts body bytes and raises the 413 when they exceed the limit."""

        async def counted() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                self.received += len(message.get("body", b""))
                if self.received > self.limit:
                    self.overflow = too_large(self.setting, f"Request body exceeds {self.limit} bytes")
                    raise self.overflow
            return message

        return counted

    def send(self, scope: Scope, receive: Receive, send: Send) -> Send:
        """``send`` that, after an overflow, answers the 413 instead of whatever the app sends: a
        framework may turn the overflow raised in ``receive`` into its own 400."""

        async def guarded(message: Message) -> None:
            if self.overflow is None:
                await send(message)
            elif message["type"] == "http.response.start":
                await problem_response(self.overflow)(scope, receive, send)

        return guarded


def last_resort_problem(exc: Exception, request_id: str, scope: Scope) -> ProblemError:
    """A ``ProblemError`` as it is; anything else logged and turned into a 500 that leaks nothing."""
    if isinstance(exc, ProblemError):
        return exc
    logger.exception("unhandled error", extra={"path": scope.get("path")})
    return ProblemError(500, f"Internal error; quote request id {request_id} when reporting it.",
                        slug="internal-error")


def record(metrics: Metrics, scope: Scope, status: int, elapsed: float) -> None:
    """The request's metrics (count and latency by route) and its access-log line."""
    route = getattr(scope.get("route"), "path", None) or "unmatched"
    method = scope.get("method", "")
    metrics.requests.labels(method, route, str(status)).inc()
    metrics.latency.labels(method, route).observe(elapsed)
    logger.info(
        "request",
        extra={"method": method, "path": scope.get("path"), "route": route, "status": status,
               "duration_ms": round(elapsed * 1000, 2)},
    )


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int, upload_limits: dict[str, tuple[str, int]],
                 metrics: Metrics) -> None:
        """``upload_limits``: path → (setting name, bytes) for endpoints that take big uploads."""
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.upload_limits = upload_limits
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        request_id = request_id_of(headers)
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        response = ResponseTracker(send, request_id)
        body = BodyLimit(*self.upload_limits.get(scope["path"], ("max_body_bytes", self.max_body_bytes)))
        try:
            body.check_declared(headers)
            await self.app(scope, body.receive(receive), body.send(scope, receive, response.send))
            if not response.started:  # the client left before its answer (a dropped queued computation)
                response.status = 499
        except Exception as exc:  # noqa: BLE001 — the last line of defence
            problem = last_resort_problem(exc, request_id, scope)
            if not response.started:
                await problem_response(problem)(scope, receive, response.send)
        finally:
            record(self.metrics, scope, response.status, time.perf_counter() - started)
            request_id_var.reset(token)
