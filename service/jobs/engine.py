"""The compute engine: one asynchronous Dask client, to an embedded LocalCluster (default) or
to an external scheduler (``NTK_DASK_ADDRESS``). Same code path for both.

The engine starts on first use (a job, a readiness check, or resuming jobs at start-up), so an
API that never runs jobs never starts worker processes.
"""

from __future__ import annotations

import asyncio
from typing import Any

from service.jobs.tasks import WarmUp
from service.observability import logger
from service.settings import Settings


class ComputeEngine:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._client: Any = None
        self._cluster: Any = None
        self._lock = asyncio.Lock()

    @property
    def started(self) -> bool:
        return self._client is not None

    async def client(self) -> Any:
        """The Dask client, starting the engine if needed."""
        async with self._lock:
            if self._client is None:
                await self._start()
            return self._client

    async def _start(self) -> None:
        from distributed import Client, LocalCluster

        address = self.settings.dask_address
        if address:
            client = await Client(address, asynchronous=True, timeout="30s")
            logger.info("connected to Dask scheduler", extra={"scheduler": address})
        else:
            self._cluster = await LocalCluster(
                n_workers=self.settings.dask_workers, threads_per_worker=1, processes=True, asynchronous=True,
                dashboard_address=":0", memory_limit=self.settings.dask_worker_memory or "auto",
            )
            client = await Client(self._cluster, asynchronous=True)
            logger.info("started embedded Dask cluster", extra={"workers": self.settings.dask_workers})
        try:
            await client.register_plugin(WarmUp())
        except BaseException:
            await client.close()
            if self._cluster is not None:
                await self._cluster.close()
                self._cluster = None
            raise
        self._client = client

    async def workers(self) -> dict[str, Any]:
        """The scheduler's view of its workers (address → info, with ``resources``)."""
        client = await self.client()
        info = await client.scheduler.identity()
        return dict(info.get("workers", {}))

    async def has_gpu_worker(self) -> bool:
        return any((w.get("resources") or {}).get("GPU", 0) > 0 for w in (await self.workers()).values())

    async def close(self) -> None:
        async with self._lock:
            if self._client is not None:
                await self._client.close()
            if self._cluster is not None:
                await self._cluster.close()
            self._client = self._cluster = None
