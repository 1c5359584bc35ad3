"""Asynchronous jobs on Dask: the ledger (SQLite, API only), worker tasks, the engine, the runner."""
