"""Tile plans for large Gram matrices: which blocks to compute, and how big.

A plan covers an ``n1 × n2`` matrix with square ``tile × tile`` blocks (ragged last ones). For a
symmetric matrix (``x2`` absent) only blocks with ``row ≤ col`` are planned; the block at
``(i, j)`` also yields ``(j, i)`` by transposition. Tiles are numbered row-major, which is a
stable identity for done-markers and task keys.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: Most multiply-adds (``engine.pair_work`` per example pair) of one Gram tile of a network with
#: spatial inputs: a few seconds of one worker (about 1–2·10⁸ multiply-adds/s on one core), so a
#: cancelled job stops within about one tile. Memory does not bound these tiles: the engine works
#: on its own blocks of ``BLOCK_ENTRIES`` whatever the tile.
TILE_WORK = 10**9


@dataclass(frozen=True, slots=True)
class Tile:
    """One block: ``rows`` and ``cols`` are half-open index ranges ``(start, stop)``."""

    index: int
    rows: tuple[int, int]
    cols: tuple[int, int]
    diagonal: bool


def plan_tiles(n1: int, n2: int | None, tile: int) -> list[Tile]:
    """Blocks covering ``n1 × n2``; ``n2=None`` means symmetric ``n1 × n1`` (upper triangle only)."""
    if n1 < 1 or (n2 is not None and n2 < 1) or tile < 1:
        raise ValueError(f"need n1, n2, tile ≥ 1, got {n1}, {n2}, {tile}")
    symmetric = n2 is None
    cols_total = n1 if symmetric else n2
    tiles: list[Tile] = []
    for r in range(0, n1, tile):
        for c in range(r if symmetric else 0, cols_total, tile):
            tiles.append(Tile(len(tiles), (r, min(r + tile, n1)), (c, min(c + tile, cols_total)),
                              symmetric and r == c))
    return tiles


def tile_working_bytes(tile: int, d: int, n_outputs: int, itemsize: int) -> int:
    """Peak bytes one tile needs: its input rows, the outputs, and two block temporaries."""
    return itemsize * (2 * tile * d + (n_outputs + 2) * tile * tile)


def choose_tile(n: int, d: int, n_outputs: int, itemsize: int, budget_bytes: int, *, largest: int = 4096,
                smallest: int = 64, row_blocks: int = 1) -> int:
    """The largest power-of-two tile (between ``smallest`` and ``largest``) within ``budget_bytes``
    that still splits the ``n`` rows into at least ``row_blocks`` blocks (so that several workers
    share the work).

    Bigger tiles amortise per-task overhead; the budget keeps a worker's memory bounded. A
    matrix smaller than one tile gets one tile of exactly ``n``.
    """
    tile = largest
    while tile > smallest and math.ceil(n / tile) < row_blocks:
        tile //= 2
    while tile > smallest and tile_working_bytes(tile, d, n_outputs, itemsize) > budget_bytes:
        tile //= 2
    return n if n <= tile else tile


def work_tile(pair_work: float, budget: float = TILE_WORK) -> int:
    """The most tile rows ``t`` with ``t² · pair_work ≤ budget`` (at least 1)."""
    return max(1, math.isqrt(int(budget // max(pair_work, 1))))


def tile_count(n1: int, n2: int | None, tile: int) -> int:
    """How many tiles :func:`plan_tiles` returns, without listing them."""
    rows = math.ceil(n1 / tile)
    if n2 is None:
        return rows * (rows + 1) // 2
    return rows * math.ceil(n2 / tile)
