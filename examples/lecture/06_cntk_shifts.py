"""A convolutional NTK (CNTK): invariance to cyclic shifts, and what it buys on a small image task.

A convolution with ``CIRCULAR`` padding commutes with cyclic shifts of the image, so a network
``Conv → Relu → GlobalAvgPool → Dense`` computes the same function of ``x`` and of any cyclic shift
of ``x``, for every draw of its weights; its NTK therefore satisfies ``K(shift x, x') = K(x, x')``.
Without the pooling (``Flatten`` instead) only the equivariance ``K(shift x, shift x') = K(x, x')``
survives, and an MLP's NTK (a function of ``⟨x, x'⟩`` and the norms) changes when one image moves.
The task: horizontal (−1) vs vertical (+1) bars of three pixels on an 8 × 8 torus, trained on bars
in one corner only and tested anywhere: the CNTK with pooling classifies the moved bars, the MLP's NTK
is at chance. All kernels and fits come from the service; shifts are ``numpy.roll``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from _common import main, save

from ntk_client import Client, stax

SIZE = 8  # images are SIZE × SIZE × 1 (NHWC)


def bars(n: int, positions: int, rng: np.random.Generator, noise: float = 0.05) -> tuple[np.ndarray, np.ndarray]:
    """``n`` noisy images, alternately a horizontal (label −1) and a vertical (+1) bar of 3 pixels
    whose first pixel lies in the top-left ``positions × positions`` corner (cyclically wrapped)."""
    images = noise * rng.standard_normal((n, SIZE, SIZE))
    labels = np.where(np.arange(n) % 2 == 0, -1.0, 1.0)
    for image, label in zip(images, labels, strict=True):
        row, col = rng.integers(positions, size=2)
        span = (np.arange(3) + (col if label < 0 else row)) % SIZE
        if label < 0:
            image[row, span] += 1.0
        else:
            image[span, col] += 1.0
    return images[..., None], labels


def networks() -> dict[str, tuple[str, Any]]:
    """The three architectures compared, by result key: ``(label, spec)`` (infinite width: the
    hidden widths are ignored)."""
    conv = (stax.Conv(64, (3, 3), padding="CIRCULAR", W_std=1.4, b_std=0.05), stax.Relu())
    return {
        "mlp": ("MLP", stax.serial(stax.Flatten(), stax.Dense(512, W_std=1.4, b_std=0.05), stax.Relu(),
                                   stax.Dense(1))),
        "cnn_flatten": ("CNN + Flatten", stax.serial(*conv, stax.Flatten(), stax.Dense(1))),
        "cnn_pool": ("CNN + GlobalAvgPool", stax.serial(*conv, stax.GlobalAvgPool(), stax.Dense(1))),
    }


def shift(x: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Cyclic shift of NHWC images by ``(rows, cols)``."""
    return np.roll(x, (rows, cols), axis=(1, 2))


def run(client: Client, quick: bool, out: Path) -> dict[str, Any]:
    """Shift (in)variance of three NTKs and their test accuracy on moved bars."""
    rng = np.random.default_rng(0)
    n_train, n_test = (20, 60) if quick else (40, 400)
    x_train, y_train = bars(n_train, 3, rng)  # bars start in the 3 × 3 corner only
    x_test, y_test = bars(n_test, SIZE, rng)  # anywhere
    a, b = x_train[:6], x_train[6:12]
    rolled = np.concatenate([shift(a[:1], 0, s) for s in range(SIZE)])  # one image at every column shift

    result: dict[str, Any] = {}
    profiles = {}
    for key, (_, spec) in networks().items():
        kernel_fn = client.kernel_fn(spec)
        base = kernel_fn(a, b, "ntk")
        one = kernel_fn(shift(a, 2, 3), b, "ntk")
        both = kernel_fn(shift(a, 2, 3), shift(b, 2, 3), "ntk")
        profiles[key] = kernel_fn(rolled, a[:1], "ntk").ravel() / kernel_fn(a[:1], None, "ntk")[0, 0]
        model = client.fit(spec, x_train, y_train, ridge=1e-6, ridge_mode="relative")
        predicted = np.asarray(model.predict(x_test).mean).ravel()
        result[f"{key}_one_shifted"] = float(np.max(np.abs(one - base)) / np.max(np.abs(base)))
        result[f"{key}_both_shifted"] = float(np.max(np.abs(both - base)) / np.max(np.abs(base)))
        result[f"{key}_accuracy"] = float(np.mean(np.sign(predicted) == y_test))

    fig = plt.figure(figsize=(14, 4))
    grid = fig.add_gridspec(2, 7, width_ratios=[1, 1, 1, 0.3, 4, 0.9, 3])
    for k, (images, title) in enumerate(((x_train, "train"), (x_test, "test"))):
        for j in range(3):
            ax = fig.add_subplot(grid[k, j])
            ax.imshow(images[j, ..., 0], cmap="gray_r", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(title)
    ax = fig.add_subplot(grid[:, 4])
    # every finite network of the pooled architecture is shift-invariant too, not just the limit:
    finite = client.empirical_kernel(networks()["cnn_pool"][1], rolled, a[:1], width=64, seed=0, get=("ntk",))
    finite_ntk = np.asarray(finite.ntk).ravel()
    result["cnn_pool_finite_width_spread"] = float(np.ptp(finite_ntk) / np.abs(finite_ntk).max())
    labels = {key: label for key, (label, _) in networks().items()}
    for key, profile in profiles.items():
        ax.plot(range(SIZE), profile, "o-", label=labels[key])
    ax.set(xlabel="cyclic shift s of x (columns)", ylabel=r"$K(\mathrm{shift}_s\,x,\ x) \,/\, K(x, x)$",
           title="One image moved: only the pooled CNTK is invariant")
    ax.legend(fontsize=8)
    ax = fig.add_subplot(grid[:, 6])
    ax.bar(range(len(labels)), [result[f"{key}_accuracy"] for key in labels],
           color=["tab:blue", "tab:orange", "tab:green"])
    ax.axhline(0.5, color="gray", ls=":", lw=1)
    ax.set_xticks(range(len(labels)), [label.replace(" + ", "\n+ ") for label in labels.values()], fontsize=8)
    ax.set(ylim=(0, 1.05), ylabel="test accuracy", title="Test accuracy (trained on corner bars)")
    result["figure"] = str(save(fig, out, "06_cntk_shifts.png"))
    return result


if __name__ == "__main__":
    main(run, __doc__)
