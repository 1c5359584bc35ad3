"""Running CPU-heavy core calls off the event loop (bounded worker threads)."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

import anyio
from starlette.requests import Request

T = TypeVar("T")


async def run_compute(request: Request, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` in a worker thread; at most ``NTK_COMPUTE_THREADS`` at once.

    numpy, BLAS and numba release the GIL, so health checks keep answering meanwhile.
    """
    limiter: anyio.CapacityLimiter = request.app.state.compute_limiter
    return await anyio.to_thread.run_sync(partial(fn, *args, **kwargs), limiter=limiter)
