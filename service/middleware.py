"""The one ASGI middleware: request id, body-size limit, access log, metrics, last-resort 500.

A request that ends without a response (its client disconnected while it waited for compute) is
logged and counted with status 499, as nginx does.

It sits inside Starlette's ServerErrorMiddleware and outside the exception handlers, so an
unexpected exception becomes a ``500`` problem that leaks nothing and is logged with the
request id.
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
        sent_id = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = sent_id if _CLIENT_ID.match(sent_id) else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500
        response_started = False

        received = 0
        setting, limit = self.upload_limits.get(scope["path"], ("max_body_bytes", self.max_body_bytes))
        overflow: ProblemError | None = None

        async def send_with_id(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        async def send_wrapper(message: Message) -> None:
            # A framework may turn the overflow raised in receive() into its own 400:
            # whatever the app answers then, the client gets the 413 that names the limit.
            if overflow is None:
                await send_with_id(message)
            elif message["type"] == "http.response.start":
                await problem_response(overflow)(scope, receive, send_with_id)

        async def receive_wrapper() -> Message:
            nonlocal received, overflow
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    overflow = too_large(setting, f"Request body exceeds {limit} bytes")
                    raise overflow
            return message

        try:
            declared = headers.get(b"content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise too_large(setting, f"Request body of {int(declared)} bytes exceeds {limit} bytes")
            await self.app(scope, receive_wrapper, send_wrapper)
            if not response_started:  # the client left before its answer (a dropped queued computation)
                status = 499
        except Exception as exc:  # noqa: BLE001 — the last line of defence
            if isinstance(exc, ProblemError):
                problem = exc
            else:
                logger.exception("unhandled error", extra={"path": scope.get("path")})
                problem = ProblemError(
                    500, f"Internal error; quote request id {request_id} when reporting it.", slug="internal-error"
                )
            if not response_started:
                await problem_response(problem)(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(elapsed)
            logger.info(
                "request",
                extra={"method": method, "path": scope.get("path"), "route": route, "status": status,
                       "duration_ms": round(elapsed * 1000, 2)},
            )
            request_id_var.reset(token)
