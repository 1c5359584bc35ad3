"""Response encoders: orjson for JSON, problem+json for errors, ``.npy`` for matrices.

Large answers are never rendered on the event loop: JSON holding more than
:data:`STREAM_ENTRIES` array entries is streamed, rendered a block of rows at a time in worker
threads, and ``.npy`` is streamed straight from the array's memory. Either way a response holds
at most about one chunk beyond the arrays themselves.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Mapping
from typing import Any

import anyio
import numpy as np
import orjson
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from service.npy import NPY_MEDIA_TYPE, encode_npy
from service.problems import PROBLEM_MEDIA_TYPE, ProblemError

_ORJSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS

#: JSON content with more array entries than this is streamed (rendered off the loop).
STREAM_ENTRIES = 1 << 16
#: Array entries rendered per step of a streamed response (about 1 MiB of JSON).
_BLOCK_ENTRIES = 1 << 16
#: Bytes per body message of a streamed response.
CHUNK_BYTES = 1 << 20


def dumps(content: Any) -> bytes:
    """JSON bytes via orjson; numpy arrays serialize natively (callers ensure they are finite)."""
    return orjson.dumps(content, default=_default, option=_ORJSON_OPTIONS)


def _default(obj: Any) -> Any:
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    if isinstance(obj, np.ndarray):  # orjson serializes C-contiguous arrays natively
        return np.ascontiguousarray(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot serialize {type(obj).__name__}")


def array_entries(content: Any) -> int:
    """How many numpy array entries ``content`` holds (in nested dicts, lists and tuples)."""
    if isinstance(content, np.ndarray):
        return content.size
    if isinstance(content, Mapping):
        return sum(array_entries(v) for v in content.values())
    if isinstance(content, (list, tuple)):
        return sum(array_entries(v) for v in content if isinstance(v, (np.ndarray, Mapping, list, tuple)))
    return 0


def iter_json(content: Any) -> Iterator[bytes]:
    """``dumps(content)`` in pieces: large arrays a block of rows at a time (the same bytes)."""
    if isinstance(content, np.ndarray) and content.ndim >= 1 and content.size > _BLOCK_ENTRIES:
        rows = max(1, _BLOCK_ENTRIES // max(1, content[0].size))
        for start in range(0, len(content), rows):
            block = dumps(np.ascontiguousarray(content[start:start + rows]))
            yield (b"[" if start == 0 else b",") + block[1:-1]
        yield b"]"
    elif isinstance(content, Mapping) and array_entries(content) > _BLOCK_ENTRIES:
        for i, (key, value) in enumerate(content.items()):
            yield (b"{" if i == 0 else b",") + dumps(key if isinstance(key, str) else str(key)) + b":"
            yield from iter_json(value)
        yield b"}"
    elif isinstance(content, (list, tuple)) and array_entries(content) > _BLOCK_ENTRIES:
        for i, value in enumerate(content):
            yield b"[" if i == 0 else b","
            yield from iter_json(value)
        yield b"]"
    else:
        yield dumps(content)


def _next_chunk(pieces: Iterator[bytes]) -> bytes:
    """The next ``CHUNK_BYTES`` or so of a streamed body (b"" at the end); runs in a worker thread."""
    parts: list[bytes] = []
    size = 0
    for piece in pieces:
        parts.append(piece)
        size += len(piece)
        if size >= CHUNK_BYTES:
            break
    return b"".join(parts)


class ORJSONResponse(JSONResponse):
    """JSON via orjson. Small content is rendered at once; content with more than
    :data:`STREAM_ENTRIES` array entries is streamed (chunked), rendered in worker threads."""

    def __init__(self, content: Any, status_code: int = 200, headers: Mapping[str, str] | None = None,
                 media_type: str | None = None, background: BackgroundTask | None = None) -> None:
        self._stream: Any = None
        if array_entries(content) <= STREAM_ENTRIES:
            super().__init__(content, status_code, headers, media_type, background)
            return
        self._stream = content
        self.status_code = status_code
        if media_type is not None:
            self.media_type = media_type
        self.background = background
        self.init_headers(headers)  # no body yet, hence no Content-Length: chunked

    def render(self, content: Any) -> bytes:
        return dumps(content)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._stream is None:
            await super().__call__(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        pieces = iter_json(self._stream)
        while chunk := await anyio.to_thread.run_sync(_next_chunk, pieces):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        if self.background is not None:
            await self.background()


def problem_response(exc: ProblemError, request: Request | None = None) -> Response:
    """Render ``exc`` as ``application/problem+json``."""
    instance = request.url.path if request is not None else None
    body = exc.to_problem(instance).model_dump(mode="json")
    return Response(
        orjson.dumps(body), status_code=exc.status, headers=exc.headers, media_type=PROBLEM_MEDIA_TYPE
    )


def _npy_header(shape: tuple[int, ...], dtype: np.dtype) -> bytes:
    """The ``numpy.save`` header of a C-ordered array of ``shape`` and ``dtype``."""
    buf = io.BytesIO()
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    try:
        np.lib.format.write_array_header_1_0(buf, header)
    except ValueError:  # a header over 64 KiB needs format 2.0
        buf = io.BytesIO()
        np.lib.format.write_array_header_2_0(buf, header)
    return buf.getvalue()


class NpyResponse(Response):
    """One matrix as NumPy ``.npy`` bytes (little-endian, C order), sent from the array's memory
    ``CHUNK_BYTES`` at a time; a conversion it needs (byte order, layout) runs in a worker thread."""

    media_type = NPY_MEDIA_TYPE

    def __init__(self, array: np.ndarray, status_code: int = 200, headers: Mapping[str, str] | None = None) -> None:
        self.array = array
        self.status_code = status_code
        self.background = None
        little = array.dtype.newbyteorder("<")
        self.header = _npy_header(array.shape, little)
        self.init_headers({**(headers or {}), "content-length": str(len(self.header) + array.size * little.itemsize)})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        little = self.array.dtype.newbyteorder("<")
        array = self.array
        if not (array.flags.c_contiguous and array.dtype == little):
            array = await anyio.to_thread.run_sync(np.ascontiguousarray, array, little)
        data = memoryview(array.reshape(-1)).cast("B") if array.size else memoryview(b"")
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": self.header, "more_body": bool(len(data))})
        for start in range(0, len(data), CHUNK_BYTES):
            end = min(start + CHUNK_BYTES, len(data))
            await send({"type": "http.response.body", "body": bytes(data[start:end]), "more_body": end < len(data)})
        if self.background is not None:
            await self.background()


def npy_response(array: np.ndarray, status_code: int = 200) -> Response:
    """One matrix as NumPy ``.npy`` bytes (little-endian); small ones encoded at once, large ones streamed."""
    if array.size <= STREAM_ENTRIES:
        return Response(encode_npy(array), status_code=status_code, media_type=NPY_MEDIA_TYPE)
    return NpyResponse(array, status_code)
