"""The whole stack against neural-tangents 0.6.5: ``POST /v1/kernels`` on the committed fixtures.

``tests/fixtures/neural_tangents/cases.json`` was computed with neural-tangents itself (float64;
``make_fixtures.py`` beside it, in its own environment — never a dependency of this suite). Each
case is a contract ``kernel`` with inputs and NT's ``nngp``/``ntk`` for ``x1 × x2`` and ``x1 × x1``;
a case NT refuses must be a ``422`` problem that names the layer.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest

CASES = json.loads((Path(__file__).parents[1] / "fixtures" / "neural_tangents" / "cases.json").read_text())
pytestmark = pytest.mark.anyio
#: Networks neural-tangents computes as if their branches were independent although they share all
#: their randomness (``z + z`` gets ``2K``, its kernel is ``4K``): refused here, on purpose.
DEPENDENT_BRANCHES = [c for c in CASES if c["name"].startswith("nt_quirk_")]
COMPUTED = [c for c in CASES if "refused" not in c and c not in DEPENDENT_BRANCHES]
REFUSED = [c for c in CASES if "refused" in c]


def test_fixtures_cover_every_layer_kind() -> None:
    from core.kernels.registry import LAYER_KINDS

    seen: set[str] = set()

    def walk(layers: list[dict]) -> None:
        for layer in layers:
            seen.add(layer["type"])
            for branch in layer.get("branches", []):
                walk(branch)

    for case in COMPUTED:
        walk(case["kernel"]["layers"])
    assert set(LAYER_KINDS) - seen == {"elementwise"}  # NT has no closed form for tanh & co.
    assert len(DEPENDENT_BRANCHES) == 2


@pytest.mark.parametrize("case", COMPUTED, ids=[c["name"] for c in COMPUTED])
async def test_kernels_equal_neural_tangents(client: httpx.AsyncClient, case: dict) -> None:
    for x2, suffix in ((case["x2"], ""), (None, "_11")):
        response = await client.post("/v1/kernels", json={"kernel": case["kernel"], "x1": case["x1"], "x2": x2,
                                                         "outputs": ["nngp", "ntk"]})
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        for name in ("nngp", "ntk"):
            expected = np.array(case[name + suffix])
            got = np.array(results[name])
            scale = max(np.abs(expected).max(), 1e-300)
            if suffix and "sign" in case["name"]:
                # E[sign(u)²] = 1 at correlation 1: neural-tangents' angle there is √(rounding), so its
                # diagonal is off by up to ~1e-5; ours is exact (the self pass). Off the diagonal: tight.
                np.testing.assert_allclose(np.diag(got), np.diag(expected), rtol=1e-5)
                got, expected = got[~np.eye(len(got), dtype=bool)], expected[~np.eye(len(got), dtype=bool)]
            np.testing.assert_allclose(got, expected, rtol=1e-8, atol=1e-11 * scale,
                                       err_msg=f"{case['name']}: {name}{suffix}")


@pytest.mark.parametrize("case", DEPENDENT_BRANCHES, ids=[c["name"] for c in DEPENDENT_BRANCHES])
async def test_dependent_branches_are_refused(client: httpx.AsyncClient, case: dict) -> None:
    response = await client.post("/v1/kernels", json={"kernel": case["kernel"], "x1": case["x1"]})
    assert response.status_code == 422, response.text
    assert "not independent" in response.json()["detail"]


@pytest.mark.parametrize("case", REFUSED, ids=[c["name"] for c in REFUSED])
async def test_networks_neural_tangents_refuses_are_422(client: httpx.AsyncClient, case: dict) -> None:
    response = await client.post("/v1/kernels", json={"kernel": case["kernel"], "x1": case["x1"]})
    assert response.status_code == 422, response.text
    body = response.json()
    assert response.headers["content-type"].startswith("application/problem+json")
    assert "layers[" in body["detail"] or "x1" in body["detail"], body["detail"]
