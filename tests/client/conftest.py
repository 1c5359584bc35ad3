"""One real service for the client tests (started on first use, shared by the modules of this folder)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ntk_client import Client
from tests.live_server import running_server

#: Small limits so that the tests reach the client's fallbacks (a 413 → job) with small arrays;
#: 16-row tiles so that a job's progress passes through several fractions.
SERVER_SETTINGS = {"max_result_entries": "5000", "job_tile": "16"}


@pytest.fixture(scope="session")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with running_server(tmp_path_factory.mktemp("client-server"), **SERVER_SETTINGS) as server:
        yield server.url


@pytest.fixture
def client(server_url: str) -> Iterator[Client]:
    with Client(server_url, timeout=60, max_retries=2) as c:
        yield c
