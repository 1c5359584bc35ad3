"""HTTP: the declared operations, retries with backoff, problem documents, resumable downloads.

Retries (at most ``max_retries`` per call, each wait at most ``max_backoff`` seconds):
``503`` answers (overload, no GPU worker) after their ``Retry-After`` (else exponential backoff);
connections that could not be opened; and, for operations safe to repeat, connections dropped
before the answer. Every creating request carries one ``Idempotency-Key`` for all its attempts,
so a retry never creates twice. Downloads resume where they stopped with ``Range`` and
``If-Range`` (the first answer's ``ETag``): a changed result is fetched whole again.
"""

from __future__ import annotations

import email.utils
import json
import random
import re
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import IO, Any

import httpx
import numpy as np

from ntk_client.errors import ProblemError
from ntk_client.operations import JSON, OPERATIONS, Operation

try:  # orjson parses large JSON answers several times faster; the standard library otherwise
    from orjson import loads
except ImportError:  # pragma: no cover - depends on the environment
    from json import loads

#: Transport errors after which the request certainly never reached the application.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout)
#: Errors of a connection dropped while sending or receiving (not timeouts: a slow computation is not retried).
_DROPPED = (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError, httpx.ConnectError, httpx.ConnectTimeout)
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


def retry_after_seconds(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delay-seconds or an HTTP date), ``None`` if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


class Session:
    """An ``httpx.Client`` that speaks the operations of :mod:`ntk_client.operations`."""

    def __init__(self, base_url: str, *, api_key: str | None, timeout: float, max_retries: int,
                 max_backoff: float, transport: httpx.BaseTransport | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        headers = {"User-Agent": "ntk-client/0.1"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout,
                                 transport=transport)
        self.max_retries = max(0, int(max_retries))
        self.max_backoff = float(max_backoff)
        self.sleep = sleep

    def close(self) -> None:
        self.http.close()

    # ------------------------------------------------------------------------------ waiting
    def _wait(self, attempt: int, response: httpx.Response | None = None) -> None:
        delay = retry_after_seconds(response.headers.get("retry-after")) if response is not None else None
        if delay is None:
            delay = 0.25 * 2**attempt * (1 + 0.2 * random.random())
        self.sleep(min(delay, self.max_backoff))

    # ------------------------------------------------------------------------------ one call
    def call(self, name: str, *, path: Mapping[str, str] | None = None, json_body: Mapping[str, Any] | None = None,
             content: bytes | None = None, params: Mapping[str, Any] | None = None, accept: str = JSON
             ) -> httpx.Response:
        """Send operation ``name``; the successful response, or :class:`ProblemError`.

        ``json_body`` fields that are ``None`` are left out (the server's defaults apply).
        """
        op = OPERATIONS[name]
        url = op.path.format(**(path or {}))
        headers = {"Accept": accept}
        if json_body is not None:
            body = {key: value for key, value in json_body.items() if value is not None}
            _check_fields(name, op, body, params)
            content = json.dumps(body, allow_nan=False, separators=(",", ":"), default=_plain).encode()
        else:
            _check_fields(name, op, {}, params)
        if op.content is not None:
            headers["Content-Type"] = op.content
        if op.creates:
            headers["Idempotency-Key"] = uuid.uuid4().hex  # one key for every attempt of this call
        query = {key: value for key, value in (params or {}).items() if value is not None}
        attempt = 0
        while True:
            try:
                response = self.http.request(op.method, url, content=content, params=query, headers=headers)
            except _DROPPED as exc:
                if attempt >= self.max_retries or not (isinstance(exc, _NOT_SENT) or op.retry_safe):
                    raise
                self._wait(attempt)
                attempt += 1
                continue
            if response.status_code == 503 and attempt < self.max_retries:
                self._wait(attempt, response)
                attempt += 1
                continue
            if response.status_code >= 400:
                raise ProblemError.from_response(response)
            return response

    def json(self, name: str, **kwargs: Any) -> Any:
        """``call`` and the JSON document of the answer."""
        return loads(self.call(name, **kwargs).content)

    # ------------------------------------------------------------------------------ downloads
    def download(self, name: str, file: IO[bytes], *, path: Mapping[str, str], params: Mapping[str, Any],
                 accept: str) -> int:
        """Stream operation ``name``'s answer into ``file`` (from its start), resuming after dropped connections.

        After a drop, asks for the rest with ``Range: bytes=<have>-`` and ``If-Range: <ETag>``; a
        ``206`` is appended, a ``200`` (the representation changed) restarts the file. Returns the
        number of bytes written.
        """
        op = OPERATIONS[name]
        _check_fields(name, op, {}, params)
        url = op.path.format(**path)
        query = {key: value for key, value in params.items() if value is not None}
        written, total, etag = 0, None, None
        attempt = 0
        while True:
            headers = {"Accept": accept, "Accept-Encoding": "identity"}  # ranges count the bytes as stored
            if written:
                headers["Range"] = f"bytes={written}-"
                if etag:
                    headers["If-Range"] = etag
            try:
                with self.http.stream(op.method, url, params=query, headers=headers) as response:
                    if response.status_code == 503 and attempt < self.max_retries:
                        response.read()
                        self._wait(attempt, response)
                        attempt += 1
                        continue
                    if response.status_code >= 400:
                        response.read()
                        raise ProblemError.from_response(response)
                    if response.status_code == 206:
                        match = _CONTENT_RANGE.fullmatch(response.headers.get("content-range", ""))
                        if match is None or int(match.group(1)) != written:
                            raise ProblemError(502, "Bad range answer", "the server answered a range request with "
                                               f"Content-Range {response.headers.get('content-range')!r}, not from "
                                               f"byte {written}")
                        total = None if match.group(3) == "*" else int(match.group(3))
                    else:  # the whole representation: from the start
                        file.seek(0)
                        file.truncate()
                        written = 0
                        etag = response.headers.get("etag")
                        length = response.headers.get("content-length")
                        total = int(length) if length is not None else None
                    for chunk in response.iter_raw():  # as received: nothing buffered is lost on a drop
                        file.write(chunk)
                        written += len(chunk)
            except _DROPPED:
                if attempt >= self.max_retries:
                    raise
                self._wait(attempt)
                attempt += 1
                continue
            if total is None or written == total:
                file.flush()
                return written
            if attempt >= self.max_retries:  # a short body without an error
                raise ProblemError(502, "Incomplete download", f"received {written} of {total} bytes of {url}")
            attempt += 1


def _plain(value: Any) -> Any:
    """NumPy scalars and arrays in a request body as JSON numbers and lists."""
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _check_fields(name: str, op: Operation, body: Mapping[str, Any], params: Mapping[str, Any] | None) -> None:
    """A field an operation does not declare is a bug of this client, never sent."""
    unknown = set(body) - op.body
    unknown_query = set(params or {}) - op.query
    if unknown or unknown_query:
        raise AssertionError(f"{name}: undeclared fields {sorted(unknown | unknown_query)} (ntk_client.operations)")
