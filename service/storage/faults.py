"""Storage faults: a full disk, and what a crash leaves behind.

- :func:`writing` is the one place where a write that does not fit — ``OSError`` ``ENOSPC`` /
  ``EDQUOT``, or SQLite's "database or disk is full" — becomes the ``507`` problem
  (:func:`service.problems.insufficient_storage`), after removing what the write left partial.
  Every other error is re-raised unchanged (after the same clean-up).
- :func:`remove_stale_temporaries` runs at start-up: the API is the only writer of ``datasets/``
  and ``models/`` (workers write under ``jobs/``, and fit jobs into a model's staging folder, which
  the runner clears before it resubmits), so temporaries older than the process are debris of a
  crash. ``jobs/`` is never touched.

Temporary names (all start with a dot): ``datasets/.upload-<hex>`` (an upload being streamed),
``models/.mdl_<id>/`` (a model being written, renamed into place when complete),
``models/*/.<name>.npy.<hex>`` (one array being saved), ``.ready-*`` (the readiness probe's file).
"""

from __future__ import annotations

import errno
import logging
import shutil
import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from service.problems import ProblemError, insufficient_storage

logger = logging.getLogger("ntk.service.storage")

FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the filesystem (or the quota) has no room for a write."""
    if isinstance(exc, OSError):
        return exc.errno in FULL_ERRNOS
    if isinstance(exc, sqlite3.OperationalError):
        return (getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
                or "database or disk is full" in str(exc))
    return False


def free_bytes(path: Path) -> int | None:
    """Bytes an unprivileged writer can still use on ``path``'s filesystem (None if unknown)."""
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def remove(path: Path) -> None:
    """Remove a file or folder if it exists (best effort: clean-up must not mask the first error)."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    except OSError:
        logger.warning("could not remove %s", path, exc_info=True)


def full_disk_problem(exc: BaseException, what: str, area: str, root: Path, needed_bytes: int | None = None
                      ) -> ProblemError | None:
    """The 507 for ``exc`` if it is a full disk (or an inner 507, re-worded for ``what``), else None."""
    if is_disk_full(exc) or (isinstance(exc, ProblemError) and exc.status == 507):
        return insufficient_storage(what, free_bytes(root), ["store", area], needed_bytes)
    return None


@contextmanager
def writing(what: str, area: str, root: Path, *, partial: Iterable[Path] = (), needed_bytes: int | None = None
            ) -> Iterator[None]:
    """Run a write. On any error remove ``partial`` (files or folders; the iterable is read at failure
    time, so a list may grow while writing); a full disk becomes a 507 naming ``what``, with
    ``errors[].loc = ["store", area]`` and the free space of ``root``'s filesystem."""
    try:
        yield
    except BaseException as exc:
        for path in list(partial):
            remove(path)
        problem = full_disk_problem(exc, what, area, root, needed_bytes)
        if problem is not None:
            logger.warning("storage full: %s", problem.detail)
            raise problem from exc
        raise


def _stale(path: Path, started_at: float) -> bool:
    try:
        return path.lstat().st_mtime < started_at
    except OSError:
        return False


def remove_stale_temporaries(data_dir: Path, started_at: float) -> list[Path]:
    """Remove the temporaries (module docstring) last modified before ``started_at``; returns them."""
    candidates: list[Path] = []
    candidates += data_dir.glob(".ready-*")
    candidates += (data_dir / "datasets").glob(".upload-*")
    models = data_dir / "models"
    candidates += models.glob(".mdl_*")
    candidates += (p for p in models.glob("mdl_*/.*.npy.*") if p.is_file())
    removed = [p for p in candidates if _stale(p, started_at)]
    for path in removed:
        remove(path)
    if removed:
        logger.info("removed %d stale temporaries left by an earlier process: %s", len(removed),
                    ", ".join(str(p.relative_to(data_dir)) for p in removed))
    return removed
