"""The route class every API route uses: authentication, content negotiation, fast JSON.

Before the endpoint runs, in this order:
1. API keys (when ``NTK_API_KEYS`` is set): a valid ``Authorization: Bearer`` key, else 401;
2. ``Accept``: one of the media types the route produces, else 406;
3. for routes with a JSON body: ``Content-Type`` JSON (or absent), else 415;
   the body is parsed with orjson, which refuses NaN/Infinity tokens (→ 422).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import anyio
import orjson
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

from service.auth import authenticate
from service.negotiation import negotiate
from service.problems import ProblemError

_THREAD_PARSE_BYTES = 1 << 20


class ORJSONRequest(Request):
    """A request whose ``json()`` is orjson (strict: no NaN/Infinity tokens).

    Bodies over 1 MiB are parsed in a worker thread so the event loop keeps serving.
    """

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            if len(body) > _THREAD_PARSE_BYTES:
                self._json = await anyio.to_thread.run_sync(orjson.loads, body)
            else:
                self._json = orjson.loads(body)
        return self._json


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


class NTKRoute(APIRoute):
    """APIRoute with the checks above; produced media types come from ``responses``."""

    def produces(self) -> list[str]:
        offers = [getattr(self.response_class, "media_type", None) or "application/json"]
        for status, spec in (self.responses or {}).items():
            if str(status).startswith("2"):
                offers += [m for m in spec.get("content", {}) if m not in offers]
        return offers

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        offers = self.produces()
        json_body = self.body_field is not None

        async def route_handler(request: Request) -> Response:
            authenticate(request)
            chosen = negotiate(request.headers.get("accept"), offers)
            if chosen is None:
                raise ProblemError(
                    406,
                    f"Cannot produce {request.headers.get('accept')!r}; this endpoint offers {', '.join(offers)}.",
                    slug="not-acceptable",
                )
            request.state.media_type = chosen
            if json_body:
                content_type = request.headers.get("content-type")
                if content_type is not None and not _is_json(content_type):
                    raise ProblemError(
                        415,
                        f"Content-Type {content_type!r} is not supported here; send application/json.",
                        slug="unsupported-media-type",
                    )
                request = ORJSONRequest(request.scope, request.receive)
            return await handler(request)

        return route_handler
