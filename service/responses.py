"""Response encoders: orjson for JSON, problem+json for errors, ``.npy`` for matrices."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service.npy import NPY_MEDIA_TYPE, encode_npy
from service.problems import PROBLEM_MEDIA_TYPE, ProblemError

_ORJSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def dumps(content: Any) -> bytes:
    """JSON bytes via orjson; numpy arrays serialize natively (callers ensure they are finite)."""
    return orjson.dumps(content, default=_default, option=_ORJSON_OPTIONS)


class ORJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return dumps(content)


def _default(obj: Any) -> Any:
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    if isinstance(obj, np.ndarray):  # orjson serializes C-contiguous arrays natively
        return np.ascontiguousarray(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot serialize {type(obj).__name__}")


def problem_response(exc: ProblemError, request: Request | None = None) -> Response:
    """Render ``exc`` as ``application/problem+json``."""
    instance = request.url.path if request is not None else None
    body = exc.to_problem(instance).model_dump(mode="json")
    return Response(
        orjson.dumps(body), status_code=exc.status, headers=exc.headers, media_type=PROBLEM_MEDIA_TYPE
    )


def npy_response(array: np.ndarray, status_code: int = 200) -> Response:
    """One matrix as NumPy ``.npy`` bytes (little-endian)."""
    return Response(encode_npy(array), status_code=status_code, media_type=NPY_MEDIA_TYPE)
