"""Lecture §5: lazy training — the wider the network, the less its weights and kernel move, and the
closer its predictions stay to those of its linearization (the NTK).

The service trains a real two-layer ReLU network ``f_m(x) = m^{-1/2} Σ_i b_i relu(a_iᵀx)`` of width m
by full-batch gradient descent on ``(1/2n) Σ (f − y)²`` and reports, at each step, the relative
weight movement ``‖θ_t − θ_0‖/‖θ_0‖``, the relative change of its empirical NTK
``‖K_t − K_0‖_F/‖K_0‖_F``, and its test predictions beside the NTK's gradient-descent prediction
from the network's own ``f_0`` (what the first-order Taylor expansion predicts). Averaged over
seeds, weight movement and the network–NTK gap shrink like ``m^{-1/2}``; the kernel moves
even less, closer to ``m^{-1}`` (its first-order change averages out over the random signs of the
output weights), so "θ ≈ θ_0 ⇒ K_t ≈ K_0" holds with room to spare.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from _common import loglog_slope, main, save

from ntk_client import Client, kernels


def sphere(n: int, d: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` points uniform on the unit sphere of R^d."""
    x = rng.standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def run(client: Client, quick: bool, out: Path) -> dict[str, Any]:
    """Final-step weight movement, kernel change and network–NTK test gap against width; slopes."""
    rng = np.random.default_rng(0)
    n, d = 20, 5
    x, x_test = sphere(n, d, rng), sphere(50, d, rng)
    y = np.sin(3 * x[:, 0]) + 0.5 * x[:, 1]
    spec = kernels.two_layer_relu()
    lr = n / client.spectrum(spec, x).eigenvalues[0]  # half the largest stable rate 2n/λ_max
    widths = 2 ** np.arange(6, 13, 2) if quick else 2 ** np.arange(4, 13)
    seeds = range(3 if quick else 8)
    last = 300 if quick else 1000
    steps = sorted({0, *(int(s) for s in np.geomspace(1, last, 12))})

    names = ("parameter change", "kernel change", "network–NTK test gap")
    finals = np.zeros((3, len(widths), len(seeds)))
    movement, scatter = {}, {}
    for i, m in enumerate(widths):
        for j, seed in enumerate(seeds):
            r = client.lazy_training(spec, x, y, x_test=x_test, width=int(m), seed=seed, steps=steps,
                                     learning_rate=lr)
            finals[:, i, j] = (r.network.relative_parameter_change[-1], r.network.relative_kernel_change[-1],
                               r.gap_test[-1])
            if seed == 0:
                movement[int(m)] = np.asarray(r.network.relative_parameter_change)
                scatter[int(m)] = (np.asarray(r.ntk_from_network_init.test_predictions[-1]),
                                   np.asarray(r.network.test_predictions[-1]))
    means = finals.mean(axis=2)
    slopes = [loglog_slope(widths, mean) for mean in means]

    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(15, 4.2))
    for mean, (slope, intercept), name, marker in zip(means, slopes, names, "osd", strict=True):
        line = a1.loglog(widths, mean, marker, label=f"{name}: slope {slope:.2f}")[0]
        a1.loglog(widths, np.exp(intercept) * widths**slope, "-", color=line.get_color(), lw=1)
    a1.set(xlabel="width m", ylabel="relative size (final step, mean over seeds)", title="Lazy training")
    a1.legend(fontsize=8)
    shown = sorted(movement)[:: max(1, len(movement) // 4)]
    for m in shown:
        a2.semilogx(steps[1:], movement[m][1:], "-o", ms=3, label=f"m = {m}")
    a2.set(xlabel="gradient-descent step", ylabel=r"$\|\theta_t-\theta_0\| / \|\theta_0\|$",
           title="Weights barely move when m is large")
    a2.legend(fontsize=8)
    for m in (shown[0], shown[-1]):
        ntk, net = scatter[m]
        a3.plot(ntk, net, ".", label=f"m = {m}")
    lims = np.array(a3.get_xlim())
    a3.plot(lims, lims, "k-", lw=0.8)
    a3.set(xlabel="NTK (linearized) prediction", ylabel="trained network's prediction",
           title=f"Test predictions after {last} steps")
    a3.legend(fontsize=8)
    figure = save(fig, out, "04_lazy_training.png")

    result: dict[str, Any] = {"figure": str(figure), "widths": widths.tolist(), "learning_rate": float(lr)}
    for key, mean, (slope, _) in zip(("parameter_change", "kernel_change", "test_gap"), means, slopes, strict=True):
        result[f"{key}_mean"] = mean.tolist()
        result[f"{key}_slope"] = slope
    return result


if __name__ == "__main__":
    main(run, __doc__)
