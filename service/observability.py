"""Request ids, structured JSON logs and Prometheus metrics."""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from service.timestamps import utc_timestamp

request_id_var: ContextVar[str] = ContextVar("request_id", default="-")
logger = logging.getLogger("ntk.service")


class JSONLogFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id and extras."""

    _STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "color_message"}

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": utc_timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "request_id": request_id_var.get(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in self._STANDARD})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure_logging(level: str) -> None:
    """Send all logs (ours and uvicorn's) to stderr as JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONLogFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # our middleware logs each request


class Metrics:
    """The app's Prometheus collectors, in a registry of its own (one per app instance)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "ntk_http_requests", "HTTP requests by route template and status.",
            ["method", "route", "status"], registry=self.registry,
        )
        self.latency = Histogram(
            "ntk_http_request_duration_seconds", "HTTP request latency by route template.",
            ["method", "route"], registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
        )
        # admission control of synchronous compute (service.compute)
        self.compute_running = Gauge("ntk_compute_running", "Synchronous computations holding a compute thread.",
                                     registry=self.registry)
        self.compute_queued = Gauge("ntk_compute_queued", "Synchronous computations admitted and not yet running "
                                    "(body arriving, or waiting for a compute thread).",
                                    registry=self.registry)
        self.compute_queued_bytes = Gauge("ntk_compute_queued_bytes", "Request-body bytes of the computations not yet running.",
                                          registry=self.registry)
        self.compute_rejected = Counter(
            "ntk_compute_rejected", "Synchronous computations answered 503, by reason (queue_full, queue_bytes, "
            "queue_timeout).", ["reason"], registry=self.registry)
        self.compute_abandoned = Counter(
            "ntk_compute_abandoned", "Waiting computations dropped because their client disconnected.",
            registry=self.registry)
