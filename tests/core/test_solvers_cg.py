"""Tests for core.solvers.cg and core.solvers.preconditioner: conjugate gradients on K + shift·I.

References: ``scipy.linalg.solve`` / ``cho_solve`` on the dense matrix, ``numpy.linalg.inv`` for the
preconditioner's closed form, and residuals recomputed here from the returned iterates.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from core.kernels import gram
from core.solvers import NotConverged, choose_centers, conjugate_gradients, nystrom_preconditioner
from tests.core.solvers_testlib import RELU3, kernel_problem, single_blas_thread

_one_blas_thread = pytest.fixture(autouse=True, scope="module")(single_blas_thread)


def rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def targets(n, k, seed=1):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(n) if k == 1 else rng.standard_normal((n, k))


def true_residual(k, shift, b, x):
    b2, x2 = b.reshape(len(b), -1), x.reshape(len(b), -1)
    r = b2 - (k @ x2 + shift * x2)
    return float((np.linalg.norm(r, axis=0) / np.linalg.norm(b2, axis=0)).max())


@pytest.mark.parametrize("name", ["ntk", "rbf"])
@pytest.mark.parametrize("k_out", [1, 3])
@pytest.mark.parametrize("shift", [0.0, 0.1])
@pytest.mark.parametrize("preconditioned", [False, True])
def test_cg_equals_the_direct_solve(name, k_out, shift, preconditioned):
    k, *_ = kernel_problem(name, 400, 8)
    n = k.shape[0]
    b = targets(n, k_out)
    pre = None
    if preconditioned:
        c = choose_centers(n, 60, seed=3)
        pre = nystrom_preconditioner(k[:, c], c, shift)
    x, report = conjugate_gradients(lambda v: k @ v, b, shift=shift, preconditioner=pre, tol=1e-10)
    a = k + shift * np.eye(n)
    assert x.shape == b.shape
    assert rel(x, scipy.linalg.solve(a, b, assume_a="pos")) < 1e-6
    assert rel(x, scipy.linalg.cho_solve(scipy.linalg.cho_factor(a), b)) < 1e-6
    assert report.converged and report.relative_residual <= 1e-10
    assert report.relative_residual == pytest.approx(true_residual(k, shift, b, x), rel=1e-3)


@pytest.mark.parametrize("shift", [0.0, 1e-3])
def test_nystrom_preconditioner_cuts_iterations_on_an_ill_conditioned_ntk(shift):
    # d = 2: cond(K) ≈ 10⁶. Measured (seeds 0–3, 100 of 400 centers, tol 1e-8): 540–780 plain
    # iterations, ratio 0.196–0.207 with the preconditioner; asserted ≤ 1/3.
    k, *_ = kernel_problem("ntk", 400, 2)
    n = k.shape[0]
    assert np.linalg.cond(k) > 1e5
    b = targets(n, 2)
    c = choose_centers(n, 100, seed=0)
    pre = nystrom_preconditioner(k[:, c], c, shift)
    x_plain, plain = conjugate_gradients(lambda v: k @ v, b, shift=shift, tol=1e-8, max_iter=5000)
    x_pre, with_pre = conjugate_gradients(lambda v: k @ v, b, shift=shift, tol=1e-8, max_iter=5000, preconditioner=pre)
    assert with_pre.iterations <= plain.iterations / 3
    assert true_residual(k, shift, b, x_pre) <= 1e-8 and true_residual(k, shift, b, x_plain) <= 1e-8


def test_preconditioner_with_all_centers_is_the_scaled_inverse():
    """m = n: K̂ = K, so P⁻¹ = (λ̂_min + s)(K + sI)⁻¹ and CG converges at once."""
    k, *_ = kernel_problem("rbf", 300, 8)
    n, shift = k.shape[0], 0.05
    c = choose_centers(n, n, seed=0)
    p_inv = nystrom_preconditioner(k[:, c], c, shift)(np.eye(n))
    exact = np.linalg.inv(k + shift * np.eye(n))
    lam_min = np.linalg.eigvalsh(k)[0]
    assert rel(p_inv, (lam_min + shift) * exact) < 1e-6
    _, report = conjugate_gradients(lambda v: k @ v, targets(n, 1), shift=shift, preconditioner=nystrom_preconditioner(k[:, c], c, shift), tol=1e-10)
    assert report.iterations <= 3


@pytest.mark.parametrize("shift", [0.0, 1e-14, 1e-3])
def test_preconditioner_is_symmetric_positive_definite_for_singular_centers(shift):
    """Duplicate centers make K[S, S] singular; P⁻¹ stays finite, symmetric and positive definite."""
    _, _, x, _ = kernel_problem("ntk", 200, 3)
    xd = np.vstack([x, x[:20]])  # 20 duplicated points, all of them among the centers
    k = gram(RELU3, xd, outputs=["ntk"])["ntk"]
    c = np.concatenate([np.arange(20), np.arange(200, 220), np.arange(40, 80)])
    c.sort()
    assert np.linalg.matrix_rank(k[np.ix_(c, c)]) < c.size
    p_inv = nystrom_preconditioner(k[:, c], c, shift)(np.eye(k.shape[0]))
    assert np.isfinite(p_inv).all()
    assert np.abs(p_inv - p_inv.T).max() < 1e-12
    assert np.linalg.eigvalsh(p_inv)[0] > 0


def test_not_converged_reports_the_true_residual():
    k, *_ = kernel_problem("ntk", 400, 2)
    b = targets(k.shape[0], 2)
    with pytest.raises(NotConverged, match=r"relative residual .* after 5 iterations \(tol 1e-08\); raise max_iter") as info:
        conjugate_gradients(lambda v: k @ v, b, tol=1e-8, max_iter=5)
    exc = info.value
    assert not exc.report.converged and exc.report.iterations == 5
    assert exc.solution.shape == b.shape
    assert exc.report.relative_residual == pytest.approx(true_residual(k, 0.0, b, exc.solution), rel=1e-9)
    assert exc.report.relative_residual > 1e-8
    assert isinstance(exc, ValueError)


def test_callback_sees_every_iteration_and_can_abort():
    k, *_ = kernel_problem("ntk", 400, 8)
    b = targets(k.shape[0], 1)
    seen = []

    class Cancelled(Exception):
        pass

    def callback(i, x, r):
        seen.append((i, x.shape, r))
        if i == 3:
            raise Cancelled

    with pytest.raises(Cancelled):
        conjugate_gradients(lambda v: k @ v, b, tol=1e-10, callback=callback)
    assert [s[0] for s in seen] == [1, 2, 3]
    assert all(s[1] == b.shape and np.isfinite(s[2]) and s[2] > 0 for s in seen)


def test_warm_start_resumes_with_fewer_iterations():
    k, *_ = kernel_problem("ntk", 400, 2)
    n, shift = k.shape[0], 1e-4
    b = targets(n, 3)
    snapshots = {}
    full, report = conjugate_gradients(lambda v: k @ v, b, shift=shift, tol=1e-9, max_iter=5000, callback=lambda i, x, r: snapshots.setdefault(i, x))
    x0 = snapshots[report.iterations // 2]
    resumed, again = conjugate_gradients(lambda v: k @ v, b, shift=shift, tol=1e-9, max_iter=5000, x0=x0)
    assert again.iterations < 0.75 * report.iterations
    ref = scipy.linalg.solve(k + shift * np.eye(n), b, assume_a="pos")
    assert rel(resumed, ref) < 1e-5 and rel(full, ref) < 1e-5
    _, exact_start = conjugate_gradients(lambda v: k @ v, b, shift=shift, tol=1e-6, x0=ref)
    assert exact_start.iterations == 0 and exact_start.converged


def test_zero_columns_and_vector_shapes():
    k, *_ = kernel_problem("rbf", 300, 8)
    n = k.shape[0]
    b = np.zeros((n, 2))
    b[:, 1] = targets(n, 1)
    x, report = conjugate_gradients(lambda v: k @ v, b, tol=1e-10)
    assert (x[:, 0] == 0).all() and report.converged
    assert rel(x[:, 1], np.linalg.solve(k, b[:, 1])) < 1e-6
    x1, _ = conjugate_gradients(lambda v: k @ v, b[:, 1], tol=1e-10)
    assert x1.shape == (n,)


def test_indefinite_or_broken_kernels_fail_clearly():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((50, 50)))
    indefinite = (q * np.linspace(-1.0, 2.0, 50)) @ q.T
    b = rng.standard_normal(50)
    with pytest.raises(ValueError, match="not positive definite"):
        conjugate_gradients(lambda v: indefinite @ v, b, tol=1e-12, max_iter=500)
    with pytest.raises(ValueError, match="preconditioner is not positive definite"):
        conjugate_gradients(lambda v: v, b, preconditioner=lambda v: -v)
    with pytest.raises(ValueError, match="non-finite"):
        conjugate_gradients(lambda v: np.full_like(v, np.nan), b)
    with pytest.raises(ValueError, match="shape"):
        conjugate_gradients(lambda v: v[:-1], b)
    for kwargs, field in (({"tol": 0.0}, "tol"), ({"max_iter": 0}, "max_iter"), ({"shift": -1.0}, "shift"), ({"x0": b[:3]}, "x0")):
        with pytest.raises(ValueError, match=field):
            conjugate_gradients(lambda v: v, b, **kwargs)
    with pytest.raises(ValueError, match="non-finite"):
        conjugate_gradients(lambda v: v, np.array([1.0, np.inf]))


def test_choose_centers():
    c = choose_centers(1000, 50, seed=7)
    assert c.shape == (50,) and (np.diff(c) > 0).all() and c.min() >= 0 and c.max() < 1000
    assert (c == choose_centers(1000, 50, seed=7)).all()
    assert not (c == choose_centers(1000, 50, seed=8)).all()
    assert (choose_centers(10, 10, seed=0) == np.arange(10)).all()
    for n, m in ((10, 0), (10, 11)):
        with pytest.raises(ValueError, match="centers"):
            choose_centers(n, m, seed=0)


def test_singular_kernel_without_ridge_fails_clearly_not_with_nan():
    """K with a 10-dimensional null space, b outside its range, shift 0: no solution exists; CG must
    end in NotConverged (finite iterate) or the not-positive-definite error, never NaN."""
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((80, 80)))
    k = (q * np.r_[np.zeros(10), np.geomspace(1e-3, 10, 70)]) @ q.T
    b = rng.standard_normal(80)
    for max_iter in (50, 5000):
        with pytest.raises(ValueError, match="not positive definite|raise max_iter or ridge") as info:
            conjugate_gradients(lambda v: k @ v, b, tol=1e-10, max_iter=max_iter)
        if isinstance(info.value, NotConverged):
            assert np.isfinite(info.value.solution).all() and np.isfinite(info.value.report.relative_residual)
