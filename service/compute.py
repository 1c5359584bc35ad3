"""Admission control for synchronous compute, and running core calls off the event loop.

A synchronous computation (a route whose operation id is in :data:`ADMITTED_OPERATIONS`) is
admitted before its body is read: to one of ``NTK_COMPUTE_THREADS`` *slots* or to a FIFO queue of
at most ``NTK_COMPUTE_QUEUE`` requests whose bodies total at most ``NTK_COMPUTE_QUEUE_BYTES``.
Beyond either bound, or after ``NTK_COMPUTE_QUEUE_TIMEOUT`` seconds of waiting, it is answered at
once ``503`` with ``Retry-After`` (a problem document, slug ``overloaded``), and its body is never
read. An admitted request's body is read, then it takes a slot and keeps it until its response has
been sent, so at most ``NTK_COMPUTE_THREADS`` requests hold inputs, results and rendered output at
once. A client that disconnects while its request waits is dropped before the work starts. The route class (:class:`service.routing.NTKRoute`) does all this
around the endpoint; endpoints just call :func:`run_compute`.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

import anyio
from starlette.requests import Request
from starlette.types import Receive

from service.observability import Metrics
from service.openapi_doc import problem
from service.problems import ProblemError

T = TypeVar("T")

#: Operations that run synchronous computations: admitted (slot, queue or 503) before their body is read.
ADMITTED_OPERATIONS = frozenset({
    "computeKernels", "computeEmpiricalKernels", "createModel", "predictWithModel", "modelTrajectory",
    "computeTrajectory", "computeSpectrum", "lazyTraining",
})

#: The scope key under which an admitted request carries its :class:`Ticket`.
TICKET_SCOPE_KEY = "ntk.compute_ticket"

#: The OpenAPI entry of the 503 an admitted operation may answer.
OVERLOADED_RESPONSE: dict[str, Any] = problem(
    "Synchronous compute and its queue are full (or the wait exceeded NTK_COMPUTE_QUEUE_TIMEOUT): "
    "retry after Retry-After seconds, or submit the work as a job (POST /v1/jobs).")
OVERLOADED_RESPONSE["headers"] = {"Retry-After": {
    "description": "Seconds after which the queue is expected to have drained.", "schema": {"type": "integer"}}}


class ClientGone(Exception):
    """The client disconnected before its work started; nothing is computed or stored for it."""


class Ticket:
    """One admitted request: its body arriving, then waiting for a slot, then holding one."""

    __slots__ = ("arrived", "nbytes", "ready", "running", "started")

    def __init__(self, nbytes: int) -> None:
        self.nbytes = nbytes
        self.arrived = False  # its whole body has been read
        self.ready = anyio.Event()  # set when the request is given a slot
        self.running = False
        self.started = 0.0


class AdmissionController:
    """Bounded concurrency (``slots``) in front of a bounded FIFO queue (by count and by body bytes).

    A request is admitted when fewer than ``slots + max_queue`` requests are (reading their body,
    waiting or running) and the bodies of those not yet running, its own (declared) included, stay
    within ``max_queue_bytes``; one that finds fewer than ``slots`` requests admitted is always
    admitted, so a body larger than the byte bound still runs on an idle server. Otherwise: 503
    at once. Its body is read before it takes a slot (a slow upload holds no compute thread);
    slots go to waiting requests whose bodies have arrived, first admitted first. All methods run
    on the event loop; the synchronous ones are atomic there.
    """

    def __init__(self, slots: int, max_queue: int, max_queue_bytes: int, queue_timeout: float,
                 metrics: Metrics | None = None) -> None:
        self.slots = slots
        self.max_queue = max_queue
        self.max_queue_bytes = max_queue_bytes
        self.queue_timeout = queue_timeout
        self.metrics = metrics
        self.running = 0
        self.queue: deque[Ticket] = deque()  # admitted, not yet running: in order of admission
        self.queued_bytes = 0
        self.service_time = 1.0  # seconds a request holds a slot (moving average), for Retry-After

    # --- the transitions: admit, body arrived, wait for a slot, release ---

    def admit(self, nbytes: int) -> Ticket:
        """A place for a request whose body of (declared) ``nbytes`` is about to be read, or a 503."""
        admitted = self.running + len(self.queue)
        if admitted >= self.slots:
            if admitted >= self.slots + self.max_queue:
                raise self._overloaded("queue_full")
            if self.queued_bytes + nbytes > self.max_queue_bytes:
                raise self._overloaded("queue_bytes")
        ticket = Ticket(nbytes)
        self.queue.append(ticket)
        self.queued_bytes += nbytes
        self._observe()
        return ticket

    def arrived(self, ticket: Ticket, nbytes: int) -> None:
        """The request's whole body (``nbytes``) is in memory: it may take a slot. 503 if the body
        turned out larger than declared and no longer fits in the queue's byte bound."""
        self.queued_bytes += nbytes - ticket.nbytes
        ticket.nbytes = nbytes
        if self.queued_bytes > self.max_queue_bytes and self.running + len(self.queue) > self.slots:
            self._remove(ticket)
            self._observe()
            raise self._overloaded("queue_bytes")
        ticket.arrived = True
        self._dispatch()

    async def wait(self, ticket: Ticket, receive: Receive | None = None) -> None:
        """Until ``ticket`` holds a slot. ``ClientGone`` if ``receive`` reports a disconnect first,
        503 after ``queue_timeout`` seconds. On either the ticket has left the queue."""
        if ticket.running:
            return
        gone = False

        async def watch(scope: anyio.CancelScope) -> None:
            nonlocal gone
            with contextlib.suppress(Exception):  # a broken connection is a gone client too
                while (await receive()).get("type") != "http.disconnect":  # type: ignore[misc]
                    pass
            gone = True
            scope.cancel()

        with anyio.move_on_after(self.queue_timeout):
            async with anyio.create_task_group() as tg:
                if receive is not None:
                    tg.start_soon(watch, tg.cancel_scope)
                await ticket.ready.wait()
                tg.cancel_scope.cancel()
        if ticket.running and not gone:
            return
        self.release(ticket)
        if gone:
            raise ClientGone()
        raise self._overloaded("queue_timeout")

    def abandon(self, ticket: Ticket) -> None:
        """The client left before the work (or a step of it) started: release the ticket and count it."""
        self.release(ticket)
        self._count("abandoned")

    def release(self, ticket: Ticket) -> None:
        """The request is done (or dropped): free its slot or its place, start the next in line."""
        if ticket.running:
            ticket.running = False
            self.running -= 1
            elapsed = time.monotonic() - ticket.started
            self.service_time = 0.8 * self.service_time + 0.2 * elapsed
        elif ticket in self.queue:
            self._remove(ticket)
        self._dispatch()

    # --- estimates and bookkeeping ---

    def retry_after(self) -> int:
        """Seconds until the requests now waiting should have started (at least 1)."""
        waves = (len(self.queue) + 1) / self.slots
        return max(1, min(3600, math.ceil(self.service_time * waves)))

    def _dispatch(self) -> None:
        """Free slots to the first admitted of the requests whose bodies have arrived."""
        while self.running < self.slots:
            ticket = next((t for t in self.queue if t.arrived), None)
            if ticket is None:
                break
            self._remove(ticket)
            ticket.running = True
            ticket.started = time.monotonic()
            self.running += 1
            ticket.ready.set()
        self._observe()

    def _remove(self, ticket: Ticket) -> None:
        self.queue.remove(ticket)
        self.queued_bytes -= ticket.nbytes

    def _overloaded(self, reason: str) -> ProblemError:
        self._count("rejected", reason)
        why = {"queue_full": f"all {self.slots} compute threads are busy and {len(self.queue)} requests wait",
               "queue_bytes": f"all {self.slots} compute threads are busy and the waiting request bodies would "
                              f"exceed {self.max_queue_bytes} bytes (NTK_COMPUTE_QUEUE_BYTES)",
               "queue_timeout": f"the request waited {self.queue_timeout:g} s (NTK_COMPUTE_QUEUE_TIMEOUT) for one of "
                                f"{self.slots} compute threads"}[reason]
        seconds = self.retry_after()
        return ProblemError(
            503, f"The service is at capacity: {why}. Retry after {seconds} s, or submit large work as a job "
            "(POST /v1/jobs).", slug="overloaded", title="Service overloaded", headers={"Retry-After": str(seconds)})

    def _count(self, what: str, reason: str = "") -> None:
        if self.metrics is not None:
            if what == "rejected":
                self.metrics.compute_rejected.labels(reason).inc()
            else:
                self.metrics.compute_abandoned.inc()

    def _observe(self) -> None:
        if self.metrics is not None:
            self.metrics.compute_running.set(self.running)
            self.metrics.compute_queued.set(len(self.queue))
            self.metrics.compute_queued_bytes.set(self.queued_bytes)


async def run_compute(request: Request, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` in a worker thread, so the event loop keeps serving.

    In an admitted request (see :data:`ADMITTED_OPERATIONS`) it runs on the request's compute
    slot (at most ``NTK_COMPUTE_THREADS`` at once), and not at all if the client has gone
    (``ClientGone``: no model is stored for nobody). Elsewhere (file work of the resource routes)
    it runs in the shared worker threads without waiting for a compute slot.
    numpy, BLAS and numba release the GIL, so health checks keep answering meanwhile.
    """
    call = partial(fn, *args, **kwargs)
    if request.scope.get(TICKET_SCOPE_KEY) is None:
        return await anyio.to_thread.run_sync(call)
    if await request.is_disconnected():
        raise ClientGone()
    limiter: anyio.CapacityLimiter = request.app.state.compute_limiter
    return await anyio.to_thread.run_sync(call, limiter=limiter)
