"""Asynchronous jobs (``/v1/jobs``): wait with a progress bar, download results (resumable), cancel, delete."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from ntk_client.errors import JobFailed
from ntk_client.npy import NPY_MEDIA_TYPE
from ntk_client.operations import JSON
from ntk_client.results import Trajectory

if TYPE_CHECKING:
    from ntk_client.client import Client, Model

FINISHED = ("succeeded", "failed", "cancelled")


def _progress_bar(progress: bool | Mapping[str, Any], job_id: str) -> Any:
    """A tqdm bar in percent (``progress`` True: defaults; a mapping: tqdm's keyword arguments)."""
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("progress bars need tqdm: pip install 'ntk-client[progress]'") from None
    options = {"desc": job_id, "total": 100, "unit": "%", "bar_format": "{desc}: {percentage:3.0f}%|{bar}| "
               "[{elapsed}<{remaining}]"}
    if isinstance(progress, Mapping):
        options |= dict(progress)
    return tqdm(**options)


class Job:
    """A job of the service. ``document`` is its last known JSON (status, progress, error, links)."""

    def __init__(self, client: Client, document: dict[str, Any], *, outputs: tuple[str, ...] | None = None,
                 method: str = "flow") -> None:
        self._client = client
        self.document = document
        self.outputs = outputs  # a gram job's matrices, when this client created it
        self._method = method

    def __repr__(self) -> str:
        return f"Job(id={self.id!r}, type={self.type!r}, status={self.status!r}, progress={self.progress:.2f})"

    id = property(lambda self: self.document["id"])
    type = property(lambda self: self.document["type"])
    status = property(lambda self: self.document["status"])
    progress = property(lambda self: float(self.document["progress"]))
    error = property(lambda self: self.document.get("error"))

    def refresh(self) -> Job:
        """Fetch the current status and progress."""
        self.document = self._client._session.json("getJob", path={"job_id": self.id})
        return self

    def wait(self, progress: bool | Mapping[str, Any] = False, timeout: float | None = None,
             poll_interval: float = 0.1, max_poll_interval: float = 2.0) -> Job:
        """Poll until the job has finished; raise :class:`JobFailed` unless it succeeded.

        ``progress``: show a tqdm bar (``True``, or a mapping of tqdm arguments such as
        ``{"file": sys.stdout}``). ``timeout`` (seconds): ``TimeoutError`` when still running then
        (the job goes on; ``cancel()`` stops it). Polls start every ``poll_interval`` seconds and slow
        down to ``max_poll_interval``.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = _progress_bar(progress, self.id) if progress else None
        shown = 0
        interval = poll_interval
        try:
            while True:
                if bar is not None:
                    done = int(round(self.progress * 100))
                    if done > shown:
                        bar.update(done - shown)
                        shown = done
                if self.status in FINISHED:
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(f"job {self.id} is still {self.status} after {timeout} s")
                time.sleep(interval if deadline is None else max(0.0, min(interval, deadline - time.monotonic())))
                interval = min(max_poll_interval, interval * 1.5)
                self.refresh()
        finally:
            if bar is not None:
                bar.close()
        if self.status != "succeeded":
            raise JobFailed(self.document)
        return self

    def download(self, path: str | os.PathLike[str], output: str | None = None, rows: tuple[int, int] | str | None = None
                 ) -> int:
        """Save a gram job's ``.npy`` result (``output``, optionally the row block ``rows=(a, b)``) to ``path``.

        Resumes after a dropped connection with range requests; returns the number of bytes.
        """
        with open(path, "wb") as file:
            return self._client._session.download(
                "getJobResult", file, path={"job_id": self.id}, params={"output": output, "rows": _rows(rows)},
                accept=NPY_MEDIA_TYPE)

    def result(self, output: str | None = None, rows: tuple[int, int] | str | None = None) -> Any:
        """The result once the job has succeeded (``409`` before: call ``wait()`` first).

        gram: the matrix ``output`` (default the job's first) or its row block ``rows=(a, b)``, as
        a NumPy array, downloaded through a temporary file with resumable range requests;
        fit: the :class:`~ntk_client.client.Model`; trajectory: the :class:`Trajectory`, or with
        ``output="train_predictions"``/``"test_predictions"`` that array (``T × n × k``; ``rows``
        selects times) downloaded the same way.
        """
        if self.type == "gram" or output is not None:
            with tempfile.TemporaryFile() as file:
                self._client._session.download(
                    "getJobResult", file, path={"job_id": self.id}, params={"output": output, "rows": _rows(rows)},
                    accept=NPY_MEDIA_TYPE)
                file.seek(0)
                return np.load(file, allow_pickle=False)
        document = self._client._session.json("getJobResult", path={"job_id": self.id}, accept=JSON)
        if self.type == "fit":
            return self._client._model(document)
        return Trajectory.from_document(document, self._method)

    def model(self) -> Model:
        """A fit job's model (after ``wait()``)."""
        if self.type != "fit":
            raise TypeError(f"a {self.type} job has no model")
        return self.result()  # type: ignore[no-any-return]

    def cancel(self) -> Job:
        """Cancel a queued or running job (``409`` once it has finished)."""
        self.document = self._client._session.json("cancelJob", path={"job_id": self.id})
        return self

    def delete(self) -> None:
        """Remove the job and its result (cancelling it if needed); a fit job's model goes too."""
        self._client._session.call("deleteJob", path={"job_id": self.id}, accept=JSON)


def _rows(rows: tuple[int, int] | str | None) -> str | None:
    if rows is None or isinstance(rows, str):
        return rows
    start, stop = rows
    return f"{int(start)}:{int(stop)}"
