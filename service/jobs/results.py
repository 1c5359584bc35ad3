"""Gram job results: their layout on disk, how tiles write them, how they are served.

**Layout.** ``jobs/<id>/result/<output>.npy``: one C-ordered little-endian ``.npy`` per output,
created whole when the job is planned (:func:`create_result_files`: the header, then
``posix_fallocate`` of the data, so the space the planning checked is reserved and a tile never
meets a full disk), and written in place by the tiles (:func:`write_tile`: ``pwrite`` of each
row of the tile's block and, above the diagonal of a symmetric job, of its transpose; tiles are
disjoint, so concurrent tiles never touch the same bytes). ``pwrite`` leaves nothing buffered in
the worker: once it returns, the bytes are in the kernel's page cache and visible to the API
(also after the worker dies), so the done-marker can follow at once. (A memory map would page-
fault per 4 KiB and turn a full disk into ``SIGBUS``; measured 2–4× slower than ``pwrite``.)

**Reading.** The representation of ``GET /v1/jobs/{id}/result?rows=a:b&output=name`` is the
``.npy`` of that block: a fresh header for shape ``(b − a, n2)`` followed by the contiguous bytes
of rows ``a:b`` of the file (:func:`open_result`). ``Range: bytes=…`` addresses bytes of that
representation (:func:`result_response`: single ranges, suffix and open ranges, ``If-Range``,
``416``); the bytes are read with large ``pread`` calls in worker threads.

**Trajectory jobs** write ``result.json`` (the trajectory document; the prediction arrays the
request did not ``include`` are ``null`` there) and every prediction array as
``result/<name>.npy`` (``train_predictions``, ``test_predictions``: times × points × outputs,
float64), served by the same reader (``?rows=a:b`` selects times) — :func:`write_trajectory_result`.

**Before this layout** jobs wrote ``result.zarr/<output>`` (row-slab chunks). Such folders are
still read (and, for a job that was running during the upgrade, written) through the same
interface, slower: rows are decoded from the zarr chunks.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import io
import math
import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path
from typing import Any

import anyio
import numpy as np
from starlette.responses import Response, StreamingResponse

from service.npy import NPY_MEDIA_TYPE
from service.problems import ProblemError, insufficient_storage, invalid

RESULT_DIR = "result"
LEGACY_ZARR = "result.zarr"
#: Bytes per read (and per ASGI body message) when streaming a result.
READ_CHUNK = 8 << 20


def result_path(folder: Path, output: str) -> Path:
    return folder / RESULT_DIR / f"{output}.npy"


def npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """The ``.npy`` (format 1.0) header of a C-ordered little-endian array."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype).newbyteorder("<")),
                                               "fortran_order": False, "shape": tuple(shape)})
    return buf.getvalue()


@dataclass(frozen=True, slots=True)
class NpyLayout:
    """Where a C-ordered ``.npy`` file's data starts, and its shape (2-d or more: a "row" is one
    index of the first axis) and dtype."""

    offset: int
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def row_bytes(self) -> int:
        return math.prod(self.shape[1:]) * self.dtype.itemsize


def read_layout(f: Any) -> NpyLayout:
    """The layout of the open ``.npy`` file ``f`` (positioned anywhere; left after the header)."""
    f.seek(0)
    version = np.lib.format.read_magic(f)
    reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran_order, dtype = reader(f)
    if fortran_order or len(shape) < 2:
        raise ValueError(f"{getattr(f, 'name', 'result')} is not a C-ordered array of rank ≥ 2")
    return NpyLayout(f.tell(), tuple(int(s) for s in shape), np.dtype(dtype))


# --- writing (planning and tiles) -----------------------------------------------------------------------------


def create_result_files(folder: Path, plan: dict[str, Any]) -> None:
    """The job's ``done/`` folder and one full-size result file per output (space reserved).

    A full disk is a ``507`` (the caller removes the folder)."""
    (folder / "done").mkdir(parents=True, exist_ok=True)
    (folder / RESULT_DIR).mkdir(exist_ok=True)
    shape = (plan["n1"], plan["n2"] or plan["n1"])
    dtype = np.dtype(plan["dtype"]).newbyteorder("<")
    header = npy_header(dtype, shape)
    size = len(header) + shape[0] * shape[1] * dtype.itemsize
    for name in plan["outputs"]:
        fd = os.open(result_path(folder, name), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.pwrite(fd, header, 0)
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as exc:  # a filesystem without fallocate: a sparse file (a tile then fails cleanly)
                if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                    raise
                os.ftruncate(fd, size)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise insufficient_storage("the job's result", shutil.disk_usage(folder).free, ["store", "jobs"],
                                           size * len(plan["outputs"])) from None
            raise
        finally:
            os.close(fd)


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        written = os.pwrite(fd, data, offset)
        data, offset = data[written:], offset + written


def _write_block(fd: int, layout: NpyLayout, r0: int, c0: int, block: np.ndarray) -> None:
    """``block`` into rows ``r0:…``, columns ``c0:…`` of the file: one ``pwrite`` per row, or one in
    all when the block spans whole rows."""
    block = np.ascontiguousarray(block, dtype=layout.dtype)
    rows, cols = block.shape
    start = layout.offset + (r0 * layout.shape[1] + c0) * layout.dtype.itemsize
    if cols == layout.shape[1]:
        _pwrite_all(fd, memoryview(block).cast("B"), start)
        return
    for i in range(rows):
        _pwrite_all(fd, memoryview(block[i]).cast("B"), start + i * layout.row_bytes)


def write_tile(folder: Path, blocks: dict[str, np.ndarray], rows: tuple[int, int], cols: tuple[int, int],
               mirror: bool) -> None:
    """Write one tile's blocks (one per output) at ``rows × cols``, and at ``cols × rows`` transposed
    if ``mirror`` (a symmetric job's tile above the diagonal). Raises ``FileNotFoundError`` if the
    job's folder was removed meanwhile."""
    (r0, _), (c0, _) = rows, cols
    for name, block in blocks.items():
        path = result_path(folder, name)
        if not path.exists() and (folder / LEGACY_ZARR / name).exists():  # a job planned before the upgrade
            _write_legacy_zarr(folder / LEGACY_ZARR / name, block, rows, cols, mirror)
            continue
        with open(path, "r+b", buffering=0) as f:
            layout = read_layout(f)
            _write_block(f.fileno(), layout, r0, c0, block)
            if mirror:
                _write_block(f.fileno(), layout, c0, r0, block.T)


def _write_legacy_zarr(path: Path, block: np.ndarray, rows: tuple[int, int], cols: tuple[int, int],
                       mirror: bool) -> None:
    import zarr

    array = zarr.open_array(path, mode="r+")
    array[rows[0]:rows[1], cols[0]:cols[1]] = block
    if mirror:
        array[cols[0]:cols[1], rows[0]:rows[1]] = block.T


#: The arrays of a trajectory result that are also served as ``.npy`` (``?output=``).
TRAJECTORY_ARRAYS = ("train_predictions", "test_predictions")
TRAJECTORY_DOCUMENT = "result.json"


def trajectory_outputs(n_test: int) -> list[str]:
    """The ``?output=`` names of a trajectory job (test predictions only when it had test points)."""
    return list(TRAJECTORY_ARRAYS if n_test else TRAJECTORY_ARRAYS[:1])


def _save_atomic(path: Path, write: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def write_trajectory_result(folder: Path, document: dict[str, Any], include: list[str]) -> None:
    """Write a trajectory job's result (module docstring): each array of :data:`TRAJECTORY_ARRAYS`
    in ``document`` (T × n × k) as ``.npy``, then the JSON document with the arrays not in
    ``include`` set to ``null``. The document is written last: its presence means the result is
    complete."""
    from service.responses import dumps

    (folder / RESULT_DIR).mkdir(parents=True, exist_ok=True)
    for name in TRAJECTORY_ARRAYS:
        array = document.get(name)
        if array is not None:
            array = np.ascontiguousarray(array, dtype="<f8")
            _save_atomic(result_path(folder, name), lambda f, a=array: np.save(f, a, allow_pickle=False))
    inline = {key: (None if key in TRAJECTORY_ARRAYS and key not in include else value)
              for key, value in document.items()}
    _save_atomic(folder / TRAJECTORY_DOCUMENT, lambda f: f.write(dumps(inline)))


# --- reading ----------------------------------------------------------------------------------------------------


class _NpySource:
    """The data bytes of a result file, read with ``pread``."""

    def __init__(self, path: Path) -> None:
        self.file = open(path, "rb", buffering=0)  # noqa: SIM115 — closed by ResultBlock.close
        try:
            self.layout = read_layout(self.file)
            stat = os.fstat(self.file.fileno())
        except BaseException:
            self.file.close()
            raise
        if stat.st_size < self.layout.offset + self.layout.shape[0] * self.layout.row_bytes:
            self.file.close()
            raise ValueError(f"{path.name} is shorter than its header says")
        self.validator = f"{stat.st_size}:{stat.st_mtime_ns}"
        self.mtime = stat.st_mtime
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(self.file.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)

    def read(self, offset: int, size: int) -> bytes:
        """``size`` data bytes from data offset ``offset``."""
        fd, at = self.file.fileno(), self.layout.offset + offset
        data = os.pread(fd, size, at)
        if len(data) == size:
            return data
        parts = [data]
        while (got := sum(map(len, parts))) < size:
            more = os.pread(fd, size - got, at + got)
            if not more:
                raise OSError(errno.EIO, "result file ended early")
            parts.append(more)
        return b"".join(parts)

    def close(self) -> None:
        self.file.close()


class _ZarrSource:
    """The data bytes of a pre-upgrade ``result.zarr`` array (whole rows decoded, then sliced)."""

    def __init__(self, path: Path) -> None:
        import zarr

        self.array = zarr.open_array(path, mode="r")
        dtype = np.dtype(self.array.dtype).newbyteorder("<")
        self.layout = NpyLayout(0, (int(self.array.shape[0]), int(self.array.shape[1])), dtype)
        stat = (path / "zarr.json").stat()
        self.validator = f"zarr:{stat.st_mtime_ns}"
        self.mtime = stat.st_mtime

    def read(self, offset: int, size: int) -> bytes:
        row_bytes = self.layout.row_bytes
        r0, r1 = offset // row_bytes, -(-(offset + size) // row_bytes)
        rows = np.ascontiguousarray(self.array[r0:r1], dtype=self.layout.dtype)
        skip = offset - r0 * row_bytes
        return memoryview(rows).cast("B")[skip:skip + size].tobytes()

    def close(self) -> None:
        pass


@dataclass(slots=True)
class ResultBlock:
    """The ``.npy`` representation of rows ``rows`` of one output: ``header`` then ``data_length``
    bytes of ``source`` from data offset ``data_start``."""

    header: bytes
    source: _NpySource | _ZarrSource
    data_start: int
    data_length: int
    etag: str
    last_modified: float

    @property
    def length(self) -> int:
        return len(self.header) + self.data_length

    def read(self, pos: int, size: int) -> bytes:
        """``size`` bytes of the representation from ``pos``, within the header or within the data."""
        head = len(self.header)
        if pos < head:
            return self.header[pos:min(head, pos + size)]
        return self.source.read(self.data_start + pos - head, size)

    def close(self) -> None:
        self.source.close()


def parse_rows(rows: str | None, n: int) -> tuple[int, int]:
    """``?rows=a:b`` (either end may be left out) as ``(a, b)`` with ``0 ≤ a < b ≤ n``; 422 otherwise."""
    if rows is None:
        return 0, n
    start, sep, stop = rows.partition(":")
    try:
        a = int(start) if start else 0
        b = int(stop) if stop else n
    except ValueError:
        a = b = -1
    if not sep or not 0 <= a < b <= n:
        raise invalid(["query", "rows"], f"rows must be 'a:b' with 0 ≤ a < b ≤ {n}, got {rows!r}")
    return a, b


def open_result(folder: Path, job_id: str, outputs: list[str], output: str | None, rows: str | None
                ) -> ResultBlock:
    """The representation the URL names: output ``output`` (default the job's first of ``outputs``),
    rows ``rows`` (of the first axis: a gram matrix's rows, a trajectory array's times).

    Blocking file work: call it in a worker thread. The returned block holds the file open (a
    deleted job's download still completes); :meth:`ResultBlock.close` it."""
    name = output or outputs[0]
    if name not in outputs:
        raise invalid(["query", "output"], f"this job computed {', '.join(outputs)}, not {name!r}")
    path = result_path(folder, name)
    try:
        source: _NpySource | _ZarrSource = (_ZarrSource(folder / LEGACY_ZARR / name)
                                            if not path.exists() and (folder / LEGACY_ZARR / name).is_dir()
                                            else _NpySource(path))
    except (OSError, ValueError) as exc:
        raise ProblemError(404, f"The {name} result of job {job_id} is missing or damaged in the store ({exc}); "
                           "run the job again.", slug="not-found") from None
    try:
        a, b = parse_rows(rows, source.layout.shape[0])
    except BaseException:
        source.close()
        raise
    tag = hashlib.blake2b(f"{job_id}/{name}/{a}:{b}/{source.validator}".encode(), digest_size=16).hexdigest()
    return ResultBlock(header=npy_header(source.layout.dtype, (b - a, *source.layout.shape[1:])), source=source,
                       data_start=a * source.layout.row_bytes, data_length=(b - a) * source.layout.row_bytes,
                       etag=f'"{tag}"', last_modified=source.mtime)


# --- HTTP: range requests on the representation -------------------------------------------------------------


def parse_range(header: str, length: int) -> tuple[int, int] | None:
    """The one byte range ``[start, end]`` (inclusive) a ``Range`` header asks of ``length`` bytes.

    ``None`` means "ignore the header and answer 200" (another unit, a malformed value, or several
    ranges — RFC 9110 lets a server ignore Range); an unsatisfiable range is a ``416``."""
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash or not (first or last) or (first and not first.isdigit()) or (last and not last.isdigit()):
        return None
    if not first:  # suffix: the last N bytes
        start, end = max(0, length - int(last)), length - 1
        unsatisfiable = int(last) == 0 or length == 0
    else:
        start = int(first)
        end = min(int(last), length - 1) if last else length - 1
        unsatisfiable = start >= length or (bool(last) and int(last) < start)
    if unsatisfiable:
        raise ProblemError(416, f"Range {header!r} selects no bytes of this {length}-byte representation.",
                           slug="range-not-satisfiable", headers={"Content-Range": f"bytes */{length}"})
    return start, end


def _if_range_matches(if_range: str, block: ResultBlock) -> bool:
    """``If-Range``: an entity tag must match strongly; a date must equal ``Last-Modified``."""
    value = if_range.strip()
    if value.startswith(('"', "W/")):
        return value == block.etag
    try:
        return int(parsedate_to_datetime(value).timestamp()) == int(block.last_modified)
    except (TypeError, ValueError, OverflowError):
        return False


async def _stream(block: ResultBlock, start: int, stop: int) -> AsyncIterator[bytes]:
    """Bytes ``start:stop`` of the representation in ``READ_CHUNK`` reads (worker threads), the next
    read running while the previous chunk is being sent."""
    def span(pos: int) -> int:
        size = min(READ_CHUNK, stop - pos)
        return min(size, len(block.header) - pos) if pos < len(block.header) else size

    try:
        pos = start
        pending = asyncio.ensure_future(anyio.to_thread.run_sync(block.read, pos, span(pos))) if pos < stop else None
        while pending is not None:
            chunk = await pending
            pos += len(chunk)
            pending = asyncio.ensure_future(anyio.to_thread.run_sync(block.read, pos, span(pos))) \
                if pos < stop else None
            yield chunk
    finally:
        if pending is not None and not pending.done():
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pending
        block.close()


def result_response(block: ResultBlock, method: str, range_header: str | None, if_range: str | None) -> Response:
    """``200`` with the whole representation, or ``206`` with the one range asked for (``416`` if it
    is unsatisfiable). ``HEAD`` gets the same headers and no body."""
    length = block.length
    headers = {"Accept-Ranges": "bytes", "ETag": block.etag,
               "Last-Modified": formatdate(block.last_modified, usegmt=True)}
    status, start, stop = 200, 0, length
    try:
        if range_header is not None and (if_range is None or _if_range_matches(if_range, block)):
            selected = parse_range(range_header, length)
            if selected is not None:
                status, start, stop = 206, selected[0], selected[1] + 1
                headers["Content-Range"] = f"bytes {start}-{stop - 1}/{length}"
    except BaseException:
        block.close()
        raise
    headers["Content-Length"] = str(stop - start)
    if method == "HEAD":
        block.close()
        return Response(status_code=status, headers=headers, media_type=NPY_MEDIA_TYPE)
    return StreamingResponse(_stream(block, start, stop), status_code=status, headers=headers,
                             media_type=NPY_MEDIA_TYPE)
