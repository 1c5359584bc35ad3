"""Lecture §2: linear regression by gradient descent — the loss, and θ staying in the row space of X.

Gradient descent on ``L(θ) = (1/2n) ‖Xθ − y‖²`` from ``θ_0 = 0`` moves θ only along the gradients
``Xᵀ(Xθ − y)``, so ``θ_t = Xᵀ α_t`` stays in the row space of X and ends at the minimum-norm solution
``X⁺y``. Through the service this is kernel gradient descent with the linear kernel ``K = XXᵀ``:
the trajectory's test predictions at the standard basis vectors ``e_j`` are
``K(e_j, X) α_t = (Xᵀ α_t)_j = θ_t[j]``, so the service hands back θ_t itself. A direct numpy gradient
descent on θ is the independent reference.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from _common import main, save

from ntk_client import Client, kernels


def numpy_gd(x: np.ndarray, y: np.ndarray, lr: float, steps: np.ndarray, theta0: np.ndarray) -> np.ndarray:
    """θ after each of ``steps`` (sorted step counts) of ``θ ← θ − lr·(1/n) Xᵀ(Xθ − y)``."""
    n = x.shape[0]
    theta, out, done = theta0.copy(), [], 0
    for s in steps:
        for _ in range(int(s) - done):
            theta -= lr / n * x.T @ (x @ theta - y)
        done = int(s)
        out.append(theta.copy())
    return np.array(out)


def run(client: Client, quick: bool, out: Path) -> dict[str, Any]:
    """Kernel GD with the linear kernel against numpy GD on θ; the row-space component of θ_t."""
    rng = np.random.default_rng(0)
    n, d, last, stride = (20, 50, 150, 5) if quick else (40, 100, 300, 3)
    x = rng.standard_normal((n, d)) / np.sqrt(d)
    y = x @ rng.standard_normal(d) + 0.1 * rng.standard_normal(n)
    lam_max = np.linalg.eigvalsh(x @ x.T)[-1]
    lr = n / lam_max  # half the largest stable rate 2n/λ_max
    steps = np.arange(0, last + 1, stride)

    traj = client.trajectory(kernels.linear(), x, y, steps.tolist(), learning_rate=lr, method="gd",
                             x_test=np.eye(d), loss_normalization="mean")
    theta_service = np.asarray(traj.test_predictions).reshape(len(steps), d)
    loss_service = np.asarray(traj.train_loss)

    theta_np = numpy_gd(x, y, lr, steps, np.zeros(d))
    loss_np = 0.5 / n * np.sum((theta_np @ x.T - y) ** 2, axis=1)
    q, _ = np.linalg.qr(x.T)  # orthonormal basis of the row space of X
    def orth(t: np.ndarray) -> np.ndarray:  # ‖(I − QQᵀ)θ‖ per row
        return np.linalg.norm(t - (t @ q) @ q.T, axis=1)
    norms = np.linalg.norm(theta_service, axis=1)
    orth_fraction = orth(theta_service)[1:] / norms[1:]
    min_norm = np.linalg.pinv(x) @ y

    theta0 = rng.standard_normal(d) / np.sqrt(d)  # contrast: GD from θ_0 ≠ 0 keeps its orthogonal part
    theta_np0 = numpy_gd(x, y, lr, steps, theta0)

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    a1.semilogy(steps, loss_service, "o", ms=4, label="service (linear-kernel GD)")
    a1.semilogy(steps, loss_np, "-", label="numpy GD on θ")
    a1.set(xlabel="step t", ylabel=r"$\hat L_n(\theta_t)$", title="Training loss")
    a1.legend()
    a2.plot(steps, np.linalg.norm(theta_service @ q, axis=1), "o", ms=4,
                label=r"$\|P_{row}\theta_t\|$ (service)")
    a2.plot(steps, orth(theta_service), "s", ms=4, label=r"$\|P_\perp\theta_t\|$ (service, $\theta_0=0$)")
    a2.plot(steps, orth(theta_np0), "--", label=r"$\|P_\perp\theta_t\|$ (numpy, $\theta_0\neq0$)")
    a2.axhline(np.linalg.norm(min_norm), color="gray", lw=0.8, ls=":", label=r"$\|X^+y\|$")
    a2.set(xlabel="step t", ylabel="norm", title="θ stays in the row space of X")
    a2.legend(fontsize=8)
    figure = save(fig, out, "01_linear_regression.png")

    return {
        "figure": str(figure),
        "loss_max_diff": float(np.max(np.abs(loss_service - loss_np)) / loss_np[0]),  # relative to L(θ_0)
        "theta_max_rel_diff": float(np.max(np.linalg.norm(theta_service - theta_np, axis=1)[1:] / norms[1:])),
        "orth_fraction_max": float(np.max(orth_fraction)),
        "loss_ratio_final": float(loss_service[-1] / loss_service[0]),
        "dist_to_min_norm_final": float(np.linalg.norm(theta_service[-1] - min_norm) / np.linalg.norm(min_norm)),
        "orth_from_nonzero_init": float(orth(theta_np0)[-1] / orth(theta0[None])[0]),
    }


if __name__ == "__main__":
    main(run, __doc__)
