"""What every iterative solver of :mod:`core.solvers` takes and reports.

``MatMat``: the kernel as a callable ``V (n × k, float64) ↦ K·V (n × k)`` — the matrix itself
is never required. ``Callback``: called once per iteration with ``(iteration, iterate,
relative residual)``; it may raise (e.g. to cancel a job) and the exception propagates
unchanged out of the solver.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.dynamics.trajectory import as_targets

MatMat = Callable[[np.ndarray], np.ndarray]
Callback = Callable[[int, np.ndarray, float], None]


@dataclass(frozen=True)
class SolveReport:
    """``iterations``: solver iterations (kernel products beyond the first residual);
    ``relative_residual``: max over columns of ``‖b − A x‖ / ‖b‖`` for the system ``A x = b``
    the solver actually ran (each solver's docstring names it); ``converged``: it is ≤ tol."""

    iterations: int
    relative_residual: float
    converged: bool


class NotConverged(ValueError):
    """``tol`` was not reached within ``max_iter``. ``report`` says how far it got and
    ``solution`` holds the last iterate (in the caller's shape), e.g. to resume from."""

    def __init__(
        self, what: str, report: SolveReport, solution: Any, tol: float, *,
        hint: str = "raise max_iter or ridge", quantity: str = "relative residual",
    ):
        super().__init__(
            f"{what} reached {quantity} {report.relative_residual:.2g} after "
            f"{report.iterations} iterations (tol {tol:g}); {hint}"
        )
        self.report = report
        self.solution = solution


def check_tolerance(tol: float, max_iter: int) -> None:
    """``tol`` finite and > 0, ``max_iter`` an integer ≥ 1 (``ValueError`` naming the field)."""
    if not (isinstance(tol, int | float) and np.isfinite(tol) and tol > 0):
        raise ValueError(f"tol must be finite and > 0, got {tol!r}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int | np.integer) or max_iter < 1:
        raise ValueError(f"max_iter must be an integer ≥ 1, got {max_iter!r}")


def apply(matmat: MatMat, v: np.ndarray, name: str = "the kernel product") -> np.ndarray:
    """``matmat(v)`` checked: float64 of ``v``'s shape and finite (else ``ValueError``)."""
    out = np.asarray(matmat(v), dtype=np.float64)
    if out.shape != v.shape:
        raise ValueError(f"{name} returned shape {out.shape} for an input of shape {v.shape}")
    if not np.isfinite(out).all():
        raise ValueError(f"{name} returned non-finite values (overflow in the kernel?)")
    return out


def as_block(b: np.ndarray, name: str = "b") -> tuple[np.ndarray, bool]:
    """``b`` (n,) or (n, k), finite, as a float64 n × k array, and whether it was 1-D."""
    return as_targets(b, np.shape(b)[0] if np.ndim(b) else 0, name)
