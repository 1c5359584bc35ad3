"""Helpers for tests that run real Dask clusters behind the app."""

from __future__ import annotations

import asyncio
import io
import time

import httpx
import numpy as np


def npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


async def upload(client: httpx.AsyncClient, array: np.ndarray) -> str:
    response = await client.post("/v1/datasets", content=npy(array), headers={"content-type": "application/x-npy"})
    assert response.status_code == 201, response.text
    return response.json()["id"]


async def wait_for(client: httpx.AsyncClient, job_id: str, statuses=("succeeded", "failed", "cancelled"),
                   timeout: float = 120.0, on_poll=None) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = (await client.get(f"/v1/jobs/{job_id}")).json()
        if on_poll is not None:
            on_poll(job)
        if job["status"] in statuses:
            return job
        await asyncio.sleep(0.1)
    raise AssertionError(f"job {job_id} still {job['status']} after {timeout} s")
