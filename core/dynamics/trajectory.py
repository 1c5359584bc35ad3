"""Training dynamics of the linearized (infinite-width) network, from one eigendecomposition.

Model: ``f_0 = 0``, squared loss ``L = (1/2N) Σ ‖f − y‖²`` over the training targets, where
``N`` is the number of target entries (n·k) for ``normalization="mean"`` and ``N = 1`` for
``"sum"`` (the lecture's ``du/dt = −Ku`` at η = 1). Ridge ρ (absolute, already effective) is
weight decay on the linearized network: ``K_r = K + ρI`` and, with ``r = y``,

- ``flow`` (gradient flow, real t ≥ 0): ``α(t) = K_r⁻¹ (I − e^{−η K_r t / N}) r``;
- ``gd`` (gradient descent, integer steps s): ``α(s) = K_r⁻¹ (I − (I − η K_r / N)^s) r``;
- ``f_t(X) = K α(t)``, ``f_t(x*) = K(x*, X) α(t)``; t = ∞ (None) is kernel ridge regression.

With ``K = V diag(λ) Vᵀ`` all of it is ``α(t) = V diag(φ_t(λ + ρ)) Vᵀ y`` (see
:func:`core.dynamics.spectral.time_filter`), so every time costs a diagonal scaling.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from core.dynamics.spectral import EigenBasis, Method, Time, as_square, time_filter

Normalization = Literal["mean", "sum"]


def normalization_count(n_entries: int, normalization: Normalization) -> int:
    """``N`` of the loss ``(1/2N) Σ ‖f − y‖²``: the number of target entries, or 1 for "sum"."""
    if normalization == "mean":
        return int(n_entries)
    if normalization == "sum":
        return 1
    raise ValueError(f"normalization must be 'mean' or 'sum', got {normalization!r}")


def as_targets(y: np.ndarray, n: int, name: str = "y") -> tuple[np.ndarray, bool]:
    """``y`` (n,) or (n, k) as a float64 n × k array, and whether it was 1-D."""
    y = np.asarray(y, dtype=np.float64)
    if y.ndim not in (1, 2) or y.shape[0] != n or y.size == 0:
        raise ValueError(f"{name} must have shape ({n},) or ({n}, k), got {y.shape}")
    if not np.isfinite(y).all():
        raise ValueError(f"{name} has non-finite entries")
    return (y[:, None], True) if y.ndim == 1 else (y, False)


def _stacked(m: np.ndarray, c: np.ndarray) -> np.ndarray:
    """``m @ c[t]`` for every t (m: p × n, c: T × n × k) as one (p × n)(n × T·k) GEMM."""
    t, n, k = c.shape
    out = m @ c.transpose(1, 0, 2).reshape(n, t * k)
    return out.reshape(m.shape[0], t, k).transpose(1, 0, 2)


def _alpha_coordinates(
    basis: EigenBasis, y: np.ndarray, times: Sequence[Time], learning_rate: float,
    method: Method, normalization: Normalization, ridge_effective: float,
) -> np.ndarray:
    """``Vᵀ α(t)`` for every time (T × n × k); y is n × k. O(n²k) once, then O(n·k) per time."""
    if not learning_rate > 0 or not np.isfinite(learning_rate):
        raise ValueError(f"learning_rate must be finite and > 0, got {learning_rate}")
    if not ridge_effective >= 0:
        raise ValueError(f"ridge must be ≥ 0, got {ridge_effective}")
    rate = learning_rate / normalization_count(y.size, normalization)
    phi = time_filter(basis.eigenvalues + ridge_effective, times, rate=rate, method=method)
    return phi[:, :, None] * basis.coordinates(y)[None]


def dual_coefficients(
    basis: EigenBasis, y: np.ndarray, times: Sequence[Time], *, learning_rate: float = 1.0,
    method: Method = "flow", normalization: Normalization = "mean", ridge_effective: float = 0.0,
) -> np.ndarray:
    """``α(t)`` (T × n × k) for each time, so that ``f_t(x) = K(x, X) α(t)``.

    ``basis`` is ``EigenBasis.of(K)`` of the training kernel; ``y`` is n × k; ``N`` counts
    ``y.size`` entries under "mean". Cost O(n²·k·T) as one GEMM, no factorization.
    """
    y2, _ = as_targets(y, basis.n)
    coords = _alpha_coordinates(basis, y2, times, learning_rate, method, normalization, ridge_effective)
    return _stacked(basis.eigenvectors, coords)


@dataclass(frozen=True)
class Trajectory:
    """Predictions and losses at each requested time (index 0 of the arrays is the time).

    ``train_predictions``: T × n (1-D targets) or T × n × k; ``train_loss``: T values of the
    data term ``‖f − y‖² / 2N``; ``test_*`` likewise on test points (``test_loss`` divides by the
    number of test target entries under "mean", by 2 under "sum"), None when not requested.
    ``eigenvalues`` of K (descending, clipped at 0); ``max_stable_learning_rate = 2N / λ_max(K_r)``
    (``float('inf')`` when K_r = 0).
    """

    times: tuple[float | None, ...]
    train_loss: np.ndarray
    train_predictions: np.ndarray
    test_predictions: np.ndarray | None
    test_loss: np.ndarray | None
    eigenvalues: np.ndarray
    max_stable_learning_rate: float


def _loss(pred: np.ndarray, y: np.ndarray, normalization: Normalization) -> np.ndarray:
    n_norm = normalization_count(y.size, normalization)
    with np.errstate(over="ignore", invalid="ignore"):  # a diverging gd run may overflow
        return ((pred - y[None]) ** 2).sum(axis=(1, 2)) / (2.0 * n_norm)


def trajectory(
    kernel_train: np.ndarray, y_train: np.ndarray, times: Sequence[Time], *,
    learning_rate: float = 1.0, method: Method = "flow", normalization: Normalization = "mean",
    ridge_effective: float = 0.0, kernel_test_train: np.ndarray | None = None,
    y_test: np.ndarray | None = None, basis: EigenBasis | None = None,
) -> Trajectory:
    """The training trajectory at ``times`` (flow: real t ≥ 0; gd: integer steps; None: ∞).

    ``kernel_train`` K (n × n); ``kernel_test_train`` K(x*, X) (m × n); ``basis``: a reusable
    ``EigenBasis.of(kernel_train)`` (else one ``eigh`` here, O(n³)). Cost beyond the
    eigendecomposition, with T times and k outputs: O(n²k) to project y, O(n²·T·k) for the
    training predictions (one GEMM), and for test points ``min(m·n·T·k + n²·T·k, m·n² + m·n·T·k)``
    (α for all times then K(x*, X)·α, or K(x*, X)·V once when T·k ≥ m).
    """
    k_train = as_square(kernel_train, "kernel_train")
    n = k_train.shape[0]
    if basis is None:
        basis = EigenBasis.of(k_train)
    elif basis.n != n:
        raise ValueError(f"basis is for n = {basis.n}, kernel_train has n = {n}")
    y2, was_1d = as_targets(y_train, n, "y_train")
    coords = _alpha_coordinates(basis, y2, times, learning_rate, method, normalization, ridge_effective)
    v, lam = basis.eigenvectors, basis.eigenvalues
    with np.errstate(over="ignore", invalid="ignore"):
        train = _stacked(v, lam[None, :, None] * coords)  # K α(t) = V diag(λ) Vᵀ α(t)
    train_loss = _loss(train, y2, normalization)

    test = test_loss = None
    if kernel_test_train is not None:
        kt = np.asarray(kernel_test_train, dtype=np.float64)
        if kt.ndim != 2 or kt.shape[1] != n:
            raise ValueError(f"kernel_test_train must have shape (m, {n}), got {kt.shape}")
        with np.errstate(over="ignore", invalid="ignore"):
            if coords.shape[0] * coords.shape[2] >= kt.shape[0]:
                test = _stacked(kt @ v, coords)
            else:
                test = _stacked(kt, _stacked(v, coords))
        if y_test is not None:
            yt, _ = as_targets(y_test, kt.shape[0], "y_test")
            if yt.shape[1] != y2.shape[1]:
                raise ValueError(f"y_test must have {y2.shape[1]} output(s), got shape {np.shape(y_test)}")
            test_loss = _loss(test, yt, normalization)
    elif y_test is not None:
        raise ValueError("y_test needs kernel_test_train")

    lam_r_max = float(lam[0]) + ridge_effective
    n_norm = normalization_count(y2.size, normalization)
    return Trajectory(
        times=tuple(None if t is None or t == float("inf") else t for t in times),
        train_loss=train_loss,
        train_predictions=train[:, :, 0] if was_1d else train,
        test_predictions=None if test is None else (test[:, :, 0] if was_1d else test),
        test_loss=test_loss,
        eigenvalues=lam,
        max_stable_learning_rate=2.0 * n_norm / lam_r_max if lam_r_max > 0 else float("inf"),
    )
