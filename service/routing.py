"""The route class every API route uses: checks, admission control, bodies parsed off the loop.

For each request, in this order:
1. API keys (when ``NTK_API_KEYS`` is set): a valid ``Authorization: Bearer`` key, else 401;
2. ``Accept``: one of the media types the route produces, else 406;
3. for routes with a JSON body: ``Content-Type`` JSON (or absent), else 415;
4. for synchronous computations (:data:`service.compute.ADMITTED_OPERATIONS`): admission — a
   place (compute slot or bounded queue), or an immediate 503 (its body received and discarded,
   never stored, so that a client still sending it reads the 503 rather than a reset). The body
   is then read, the request waits for a slot (dropped if its client disconnects) and keeps it
   until its response has been sent;
5. the body is parsed with orjson, which refuses NaN/Infinity tokens (→ 422); bodies over 1 MiB
   are parsed and validated off the event loop (:mod:`service.bodies`).
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Callable, Coroutine, Iterable
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import get_route_path
from starlette.types import Message, Receive, Scope, Send

from service.auth import authenticate
from service.bodies import BodyBuffer, loads
from service.compute import ADMITTED_OPERATIONS, OVERLOADED_RESPONSE, TICKET_SCOPE_KEY, ClientGone
from service.negotiation import negotiate
from service.observability import logger
from service.openapi_doc import COMMON_ERRORS
from service.problems import ProblemError
from service.responses import ORJSONResponse

#: Bodies larger than this are parsed (and validated) off the event loop.
_OFF_LOOP_PARSE_BYTES = 1 << 20
#: The scope key of an admitted request's body buffer (see ``NTKRoute.handle``).
BODY_SCOPE_KEY = "ntk.body"


class ORJSONRequest(Request):
    """A request whose ``json()`` is orjson (strict: no NaN/Infinity tokens), or the body value
    already validated off the loop (FastAPI then accepts the model instance as it is)."""

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = loads(await self.body())
        return self._json


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length" and value.isdigit():
            return int(value)
    return None


async def _discard_body(receive: Receive) -> None:
    """Receive and drop the request body (bounded by the body-size limit upstream), so that the
    client, which sends it before reading the answer, gets the answer instead of a reset."""
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body", False):
            return


async def _read_body(receive: Receive, declared: int | None) -> BodyBuffer | deque[bytes]:
    """The whole request body: large ones of known length in one buffer (never joined on the
    loop), others as received. ``ClientGone`` if the client disconnects meanwhile."""
    body: BodyBuffer | deque[bytes] = (
        BodyBuffer(declared) if declared is not None and declared > _OFF_LOOP_PARSE_BYTES else deque())
    try:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGone()
            if message.get("body"):
                body.append(message["body"])
            if not message.get("more_body", False):
                return body
    except BaseException:
        if isinstance(body, BodyBuffer):
            body.close()
        raise


def _replay(body: BodyBuffer | deque[bytes], receive: Receive) -> Receive:
    """``receive`` that hands out ``body`` once (forgetting each chunk) and then defers to the connection."""
    chunks = body if isinstance(body, deque) else deque([body])
    if not chunks:
        chunks.append(b"")

    async def replay() -> Message:
        if chunks:
            chunk = chunks.popleft()
            if isinstance(chunk, BodyBuffer):
                if chunk.taken:  # handed to the request as its body already: nothing left to receive
                    return await receive()
                chunk = bytes(chunk.data)  # only if something reads the stream rather than request.body()
            return {"type": "http.request", "body": chunk, "more_body": bool(chunks)}
        return await receive()

    return replay


#: The order of methods in ``Allow``.
_METHOD_ORDER = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


#: The app-state key of the table of every path's methods (see :func:`allowed_methods`).
METHODS_STATE_KEY = "route_methods"


def route_methods(routers: Iterable[APIRouter]) -> list[tuple[re.Pattern[str], frozenset[str]]]:
    """Each route's path pattern and methods, for :func:`allowed_methods` (built once per app)."""
    return [(route.path_regex, frozenset(route.methods)) for router in routers for route in router.routes
            if isinstance(route, APIRoute) and route.methods]


def allowed_methods(scope: Scope) -> list[str]:
    """Every method the app serves at the request's path (RFC 9110 ``Allow``), not only those of
    the first route whose path matched (Starlette's own 405 lists that one route's)."""
    path = get_route_path(scope)
    table = getattr(scope["app"].state, METHODS_STATE_KEY)
    methods = set().union(*(methods for pattern, methods in table if pattern.match(path)))
    return sorted(methods, key=lambda m: (_METHOD_ORDER.index(m) if m in _METHOD_ORDER else len(_METHOD_ORDER), m))


class NTKRoute(APIRoute):
    """APIRoute with the checks and admission above; produced media types come from ``responses``."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        self.admitted = self.operation_id in ADMITTED_OPERATIONS
        if self.admitted:
            self.responses = {**self.responses, 503: OVERLOADED_RESPONSE}
        self.offers = self.produces()

    def produces(self) -> list[str]:
        offers = [getattr(self.response_class, "media_type", None) or "application/json"]
        for status, spec in (self.responses or {}).items():
            if str(status).startswith("2"):
                offers += [m for m in spec.get("content", {}) if m not in offers]
        return offers

    def check(self, request: Request) -> None:
        """Steps 1–3: authentication, ``Accept``, ``Content-Type``."""
        authenticate(request)
        chosen = negotiate(request.headers.get("accept"), self.offers)
        if chosen is None:
            raise ProblemError(
                406,
                f"Cannot produce {request.headers.get('accept')!r}; this endpoint offers {', '.join(self.offers)}.",
                slug="not-acceptable",
            )
        request.state.media_type = chosen
        content_type = request.headers.get("content-type")
        if self.body_field is not None and content_type is not None and not _is_json(content_type):
            raise ProblemError(
                415,
                f"Content-Type {content_type!r} is not supported here; send application/json.",
                slug="unsupported-media-type",
            )

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.methods and scope["method"] not in self.methods:  # 405 comes first
            raise HTTPException(405, headers={"Allow": ", ".join(allowed_methods(scope))})
        self.check(Request(scope, receive))
        if not self.admitted:
            await super().handle(scope, receive, send)
            return
        admission = scope["app"].state.admission
        declared = _content_length(scope)
        try:
            ticket = admission.admit(declared or 0)  # 503 at once, the body discarded unread
        except ProblemError:
            await _discard_body(receive)  # a client still sending would otherwise never read the 503
            raise
        body: BodyBuffer | deque[bytes] = deque()
        try:
            body = await _read_body(receive, declared)
            admission.arrived(ticket, body.filled if isinstance(body, BodyBuffer) else sum(map(len, body)))
            await admission.wait(ticket, receive)
            scope[TICKET_SCOPE_KEY] = ticket
            if isinstance(body, BodyBuffer):
                scope[BODY_SCOPE_KEY] = body
            await super().handle(scope, _replay(body, receive), send)
        except ClientGone:
            admission.abandon(ticket)
            logger.info("client disconnected before its computation started; dropped", extra={"path": scope["path"]})
        finally:
            admission.release(ticket)
            if isinstance(body, BodyBuffer):
                body.close()

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        field = self.body_field
        single_model = field is not None and not self._embed_body_fields and len(self.dependant.body_params) == 1

        async def route_handler(request: Request) -> Response:
            if field is None:
                return await handler(request)
            request = ORJSONRequest(request.scope, request.receive)
            buffer: BodyBuffer | None = request.scope.get(BODY_SCOPE_KEY)
            if buffer is not None:  # read by handle() already
                request._body = buffer.data  # type: ignore[assignment]
                buffer.taken = True
            content_type = request.headers.get("content-type")
            if single_model and content_type is not None:
                body = await request.body()
                if len(body) > _OFF_LOOP_PARSE_BYTES:
                    request._json = await request.app.state.body_parser.parse(field, body, buffer)
            return await handler(request)

        return route_handler


#: ``?limit=`` of list operations: items per page.
PageLimit = Annotated[int, Query(ge=1, le=100, description="Items per page.")]
#: ``?page_token=`` of list operations: the ``next_page_token`` of the previous page (base64url).
PageToken = Annotated[str | None, Query(max_length=100, pattern=r"^[A-Za-z0-9_-]+$",
                                         description="next_page_token of the previous page; omit for the first.")]


def v1_router(tag: str) -> APIRouter:
    """A router for one resource, mounted under ``/v1``: NTK route class, the shared problem responses."""
    return APIRouter(prefix="/v1", tags=[tag], route_class=NTKRoute, responses=COMMON_ERRORS,
                     default_response_class=ORJSONResponse)
