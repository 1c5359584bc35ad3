"""Large JSON request bodies: parsed and validated in helper processes, off the event loop.

``orjson.loads`` and pydantic validation hold the GIL for their whole run (about 0.8 s for a
46 MB body of 2.4 million numbers), so a worker *thread* would still stall the event loop. Bodies
over :data:`PROCESS_PARSE_BYTES` for a pydantic-model body are therefore parsed and validated in a
small pool of spawned processes (one per compute thread, started on first use, at a lower CPU
priority). A body read into a :class:`BodyBuffer` reaches them by memory mapping (no copy under
the GIL); the validated model comes back pickled (its arrays as raw bytes), which the event
loop's process takes in milliseconds. Other bodies are parsed in a worker thread. Errors are FastAPI's: invalid JSON and
validation errors become the same ``RequestValidationError`` (a 422 problem), at most
:data:`MAX_ERRORS` of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import mmap
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import anyio
import orjson
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

#: Bodies at least this large are parsed in a helper process (smaller ones in a thread).
PROCESS_PARSE_BYTES = 4 << 20
#: At most this many validation errors are reported for a large body.
MAX_ERRORS = 100
#: Scheduling priority of the helpers relative to the server (higher: less CPU when it is scarce).
HELPER_NICENESS = 10


def _init_helper(parent: int) -> None:
    """In a helper: yield the CPU to the server's own threads (its event loop first of all), ignore
    Ctrl-C (the server shuts the pool down) and exit when the server is gone."""
    os.nice(HELPER_NICENESS)
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(0)

    threading.Thread(target=watch, name="ntk-parent-watch", daemon=True).start()


def _json_error(exc: orjson.JSONDecodeError) -> list[dict[str, Any]]:
    """FastAPI's error for a body that is not JSON."""
    return [{"type": "json_invalid", "loc": ("body", exc.pos), "msg": "JSON decode error", "input": {},
             "ctx": {"error": exc.msg}}]


def _plain_errors(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Errors without their (possibly huge) inputs and with picklable contexts, located in the body."""
    plain = []
    for err in errors[:MAX_ERRORS]:
        item = {"type": err.get("type"), "loc": ("body", *err.get("loc", ())), "msg": err.get("msg", "")}
        if err.get("ctx"):
            item["ctx"] = {k: v if isinstance(v, (str, int, float)) else str(v) for k, v in err["ctx"].items()}
        plain.append(item)
    return plain


def parse_and_validate(model: type[BaseModel], body: bytes | tuple[int, int, int]) -> tuple[bool, Any]:
    """``(True, instance)`` or ``(False, errors)``; what a helper process runs.

    ``body``: the bytes, or ``(pid, fd, size)`` of the server's :class:`BodyBuffer` to map.
    """
    try:
        if isinstance(body, tuple):
            pid, fd, size = body
            with open(f"/proc/{pid}/fd/{fd}", "rb") as file, \
                    mmap.mmap(file.fileno(), size, access=mmap.ACCESS_READ) as mapped, memoryview(mapped) as view:
                data = orjson.loads(view)
        else:
            data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return False, _json_error(exc)
    try:
        return True, model.model_validate(data)
    except ValidationError as exc:
        return False, _plain_errors(exc.errors(include_url=False))


def loads(body: bytes | bytearray | mmap.mmap) -> Any:
    """``orjson.loads`` of any bytes-like body (an mmap through a view, released at once)."""
    with memoryview(body) as view:
        return orjson.loads(view)


def _validate_in_thread(field: Any, body: bytes | bytearray | mmap.mmap) -> tuple[bool, Any]:
    try:
        data = loads(body)
    except orjson.JSONDecodeError as exc:
        return False, _json_error(exc)
    value, errors = field.validate(data, {}, loc=("body",))
    return (False, [{k: v for k, v in e.items() if k != "input"} for e in errors[:MAX_ERRORS]]) if errors \
        else (True, value)


class BodyBuffer:
    """A request body of known length, filled as it arrives. On Linux it lives in an anonymous
    memory file the helpers map (``/proc/<pid>/fd/<fd>``), so a large body reaches them without
    being copied under the GIL; elsewhere it is a ``bytearray``. ``data`` is the body (bytes-like)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.filled = 0
        self.taken = False  # given to the request as its body (see service.routing)
        self.fd: int | None = None
        self.data: mmap.mmap | bytearray
        if hasattr(os, "memfd_create") and size > 0 and Path(f"/proc/{os.getpid()}/fd").is_dir():
            self.fd = os.memfd_create("ntk-request-body", os.MFD_CLOEXEC)
            os.ftruncate(self.fd, size)
            self.data = mmap.mmap(self.fd, size)
        else:
            self.data = bytearray(size)

    def append(self, chunk: bytes) -> None:
        end = self.filled + len(chunk)
        if end > self.size:
            raise ValueError("request body longer than its Content-Length")
        self.data[self.filled:end] = chunk
        self.filled = end

    def shared(self) -> tuple[int, int, int] | None:
        """What a helper process needs to map the body, when it can."""
        return None if self.fd is None else (os.getpid(), self.fd, self.size)

    def close(self) -> None:
        if isinstance(self.data, mmap.mmap):
            with contextlib.suppress(BufferError):  # still viewed somewhere: it goes with its last reference
                self.data.close()
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class BodyParser:
    """The helper processes of one app (``app.state.body_parser``): started on first use, shut
    down with the app (and on their own if the server dies)."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def pool(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=_init_helper, initargs=(os.getpid(),))
            return self._pool

    def drop(self, broken: ProcessPoolExecutor | None = None) -> None:
        """Shut the pool down (only if it is still ``broken``, when given); the next use starts a fresh one."""
        with self._lock:
            pool = self._pool
            if pool is None or (broken is not None and pool is not broken):
                return
            self._pool = None
        pool.shutdown(wait=False, cancel_futures=True)

    async def parse(self, field: Any, body: bytes | bytearray | mmap.mmap, buffer: BodyBuffer | None = None) -> Any:
        """The validated value of a large JSON ``body`` (in ``buffer`` when given) for FastAPI's body
        ``field``; 422 if invalid."""
        model = field.field_info.annotation
        result: tuple[bool, Any] | None = None
        if len(body) >= PROCESS_PARSE_BYTES and isinstance(model, type) and issubclass(model, BaseModel):
            pool = self.pool()
            shared = None if buffer is None else buffer.shared()
            try:
                if shared is not None:
                    try:
                        result = await asyncio.wrap_future(pool.submit(parse_and_validate, model, shared))
                    except OSError:  # the helper could not map it (a restricted /proc): send the bytes
                        shared = None
                if shared is None:
                    result = await asyncio.wrap_future(pool.submit(parse_and_validate, model, bytes(body)))
            except BrokenProcessPool:  # a helper died (e.g. killed for memory): parse here, fresh pool next time
                self.drop(pool)
        if result is None:
            result = await anyio.to_thread.run_sync(_validate_in_thread, field, body)
        ok, value = result
        if not ok:
            raise RequestValidationError(value)
        return value
