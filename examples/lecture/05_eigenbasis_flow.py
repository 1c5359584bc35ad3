"""Lecture §5 (end): gradient flow in the kernel's eigenbasis — each residual component decays as
``e^{−ηλ_i t/N}``, the large eigenvalues first.

Under gradient flow on ``(1/2N) ‖f − y‖²`` the linearized network's training residual ``u = f − y``
obeys ``du/dt = −(η/N) K u``, so with ``K = Σ λ_i v_i v_iᵀ`` and ``f_0 = 0`` each component
``c_i(t) = v_iᵀ u(t)`` is ``−(v_iᵀ y) e^{−ηλ_i t/N}``: independent exponentials, fastest along the
top eigenvectors. The service computes the trajectory; the independent reference is ``numpy.linalg.eigh``
of the NTK Gram matrix (fetched with ``kernel_fn``) and the closed form above. The decay rate of each
component is also fitted from the service's residuals alone and compared with ``ηλ_i/N``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from _common import main, save

from ntk_client import Client, stax

LEARNING_RATE = 1.0


def run(client: Client, quick: bool, out: Path) -> dict[str, Any]:
    """Projected residuals of the service's trajectory against the closed form; fitted decay rates."""
    rng = np.random.default_rng(0)
    n, d, count = (20, 3, 40) if quick else (40, 3, 150)
    x = rng.standard_normal((n, d))
    y = rng.standard_normal(n)
    spec = stax.serial(stax.Dense(512, W_std=1.5, b_std=0.05), stax.Relu(), stax.Dense(1))

    k = client.kernel_fn(spec)(x, None, "ntk")
    lam, v = np.linalg.eigh(k)
    lam, v = lam[::-1], v[:, ::-1]  # descending, like the service's "eigenvalues"
    rates = LEARNING_RATE * lam / n  # N = n target entries ("mean" normalization)
    times = np.concatenate([[0.0], np.geomspace(1e-2 / rates[0], 10 / rates[-1], count)])

    traj = client.trajectory(spec, x, y, times.tolist(), learning_rate=LEARNING_RATE, method="flow",
                             loss_normalization="mean")
    u = np.asarray(traj.train_predictions).reshape(len(times), n) - y
    c = u @ v  # c[t, i] = v_iᵀ u(t)
    closed = -(v.T @ y)[None, :] * np.exp(-np.outer(times, rates))
    scale = np.linalg.norm(y)

    fitted = np.full(n, np.nan)  # rate from the service's residuals alone: slope of log|c_i| against t
    for i in range(n):
        keep = np.abs(c[:, i]) > 1e-7 * scale
        if abs(c[0, i]) > 1e-6 * scale and keep.sum() >= 3:
            fitted[i] = -np.polyfit(times[keep], np.log(np.abs(c[keep, i])), 1)[0]
    ok = ~np.isnan(fitted)

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    shown = np.unique(np.linspace(0, n - 1, 6).astype(int))
    colors = plt.cm.viridis(np.linspace(0, 0.9, len(shown)))
    for i, color in zip(shown, colors, strict=True):
        a1.semilogx(times[1:], c[1:, i] / c[0, i], "o", ms=3, color=color)
        a1.semilogx(times[1:], np.exp(-rates[i] * times[1:]), "-", lw=1, color=color, label=rf"$\lambda_{{{i + 1}}}$ = {lam[i]:.3g}")
    a1.set(xlabel="time t", ylabel=r"$v_i^\top u(t) \,/\, v_i^\top u(0)$",
           title=r"Residual components: service (dots) vs $e^{-\eta\lambda_i t/N}$")
    a1.legend(fontsize=8)
    a2.loglog(rates[ok], fitted[ok], "o", ms=4, label="fitted from the service's residuals")
    a2.loglog(rates[ok], rates[ok], "k-", lw=0.8, label=r"$\eta\lambda_i/N$")
    a2.set(xlabel=r"$\eta\lambda_i/N$ (eigh of K)", ylabel="decay rate", title="Each component decays at its own rate")
    a2.legend(fontsize=8)
    figure = save(fig, out, "05_eigenbasis_flow.png")

    return {
        "figure": str(figure),
        "closed_form_max_diff": float(np.max(np.abs(c - closed)) / scale),
        "eigenvalues_max_rel_diff": float(np.max(np.abs(np.asarray(traj.eigenvalues) - lam)) / lam[0]),
        "fitted_rate_max_rel_diff": float(np.max(np.abs(fitted[ok] - rates[ok]) / rates[ok])),
        "fitted_components": int(ok.sum()),
        "rates_descending": bool(np.all(np.diff(fitted[ok]) < 0)),
        "condition_number": float(lam[0] / lam[-1]),
    }


if __name__ == "__main__":
    main(run, __doc__)
