"""Exception handlers: every error the app raises becomes a problem document."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from core.kernels.rules import KernelOverflow
from service.problems import ProblemError
from service.responses import problem_response

_SLUGS = {404: "not-found", 405: "method-not-allowed", 401: "unauthorized"}


def _loc_text(loc: list[str | int]) -> str:
    parts = [str(p) for p in loc if p != "body"] or ["body"]
    return ".".join(parts)


def _validation_items(exc: RequestValidationError) -> list[dict[str, Any]]:
    items = []
    for err in exc.errors():
        loc = [p if isinstance(p, (str, int)) else str(p) for p in err.get("loc", ())]
        msg = str(err.get("msg", "invalid value"))
        if err.get("type") == "json_invalid":
            reason = (err.get("ctx") or {}).get("error", "")
            position = f" at character {loc[1]}" if len(loc) > 1 else ""
            loc = ["body"]
            msg = f"Request body is not valid JSON{position} ({reason}); numbers must be finite (no NaN or Infinity)."
        elif msg.startswith("Value error, "):
            msg = msg.removeprefix("Value error, ")
        items.append({"loc": loc, "msg": msg})
    return items


async def _problem_error(request: Request, exc: ProblemError) -> Response:
    return problem_response(exc, request)


async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"No resource at {request.url.path}."
    elif exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        detail = f"{request.method} is not allowed on {request.url.path}; allowed: {allowed}."
    problem = ProblemError(exc.status_code, detail, slug=_SLUGS.get(exc.status_code), headers=exc.headers)
    return problem_response(problem, request)


async def _kernel_overflow(request: Request, exc: KernelOverflow) -> Response:
    """A kernel that overflows is the request's doing (its scales, depth or dtype): 422 at the layer."""
    problem = ProblemError(422, str(exc), slug="non-finite-result", title="Result is not finite",
                           errors=[{"loc": ["body", "kernel", *exc.path], "msg": str(exc)}])
    return problem_response(problem, request)


async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
    items = _validation_items(exc)
    first = items[0] if items else {"loc": ["body"], "msg": "invalid request"}
    more = f" (and {len(items) - 1} more)" if len(items) > 1 else ""
    detail = f"{_loc_text(first['loc'])}: {first['msg']}{more}"
    problem = ProblemError(422, detail, slug="validation-error", title="Invalid request", errors=items)
    return problem_response(problem, request)


def install_error_handlers(app: FastAPI) -> None:
    """Route every framework and application error to a problem document."""
    app.add_exception_handler(ProblemError, _problem_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(KernelOverflow, _kernel_overflow)  # type: ignore[arg-type]
