"""Safe NumPy ``.npy`` encoding and decoding. Nothing is ever unpickled.

Accepted uploads: format versions 1.0–3.0, dtype float32 or float64 (either byte order,
converted to native), 1-d to 4-d (vectors, ``n × d`` matrices, and ``n × L × C`` or
``n × H × W × C`` inputs of convolutional networks), at least one entry, all values finite, and
exactly as many data bytes as the header promises.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np

from service.problems import ProblemError

NPY_MEDIA_TYPE = "application/x-npy"
_MAX_HEADER = 64 * 1024
_ALLOWED = {np.dtype("<f4"), np.dtype("<f8"), np.dtype(">f4"), np.dtype(">f8")}
#: Array ranks an upload may have (targets 1–2, inputs 2–4).
NPY_RANKS = (1, 2, 3, 4)


def bad_npy(msg: str) -> ProblemError:
    """A 422 for an upload that is not an acceptable .npy array."""
    return ProblemError(422, msg, slug="invalid-npy", title="Invalid .npy payload",
                        errors=[{"loc": ["body"], "msg": msg}])


@dataclass(frozen=True, slots=True)
class NpyHeader:
    """What a ``.npy`` header declares; ``offset`` is where the data bytes start."""

    dtype: np.dtype
    shape: tuple[int, ...]
    fortran_order: bool
    offset: int

    @property
    def data_bytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize  # Python ints: a hostile shape cannot wrap around


def parse_header(prefix: bytes) -> NpyHeader:
    """Read and validate the header at the start of ``prefix`` (no pickles, no object dtypes)."""
    fp = io.BytesIO(prefix)
    try:
        version = np.lib.format.read_magic(fp)
    except ValueError:
        raise bad_npy("body is not a .npy array (bad magic string); send numpy.save output") from None
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    try:
        if version in readers:
            shape, fortran, dtype = readers[version](fp, max_header_size=_MAX_HEADER)
        elif version == (3, 0):  # utf-8 header, same layout as 2.0
            shape, fortran, dtype = np.lib.format._read_array_header(  # noqa: SLF001
                fp, version, max_header_size=_MAX_HEADER
            )
        else:
            raise bad_npy(f".npy format version {version} is not supported (use 1.0–3.0)")
    except ProblemError:
        raise
    except Exception as exc:  # header truncated or malformed (read via ast.literal_eval, never pickle)
        raise bad_npy(f".npy header is truncated or malformed: {exc}") from None
    if dtype not in _ALLOWED:
        raise bad_npy(f".npy dtype {dtype.str} is not allowed; use float32 or float64 (no object or structured dtypes)")
    if len(shape) not in NPY_RANKS:
        raise bad_npy(f".npy array has {len(shape)} dimensions; send a 1-d vector, a 2-d matrix (n × d) or "
                      "3-d/4-d inputs of a convolutional network (n × L × C, n × H × W × C)")
    if any(s == 0 for s in shape):
        raise bad_npy(f".npy array of shape {list(shape)} is empty")
    return NpyHeader(dtype=dtype, shape=tuple(int(s) for s in shape), fortran_order=bool(fortran), offset=fp.tell())


def decode_npy(data: bytes) -> np.ndarray:
    """Decode a whole ``.npy`` payload into a native-endian, C-ordered, finite array."""
    header = parse_header(data[: _MAX_HEADER + 16])
    body = memoryview(data)[header.offset :]
    if len(body) != header.data_bytes:
        raise bad_npy(
            f".npy header promises {header.data_bytes} data bytes for shape {list(header.shape)} "
            f"but {len(body)} were sent"
        )
    order = "F" if header.fortran_order else "C"
    array = np.frombuffer(body, dtype=header.dtype).reshape(header.shape, order=order)
    array = np.ascontiguousarray(array, dtype=header.dtype.newbyteorder("="))
    if not np.isfinite(array).all():
        raise bad_npy(".npy array contains NaN or Infinity; every value must be finite")
    return array


def encode_npy(array: np.ndarray) -> bytes:
    """``numpy.save`` bytes of ``array`` as little-endian, C-ordered, without pickling."""
    arr = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, allow_pickle=False)
    return buf.getvalue()
