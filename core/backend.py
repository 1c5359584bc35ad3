"""The array-module seam: NumPy on the CPU, CuPy on a GPU worker.

Vectorised reference code asks ``array_namespace(x)`` for the module that owns ``x`` and
uses only operations NumPy and CuPy share (``sqrt``, ``arctan2``, ``where``, ``matmul``,
``einsum``, ``frexp``, ``ldexp``, ``expm1``, ``logaddexp``, ...). CuPy is imported lazily and
is optional: without it everything is NumPy.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np


def array_namespace(*arrays: Any) -> ModuleType:
    """The array module (``numpy`` or ``cupy``) of the first non-NumPy array, else ``numpy``."""
    for x in arrays:
        module = type(x).__module__
        if module.startswith("cupy"):
            import cupy

            return cupy
    return np


def to_numpy(x: Any) -> np.ndarray:
    """``x`` as a NumPy array (copied to the host when it lives on a GPU)."""
    if type(x).__module__.startswith("cupy"):
        return x.get()
    return np.asarray(x)
