"""Lecture §3–4: the polynomial kernel and the kernel trick on two concentric circles.

Points on two circles (radius 1: label −1, radius 2: label +1) cannot be separated by a line, but
``x₁² + x₂²`` separates them, and that is a degree-2 polynomial of x: a linear function of the
features ``φ(x) = [1, √2x₁, √2x₂, √2x₁x₂, x₁², x₂²]`` with ``⟨φ(x), φ(x')⟩ = (1 + xᵀx')²``.
Kernel ridge regression through the service with the degree-2 polynomial kernel classifies the
test points (sign of the prediction) almost perfectly; with the linear kernel it is at chance.
The independent reference is ridge regression on the explicit features φ in numpy: the kernel
trick gives the same predictions without ever forming φ.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from _common import main, save
from matplotlib.colors import CenteredNorm

from ntk_client import Client, kernels

RIDGE = 1e-3  # the degree-2 Gram has rank ≤ 6 < n: a small ridge makes the solve well posed


def circles(n: int, rng: np.random.Generator, noise: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """``n`` points, half on each circle (radii 1 and 2, radial noise ``noise``), labels ∓1."""
    label = np.where(np.arange(n) % 2 == 0, -1.0, 1.0)
    radius = np.where(label < 0, 1.0, 2.0) + noise * rng.standard_normal(n)
    angle = rng.uniform(0, 2 * np.pi, n)
    return np.column_stack([radius * np.cos(angle), radius * np.sin(angle)]), label


def features(x: np.ndarray) -> np.ndarray:
    """The explicit degree-2 feature map whose inner products are ``(1 + xᵀx')²``."""
    x1, x2, r2 = x[:, 0], x[:, 1], np.sqrt(2.0)
    return np.column_stack([np.ones(len(x)), r2 * x1, r2 * x2, r2 * x1 * x2, x1**2, x2**2])


def run(client: Client, quick: bool, out: Path) -> dict[str, Any]:
    """Test accuracy of the linear and polynomial kernels, and the kernel trick vs explicit features."""
    rng = np.random.default_rng(0)
    n_train, n_test, grid = (60, 200, 40) if quick else (200, 1000, 150)
    x_train, y_train = circles(n_train, rng)
    x_test, y_test = circles(n_test, rng)
    g = np.linspace(-2.8, 2.8, grid)
    gx, gy = np.meshgrid(g, g)
    x_grid = np.column_stack([gx.ravel(), gy.ravel()])

    specs = {"linear": kernels.linear(), "polynomial (degree 2)": kernels.polynomial(degree=2, c=1.0)}
    accuracy, surfaces, test_means = {}, {}, {}
    for name, spec in specs.items():
        model = client.fit(spec, x_train, y_train, ridge=RIDGE)
        test_means[name] = np.asarray(model.predict(x_test).mean).ravel()
        accuracy[name] = float(np.mean(np.sign(test_means[name]) == y_test))
        surfaces[name] = np.asarray(model.predict(x_grid).mean).reshape(grid, grid)

    phi = features(x_train)  # primal ridge regression on φ: θ = (ΦᵀΦ + ridge·I)⁻¹ Φᵀ y
    theta = np.linalg.solve(phi.T @ phi + RIDGE * np.eye(phi.shape[1]), phi.T @ y_train)
    explicit = features(x_test) @ theta
    poly = test_means["polynomial (degree 2)"]

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
    for ax, (name, z) in zip(axes, surfaces.items(), strict=True):
        ax.contourf(gx, gy, z, levels=20, cmap="RdBu_r", alpha=0.6, norm=CenteredNorm())
        ax.contour(gx, gy, z, levels=[0.0], colors="k", linewidths=2)
        ax.scatter(*x_train[y_train < 0].T, s=12, c="tab:blue", edgecolors="k", linewidths=0.3, label="r = 1")
        ax.scatter(*x_train[y_train > 0].T, s=12, c="tab:red", edgecolors="k", linewidths=0.3, label="r = 2")
        ax.set(title=f"{name} kernel: test accuracy {accuracy[name]:.2f}", aspect="equal")
    axes[0].legend(loc="upper right", fontsize=8)
    figure = save(fig, out, "02_kernel_trick_circles.png")

    return {
        "figure": str(figure),
        "accuracy_linear": accuracy["linear"],
        "accuracy_polynomial": accuracy["polynomial (degree 2)"],
        "kernel_vs_explicit_features_max_diff": float(np.max(np.abs(poly - explicit)) / np.max(np.abs(explicit))),
    }


if __name__ == "__main__":
    main(run, __doc__)
