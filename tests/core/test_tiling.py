"""Tile plans cover each matrix entry exactly once (with transposes for symmetric plans)."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from core.tiling import choose_tile, plan_tiles, tile_count, tile_working_bytes


@given(st.integers(1, 60), st.one_of(st.none(), st.integers(1, 60)), st.integers(1, 25))
def test_plans_cover_every_entry_once(n1: int, n2: int | None, tile: int) -> None:
    cover = np.zeros((n1, n1 if n2 is None else n2), dtype=int)
    tiles = plan_tiles(n1, n2, tile)
    assert [t.index for t in tiles] == list(range(len(tiles))) and len(tiles) == tile_count(n1, n2, tile)
    for t in tiles:
        (r0, r1), (c0, c1) = t.rows, t.cols
        cover[r0:r1, c0:c1] += 1
        if n2 is None and not t.diagonal:
            assert r1 <= c0  # strictly above the diagonal
            cover[c0:c1, r0:r1] += 1
        assert t.diagonal == (n2 is None and r0 == c0)
    assert (cover == 1).all()


def test_choose_tile_respects_the_budget() -> None:
    tile = choose_tile(100_000, 784, 2, 4, 256 * 2**20)
    assert tile_working_bytes(tile, 784, 2, 4) <= 256 * 2**20 < tile_working_bytes(2 * tile, 784, 2, 4)
    assert choose_tile(300, 10, 1, 8, 2**30) == 300
    assert choose_tile(10**6, 10**5, 4, 8, 1) == 64  # never below the smallest tile
    assert choose_tile(4000, 784, 1, 4, 2**30, row_blocks=2) == 2048  # two row blocks: three tiles
