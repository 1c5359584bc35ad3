"""``.npy`` bytes in and out (``application/x-npy``): little-endian float32/float64, never pickled."""

from __future__ import annotations

import io
from typing import Any

import numpy as np

NPY_MEDIA_TYPE = "application/x-npy"


def as_float_array(value: Any, name: str) -> np.ndarray:
    """``value`` as a C-ordered little-endian float32 (kept) or float64 (anything else) array."""
    array = np.asarray(value)
    if array.dtype.kind not in "fiub":
        raise TypeError(f"{name} must be numeric, got dtype {array.dtype}")
    dtype = np.dtype("<f4") if array.dtype == np.float32 else np.dtype("<f8")
    return np.ascontiguousarray(array, dtype=dtype)


def to_npy(array: np.ndarray) -> bytes:
    """The ``.npy`` file of ``array`` (format 1.0+, ``allow_pickle=False``)."""
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def from_npy(data: bytes) -> np.ndarray:
    """The array in ``.npy`` bytes; object dtypes (pickles) are refused."""
    return np.load(io.BytesIO(data), allow_pickle=False)
