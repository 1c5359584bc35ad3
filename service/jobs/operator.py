"""The kernel as a matrix-free operator on the Dask workers (cg / nystrom fits, krylov trajectories).

:class:`TiledKernel` is ``K(A, B)`` for two ``.npy`` files of inputs ``A`` (rows) and ``B``
(columns; absent: ``B = A``, a symmetric operator). A driver task running on a worker builds it
with its ``worker_client`` and asks for products; each product is a set of Dask tasks over the
tiles (:func:`core.tiling.plan_tiles`: square blocks of ``tile`` rows; a symmetric operator plans
the upper triangle only and each tile serves both ``K_ij V_j`` and ``K_ji V_i = K_ijᵀ V_i``), one
tile per task, or a few consecutive ones when there are more than :data:`MAX_TASKS`. Tasks read
their input rows from the files by path (memory-mapped; ``X`` never travels in the graph); the
vectors travel as scattered row blocks held by the driver's own worker (if that worker dies the
driver dies with it and is retried, see :mod:`service.jobs.solvers`).

Memory: a tile task holds one ``tile × tile`` float64 block plus its inputs rows (the tile comes
from ``NTK_JOB_TILE_BYTES``, as for Gram jobs); :meth:`TiledKernel.normal` holds one row of tiles
(``tile × n_B``); the driver holds only ``n × k`` vectors (and :meth:`TiledKernel.dense` results
it asks for: ``n × m`` columns for small ``m``). No process ever holds ``K``.

Tile cache: the first tiles (in plan order) of a cached operator, up to ``cache_bytes``, are
written once as float64 ``.npy`` files in ``<job>/cache/<name>/<tile>.npy`` (atomically: a
temporary renamed into place) and read back by every later product. Any worker can read them and
they survive a worker's death. Measured (depth-3 ReLU NTK, d = 784, one core): computing a
2048 × 2048 tile takes 0.37 s, reading it back 7 ms (page cache) and its two products 9 ms, so
a cached tile is about 20× cheaper (a cg iteration at n = 8000, float32 inputs, on two workers of
a shared 2-core machine: 1.2–1.9 s without the cache, 0.09 s with it; the first iteration, which
writes the 256 MB of tiles, 1.1 s). Cheap kernels on small inputs (a linear kernel at d = 16: 28 ms a tile)
on a slow disk could lose, so each operator measures both (seconds per byte of tiles computed in
the first product, of tiles read in the next) and drops its cache when reading is the slower
(:meth:`TiledKernel._decide_cache`). A tile that cannot be written (disk full) is simply
recomputed next time.

Cancellation: every tile task checks the job's cancel flag first and then returns ``None`` without
computing; the driver turns that into :class:`JobCancelled` (cancel latency: about one tile).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from core.kernels import gram_diagonal
from core.kernels.spec import KernelSpec
from core.tiling import Tile, plan_tiles
from service.jobs.tasks import CANCEL_FLAG, kernel_blocks, load_input, task_failure

FLOAT = np.dtype(np.float64)
#: Most tasks of one product (:meth:`TiledKernel.matmat`, ``rmatmat``): a larger operator gives
#: each task several consecutive tiles, so that Dask's cost per task (5–10 ms measured here, next
#: to 10–20 ms of reading and multiplying a cached 2048-row tile) stays small; the cancel flag is
#: still checked before every tile.
MAX_TASKS = 64


class JobCancelled(Exception):
    """The job's cancel flag was seen: stop without a result."""


@dataclass(frozen=True, slots=True)
class KernelSource:
    """What a tile task needs (small and picklable): the kernel ``spec`` and its output ``which``,
    the inputs (``cols_path`` None: the rows' own file, symmetric), the job folder (cancel flag,
    cache), where tiles run (``device``) and which tiles are cached (indices below ``cached``)."""

    spec: KernelSpec
    which: str
    rows_path: str
    cols_path: str | None
    job_dir: str
    device: str = "cpu"
    cache_name: str | None = None
    cached: int = 0

    @property
    def cancelled(self) -> bool:
        return (Path(self.job_dir) / CANCEL_FLAG).exists()

    def cache_file(self, tile: Tile) -> Path | None:
        if self.cache_name is None or tile.index >= self.cached:
            return None
        return Path(self.job_dir) / "cache" / self.cache_name / f"{tile.index}.npy"


def _compute(source: KernelSource, tile: Tile) -> np.ndarray:
    blocks = kernel_blocks(source.spec, [source.which], FLOAT, source.device, source.rows_path, source.cols_path,
                           tile.rows, tile.cols, tile.diagonal)
    return blocks[source.which]


def _tile(source: KernelSource, tile: Tile, timing: np.ndarray | None = None) -> np.ndarray:
    """The block of ``tile``: from the cache when it is there, else computed (and cached if it is
    one of the cached tiles). Adds ``[seconds, bytes]`` of computing to ``timing[:2]``, of reading
    the cache to ``timing[2:]`` (see :class:`TiledKernel`'s cache decision)."""
    path = source.cache_file(tile)
    started = time.perf_counter()
    if path is not None and path.exists():
        with contextlib.suppress(OSError, ValueError):  # unreadable: recompute and rewrite
            block = np.load(path, allow_pickle=False)
            if block.shape == (tile.rows[1] - tile.rows[0], tile.cols[1] - tile.cols[0]) and block.dtype == FLOAT:
                if timing is not None:
                    timing[2:] += (time.perf_counter() - started, block.nbytes)
                return block
    block = _compute(source, tile)
    if timing is not None:
        timing[:2] += (time.perf_counter() - started, block.nbytes)
    if path is not None:
        _store(path, block)
    return block


def _store(path: Path, block: np.ndarray) -> None:
    """Write a cached tile atomically; failing to (disk full, job deleted) only costs the cache."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.{secrets.token_hex(3)}.npy")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(tmp, block, allow_pickle=False)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()


# --- tile tasks (run on the workers) --------------------------------------------------------------------------


Products = list[tuple[np.ndarray | None, np.ndarray | None]]


def tile_products(source: KernelSource, tiles: list[Tile], right: dict[int, np.ndarray] | None,
                  left: dict[int, np.ndarray] | None) -> tuple[Products, np.ndarray] | None:
    """For each tile's block ``T``: ``(T · right[its first column], Tᵀ · left[its first row])`` (the
    vector blocks keyed by where they start; either side may be None; on a diagonal tile of a
    symmetric operator ``Tᵀ·left`` is skipped: ``T·right`` covers it), and the timing of the blocks.
    One block at a time in memory; ``None`` as soon as the job is cancelled (checked before every tile)."""
    timing = np.zeros(4)
    products: Products = []
    for tile in tiles:
        if source.cancelled:
            return None
        block = _tile(source, tile, timing)
        forward = None if right is None else block @ right[tile.cols[0]]
        skip = left is None or (tile.diagonal and source.cols_path is None)
        products.append((forward, None if skip else block.T @ left[tile.rows[0]]))
    return products, timing


def row_normal(source: KernelSource, tiles: list[Tile], v: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """``(K_iᵀ (K_i v), timing)`` for the row of tiles ``K_i`` (one row block against every column
    block; ``v``: ``n_B × k``); ``None`` when the job was cancelled."""
    if source.cancelled:
        return None
    timing = np.zeros(4)
    blocks = [_tile(source, t, timing) for t in tiles]
    u = sum(b @ v[t.cols[0]:t.cols[1]] for b, t in zip(blocks, tiles, strict=True))
    out = np.zeros_like(v)
    for b, t in zip(blocks, tiles, strict=True):
        out[t.cols[0]:t.cols[1]] = b.T @ u
    return out, timing


def tile_block(source: KernelSource, tile: Tile) -> np.ndarray | None:
    """The tile's block itself (for :meth:`TiledKernel.dense`); ``None`` when cancelled."""
    return None if source.cancelled else _tile(source, tile)


def diagonal_block(source: KernelSource, rows: tuple[int, int]) -> np.ndarray | None:
    """``k(x_i, x_i)`` for rows ``rows`` of the (symmetric) operator; ``None`` when cancelled."""
    if source.cancelled:
        return None
    x = np.array(load_input(source.rows_path)[rows[0]:rows[1]], dtype=FLOAT)
    try:
        diag = gram_diagonal(source.spec, x, outputs=[source.which])[source.which]
    except ValueError as exc:
        raise task_failure(str(exc)) from None
    if not np.isfinite(diag).all():
        raise task_failure(f"the {source.which} kernel overflows float64 on rows {rows[0]}:{rows[1]}")
    return diag


# --- the operator (used by a driver task) ------------------------------------------------------------------


def cached_tiles(tiles: list[Tile], budget_bytes: int) -> int:
    """How many leading tiles of ``tiles`` fit in ``budget_bytes`` as float64 blocks."""
    total = 0
    for count, tile in enumerate(tiles):
        total += (tile.rows[1] - tile.rows[0]) * (tile.cols[1] - tile.cols[0]) * FLOAT.itemsize
        if total > budget_bytes:
            return count
    return len(tiles)


def input_rows(path: str) -> int:
    """Rows of an input file (its header only)."""
    return int(load_input(path).shape[0])


class TiledKernel:
    """``K(A, B)`` on the workers (module docstring). ``client``: the driver's ``worker_client``;
    ``tile``: rows per square tile; ``cache_bytes``: the tile cache's bound (0: none) under
    ``<job>/cache/<name>``; ``key``: a prefix for the task keys (unique per driver run)."""

    def __init__(self, client: Any, source: KernelSource, *, tile: int, name: str, key: str,
                 cache_bytes: int = 0, max_tasks: int = MAX_TASKS) -> None:
        self.client = client
        self.n_rows = input_rows(source.rows_path)
        self.n_cols = self.n_rows if source.cols_path is None else input_rows(source.cols_path)
        self.symmetric = source.cols_path is None
        self.tile = max(1, min(tile, max(self.n_rows, self.n_cols)))
        self.tiles = plan_tiles(self.n_rows, None if self.symmetric else self.n_cols, self.tile)
        per_task = -(-len(self.tiles) // max_tasks)
        #: The tiles of each product task: consecutive tiles (plan order), at most ``max_tasks`` tasks.
        self.groups = [self.tiles[i:i + per_task] for i in range(0, len(self.tiles), per_task)]
        cached = cached_tiles(self.tiles, cache_bytes) if cache_bytes > 0 else 0
        self.source = replace(source, cache_name=name if cached else None, cached=cached)
        self.name = name
        self.key = f"{key}-{name}"
        self._calls = 0
        self._resources = {"GPU": 1} if source.device == "gpu" else None
        #: Seconds and bytes of tiles computed ([0:2]) and read from the cache ([2:4]) so far.
        self.timing = np.zeros(4)
        #: ``None`` until measured; then whether reading a cached tile is faster than computing it.
        self.cache_faster: bool | None = None

    def _decide_cache(self) -> None:
        """Once both have been measured, keep the cache only if reading a cached byte is faster than
        computing it (it always was for network kernels, see the module docstring; a cheap kernel on
        a slow disk may differ). A dropped cache is deleted and never read again."""
        computed, computed_bytes, read, read_bytes = self.timing
        if self.cache_faster is not None or not (computed_bytes and read_bytes):
            return
        self.cache_faster = bool(read / read_bytes < computed / computed_bytes)
        if not self.cache_faster:
            self.source = replace(self.source, cache_name=None, cached=0)
            shutil.rmtree(Path(self.source.job_dir) / "cache" / self.name, ignore_errors=True)

    @property
    def cache_report(self) -> dict[str, Any]:
        """The cache's measurements (for the driver's record): tiles cached, seconds per GB computing
        and reading, and the decision."""
        computed, computed_bytes, read, read_bytes = self.timing
        return {"tiles": len(self.tiles), "cached_tiles": self.source.cached,
                "compute_s_per_gb": round(computed / computed_bytes * 1e9, 3) if computed_bytes else None,
                "read_s_per_gb": round(read / read_bytes * 1e9, 3) if read_bytes else None,
                "cache_faster": self.cache_faster}

    @property
    def shape(self) -> tuple[int, int]:
        return self.n_rows, self.n_cols

    # -- plumbing

    def _blocks(self, n: int) -> list[tuple[int, int]]:
        return [(s, min(s + self.tile, n)) for s in range(0, n, self.tile)]

    def _scatter(self, v: np.ndarray) -> dict[int, Any]:
        """``v``'s row blocks keyed by their first row, held by the driver's own worker."""
        blocks = self._blocks(v.shape[0])
        parts = self.client.scatter([np.ascontiguousarray(v[a:b]) for a, b in blocks], workers=[_own_address()],
                                    hash=False)
        return {a: part for (a, _), part in zip(blocks, parts, strict=True)}

    def _run(self, fn: Any, arguments: list[tuple[Any, ...]]) -> Iterator[tuple[int, Any]]:
        """Submit ``fn(self.source, *args)`` for every argument tuple; yield ``(position, result)`` as
        they complete (gathered in batches: one round trip for the tiles finished meanwhile). A
        cancelled task raises :class:`JobCancelled`; the tasks not yet run are then cancelled."""
        from distributed import as_completed

        self._calls += 1
        futures = [self.client.submit(fn, self.source, *args, key=f"{self.key}-{self._calls}-{i}", pure=False,
                                      resources=self._resources)
                   for i, args in enumerate(arguments)]
        position = {f.key: i for i, f in enumerate(futures)}
        try:
            for batch in as_completed(futures).batches():
                for future, result in zip(batch, self.client.gather(batch), strict=True):
                    if result is None:
                        raise JobCancelled
                    yield position[future.key], result
        except BaseException:
            self.client.cancel(futures)
            raise

    # -- products

    def _products(self, right: np.ndarray | None, left: np.ndarray | None, out: np.ndarray) -> None:
        """Add every tile's ``T·right`` (at its rows) and ``Tᵀ·left`` (at its columns) into ``out``."""
        right_parts = None if right is None else self._scatter(right)
        left_parts = right_parts if left is right else None if left is None else self._scatter(left)
        arguments = [(group,
                      None if right_parts is None else {t.cols[0]: right_parts[t.cols[0]] for t in group},
                      None if left_parts is None else {t.rows[0]: left_parts[t.rows[0]] for t in group})
                     for group in self.groups]
        for i, (products, timing) in self._run(tile_products, arguments):
            for t, (forward, backward) in zip(self.groups[i], products, strict=True):
                if forward is not None:
                    out[t.rows[0]:t.rows[1]] += forward
                if backward is not None:
                    out[t.cols[0]:t.cols[1]] += backward
            self.timing += timing
        self._decide_cache()

    def matmat(self, v: np.ndarray) -> np.ndarray:
        """``K(A, B) · v`` (``v``: ``n_B × k`` or ``n_B``; the answer has ``v``'s rank)."""
        v2 = _block(v, self.n_cols)
        out = np.zeros((self.n_rows, v2.shape[1]))
        self._products(v2, v2 if self.symmetric else None, out)
        return out if np.ndim(v) == 2 else out[:, 0]

    def rmatmat(self, u: np.ndarray) -> np.ndarray:
        """``K(A, B)ᵀ · u`` (``u``: ``n_A × k`` or ``n_A``)."""
        if self.symmetric:
            return self.matmat(u)
        u2 = _block(u, self.n_rows)
        out = np.zeros((self.n_cols, u2.shape[1]))
        self._products(None, u2, out)
        return out if np.ndim(u) == 2 else out[:, 0]

    def normal(self, v: np.ndarray) -> np.ndarray:
        """``K(A, B)ᵀ K(A, B) · v`` in one pass over the rows of tiles (``v``: ``n_B × k`` or ``n_B``)."""
        if self.symmetric:
            return self.matmat(self.matmat(v))
        v2 = _block(v, self.n_cols)
        (shared,) = self.client.scatter([v2], workers=[_own_address()], hash=False)
        rows: dict[int, list[Tile]] = {}
        for t in self.tiles:
            rows.setdefault(t.rows[0], []).append(t)
        out = np.zeros_like(v2)
        for _, (part, timing) in self._run(row_normal, [(row, shared) for row in rows.values()]):
            out += part
            self.timing += timing
        self._decide_cache()
        return out if np.ndim(v) == 2 else out[:, 0]

    def dense(self) -> np.ndarray:
        """The whole ``n_A × n_B`` matrix in the driver: only for small ones (columns at centers, ``K_MM``)."""
        out = np.empty(self.shape)
        for i, block in self._run(tile_block, [(t,) for t in self.tiles]):
            (r0, r1), (c0, c1) = self.tiles[i].rows, self.tiles[i].cols
            out[r0:r1, c0:c1] = block
            if self.symmetric:
                out[c0:c1, r0:r1] = block.T
        return out

    def diagonal(self) -> np.ndarray:
        """``k(a_i, a_i)`` for every row (symmetric operators: the diagonal of ``K``)."""
        out = np.empty(self.n_rows)
        blocks = self._blocks(self.n_rows)
        for i, part in self._run(diagonal_block, [(b,) for b in blocks]):
            out[blocks[i][0]:blocks[i][1]] = part
        return out


def _own_address() -> str:
    from distributed import get_worker

    return str(get_worker().address)


def _block(v: np.ndarray, n: int) -> np.ndarray:
    v2 = np.asarray(v, dtype=FLOAT)
    v2 = v2[:, None] if v2.ndim == 1 else v2
    if v2.ndim != 2 or v2.shape[0] != n:
        raise ValueError(f"the operator takes {n} rows, got shape {np.shape(v)}")
    return v2


def row_block_size(n: int, columns: int, budget_bytes: int, tile: int) -> int:
    """Rows of a tile whose row of blocks (``rows × columns`` float64) stays within ``budget_bytes``
    (for :meth:`TiledKernel.normal`), at most ``tile``, at least 1."""
    return max(1, min(tile, budget_bytes // max(1, 2 * columns * FLOAT.itemsize), n))

