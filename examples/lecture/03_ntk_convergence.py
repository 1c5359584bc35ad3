"""Lecture §5: the finite-width NTK K_m of the two-layer ReLU network converges to K_∞ like m^{-1/2}.

``f_m(x) = m^{-1/2} Σ_i b_i relu(a_iᵀx)`` with ``a_i ~ N(0, I_d)``, ``b_i ~ N(0, 1)``: each entry of
the empirical NTK ``K_m = ⟨∇θ f, ∇θ f⟩`` is an average of m independent terms, so
``‖K_m − K_∞‖_F / ‖K_∞‖_F`` shrinks like ``m^{-1/2}`` (slope −½ on log-log axes). The service
computes K_m exactly (one network per width and seed) and K_∞ in closed form; the independent
reference is the lecture's formula
``K_∞ = ⟨x,x'⟩(π − θ)/2π + ‖x‖‖x'‖((π − θ)cos θ + sin θ)/2π`` evaluated here in numpy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from _common import loglog_slope, main, save

from ntk_client import Client, kernels


def lecture_ntk(x: np.ndarray) -> np.ndarray:
    """The lecture's infinite-width two-layer ReLU NTK ``K^(a) + K^(b)`` on the rows of ``x``."""
    norms = np.linalg.norm(x, axis=1)
    outer = np.outer(norms, norms)
    u = x / norms[:, None]
    diff = np.linalg.norm(u[:, None, :] - u[None, :, :], axis=-1)  # the angle as 2·atan2(‖u−v‖, ‖u+v‖):
    total = np.linalg.norm(u[:, None, :] + u[None, :, :], axis=-1)  # accurate near 0 and π, unlike arccos
    angle = 2 * np.arctan2(diff, total)
    cos = np.cos(angle)
    k_a = x @ x.T * (np.pi - angle) / (2 * np.pi)
    k_b = outer * ((np.pi - angle) * cos + np.sin(angle)) / (2 * np.pi)
    return k_a + k_b


def run(client: Client, quick: bool, out: Path) -> dict[str, Any]:
    """Relative Frobenius error of K_m against width m, averaged over seeds; its log-log slope."""
    rng = np.random.default_rng(0)
    n, d = 20, 5
    x = rng.standard_normal((n, d))
    widths = 2 ** np.arange(6, 15, 2) if quick else 2 ** np.arange(4, 17)
    seeds = range(4 if quick else 20)
    spec = kernels.two_layer_relu()

    k_inf = client.kernel_fn(spec)(x, None, "ntk")
    k_lecture = lecture_ntk(x)
    errors = np.zeros((len(widths), len(seeds)))
    reported_gap = 0.0
    samples = {}
    for i, m in enumerate(widths):
        for j, seed in enumerate(seeds):
            emp = client.empirical_kernel(spec, x, width=int(m), seed=seed, get=("ntk",))
            k_m = np.asarray(emp.ntk)
            errors[i, j] = np.linalg.norm(k_m - k_lecture) / np.linalg.norm(k_lecture)
            reported_gap = max(reported_gap, abs(errors[i, j] - emp.relative_error_to_infinite["ntk"]))
            if seed == 0:
                samples[int(m)] = k_m
    mean = errors.mean(axis=1)
    slope, intercept = loglog_slope(widths, mean)

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    a1.loglog(np.repeat(widths, len(seeds)), errors.ravel(), ".", color="tab:blue", alpha=0.25, label="one network")
    a1.loglog(widths, mean, "o", color="tab:blue", label="mean over seeds")
    a1.loglog(widths, np.exp(intercept) * widths**slope, "-", color="tab:orange", label=f"fit: slope {slope:.3f}")
    a1.set(xlabel="width m", ylabel=r"$\|K_m - K_\infty\|_F / \|K_\infty\|_F$",
           title="Two-layer ReLU NTK: distance to the limit")
    a1.legend()
    lo, hi = k_lecture.min(), k_lecture.max()
    for m in sorted(samples)[:: max(1, len(samples) // 3)]:
        a2.plot(k_lecture.ravel(), samples[m].ravel(), ".", ms=3, label=f"m = {m}")
    a2.plot([lo, hi], [lo, hi], "k-", lw=0.8, label=r"$K_\infty$")
    a2.set(xlabel=r"$K_\infty(x_i, x_j)$", ylabel=r"$K_m(x_i, x_j)$", title="Entries of one network's NTK")
    a2.legend(fontsize=8)
    figure = save(fig, out, "03_ntk_convergence.png")

    return {
        "figure": str(figure),
        "widths": widths.tolist(),
        "mean_relative_error": mean.tolist(),
        "slope": slope,
        "service_vs_lecture_formula_max_diff": float(np.max(np.abs(k_inf - k_lecture)) / np.max(np.abs(k_lecture))),
        "reported_error_max_diff": float(reported_gap),
    }


if __name__ == "__main__":
    main(run, __doc__)
