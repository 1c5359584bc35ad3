"""What the client returns: NumPy arrays in small named containers, with ``plot()`` where a picture fits.

Conventions are the service's (api-v1.md): losses ``L = (1/2N) Σ ‖f − y‖²`` (``"mean"``) or
``½ Σ ‖f − y‖²`` (``"sum"``); trajectory times are gradient-flow times (``method="flow"``) or step
counts (``"gd"``); predictions are ``n × k`` (``k`` outputs), one matrix per time.
"""

from __future__ import annotations

import collections
import functools
from dataclasses import dataclass, field
from typing import Any

import numpy as np


def _plt() -> Any:
    try:
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("plot() needs matplotlib: pip install 'ntk-client[plot]'") from None
    return plt


def _axes(ax: Any) -> Any:
    return ax if ax is not None else _plt().subplots()[1]


def _array(value: Any) -> np.ndarray | None:
    return None if value is None else np.asarray(value, dtype=np.float64)


@functools.cache
def _kernel_type(names: tuple[str, ...]) -> type:
    return collections.namedtuple("Kernel", names)  # type: ignore[misc]


def kernel_tuple(results: dict[str, np.ndarray]) -> Any:
    """A ``Kernel`` named tuple with one field per matrix (``k.nngp``, ``k.ntk``), like neural-tangents'."""
    return _kernel_type(tuple(results))(**results)


@dataclass(frozen=True)
class Dataset:
    """An uploaded array (``POST /v1/datasets``): its id names it in any request's array field."""

    id: str
    name: str | None
    shape: tuple[int, ...]
    dtype: str
    sha256: str
    bytes: int
    created_at: str

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> Dataset:
        return cls(doc["id"], doc.get("name"), tuple(doc["shape"]), doc["dtype"], doc["sha256"], doc["bytes"],
                   doc["created_at"])


@dataclass(frozen=True)
class EmpiricalKernel:
    """Finite-width kernels (``.ntk``, ``.nngp`` …) and ``‖K_width − K_∞‖_F / ‖K_∞‖_F`` per matrix."""

    results: dict[str, np.ndarray]
    relative_error_to_infinite: dict[str, float]

    def __getattr__(self, name: str) -> np.ndarray:
        results = self.__dict__.get("results", {})
        if name in results:
            return results[name]
        raise AttributeError(f"no {name!r} matrix here (requested: {sorted(results)})")

    def __getitem__(self, name: str) -> np.ndarray:
        return self.results[name]


@dataclass(frozen=True)
class Prediction:
    """``mean`` (n_test × k) after training for ``time`` and, when asked, the ``variance`` per test point."""

    mean: np.ndarray
    variance: np.ndarray | None


@dataclass(frozen=True)
class Trajectory:
    """Training dynamics of the linearized network from ``f_0 = 0``, at each of ``times``.

    ``train_predictions``/``test_predictions``: ``T × n × k`` (``None`` when a trajectory job's
    ``include`` left them out of the JSON); ``eigenvalues`` of the training Gram matrix (descending;
    a ``krylov`` job's Ritz values); ``method``: ``"flow"`` (times) or ``"gd"`` (steps); ``solver``: what a
    ``krylov`` trajectory job reports, else ``None``.
    """

    times: np.ndarray
    train_loss: np.ndarray
    train_predictions: np.ndarray | None
    test_predictions: np.ndarray | None
    test_loss: np.ndarray | None
    eigenvalues: np.ndarray
    max_stable_learning_rate: float | None
    method: str = "flow"
    solver: dict[str, Any] | None = None

    @classmethod
    def from_document(cls, doc: dict[str, Any], method: str = "flow") -> Trajectory:
        return cls(_array(doc["times"]), _array(doc["train_loss"]), _array(doc.get("train_predictions")),  # type: ignore[arg-type]
                   _array(doc.get("test_predictions")), _array(doc.get("test_loss")), _array(doc["eigenvalues"]),  # type: ignore[arg-type]
                   doc.get("max_stable_learning_rate"), method, doc.get("solver"))

    def plot(self, ax: Any = None) -> Any:
        """Train (and test) loss against time or step, log-scaled loss; returns the matplotlib Axes."""
        ax = _axes(ax)
        ax.plot(self.times, self.train_loss, marker=".", label="train loss")
        if self.test_loss is not None:
            ax.plot(self.times, self.test_loss, marker=".", label="test loss")
        losses = np.concatenate([self.train_loss, self.test_loss if self.test_loss is not None else []])
        if (losses > 0).all():
            ax.set_yscale("log")
        ax.set_xlabel("gradient-descent step" if self.method == "gd" else "training time t")
        ax.set_ylabel("loss")
        ax.legend()
        return ax


@dataclass(frozen=True)
class Spectrum:
    """Eigenvalues of a Gram matrix (descending), its condition number (``None``: singular), λ_min and trace."""

    eigenvalues: np.ndarray
    condition_number: float | None
    min_eigenvalue: float
    trace: float

    def plot(self, ax: Any = None) -> Any:
        """Eigenvalue against its rank (log scale where positive); returns the matplotlib Axes."""
        ax = _axes(ax)
        rank = np.arange(1, len(self.eigenvalues) + 1)
        positive = self.eigenvalues > 0
        ax.plot(rank[positive], self.eigenvalues[positive], marker=".")
        if positive.any():
            ax.set_yscale("log")
        ax.set_xlabel("index i")
        ax.set_ylabel("eigenvalue λ_i")
        return ax


@dataclass(frozen=True)
class NetworkSide:
    """The finite network as trained, per step: losses, test predictions (steps × n_test) and relative changes."""

    train_loss: np.ndarray
    test_predictions: np.ndarray | None
    test_loss: np.ndarray | None
    relative_parameter_change: np.ndarray
    relative_kernel_change: np.ndarray


@dataclass(frozen=True)
class NTKSide:
    """The infinite-width NTK's gradient-descent prediction for the same steps (from ``initial_function``)."""

    initial_function: str
    train_loss: np.ndarray
    test_predictions: np.ndarray | None
    test_loss: np.ndarray | None


@dataclass(frozen=True)
class LazyTraining:
    """``POST /v1/experiments/lazy-training``: a finite network beside its NTK, step by step."""

    steps: np.ndarray
    width: int
    seed: int
    parameter_count: int
    network: NetworkSide
    ntk: NTKSide
    ntk_from_network_init: NTKSide
    gap_train: np.ndarray
    gap_test: np.ndarray | None
    max_stable_learning_rate: float | None
    document: dict[str, Any] = field(repr=False, default_factory=dict)

    @classmethod
    def from_document(cls, doc: dict[str, Any]) -> LazyTraining:
        def ntk_side(side: dict[str, Any]) -> NTKSide:
            return NTKSide(side["initial_function"], _array(side["train_loss"]),  # type: ignore[arg-type]
                           _array(side.get("test_predictions")), _array(side.get("test_loss")))

        net = doc["network"]
        network = NetworkSide(_array(net["train_loss"]), _array(net.get("test_predictions")),  # type: ignore[arg-type]
                              _array(net.get("test_loss")), _array(net["relative_parameter_change"]),  # type: ignore[arg-type]
                              _array(net["relative_kernel_change"]))  # type: ignore[arg-type]
        return cls(np.asarray(doc["steps"], dtype=np.int64), doc["width"], doc["seed"], doc["parameter_count"],
                   network, ntk_side(doc["ntk"]), ntk_side(doc["ntk_from_network_init"]),
                   _array(doc["gap_train"]), _array(doc.get("gap_test")),  # type: ignore[arg-type]
                   doc.get("max_stable_learning_rate"), doc)

    def plot(self, ax: Any = None, kind: str = "loss") -> Any:
        """``kind="loss"``: the network's train loss beside the NTK's prediction (from the network's own
        f_0 and from 0); ``"change"``: relative parameter and kernel change. Returns the Axes."""
        ax = _axes(ax)
        if kind == "loss":
            ax.plot(self.steps, self.network.train_loss, marker=".", label=f"network (width {self.width})")
            ax.plot(self.steps, self.ntk_from_network_init.train_loss, "--", label="NTK, from the network's f_0")
            ax.plot(self.steps, self.ntk.train_loss, ":", label="NTK, from f_0 = 0")
            ax.set_ylabel("train loss")
        elif kind == "change":
            ax.plot(self.steps, self.network.relative_parameter_change, marker=".", label="‖θ_t − θ_0‖ / ‖θ_0‖")
            ax.plot(self.steps, self.network.relative_kernel_change, marker=".", label="‖K_t − K_0‖_F / ‖K_0‖_F")
            ax.set_ylabel("relative change")
        else:
            raise ValueError(f"kind must be 'loss' or 'change', got {kind!r}")
        ax.set_xlabel("gradient-descent step")
        ax.legend()
        return ax
