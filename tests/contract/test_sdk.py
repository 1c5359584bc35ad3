"""A Python SDK generated from the committed spec (openapi-python-client) works against the app."""

from __future__ import annotations

import importlib
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from service.__main__ import OPENAPI_PATH
from service.app import create_app
from service.settings import Settings

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def sdk(tmp_path_factory: pytest.TempPathFactory):
    executable = shutil.which("openapi-python-client", path=str(Path(sys.executable).parent))
    assert executable, "openapi-python-client is a test dependency"
    out = tmp_path_factory.mktemp("sdk")
    subprocess.run(
        [executable, "generate", "--path", str(OPENAPI_PATH), "--output-path", str(out / "client"), "--meta", "none",
         "--overwrite"],
        check=True, capture_output=True, text=True,
    )
    sys.path.insert(0, str(out))
    try:
        yield importlib.import_module("client")
    finally:
        sys.path.remove(str(out))
        for name in [m for m in sys.modules if m == "client" or m.startswith("client.")]:
            del sys.modules[name]


async def test_generated_client_computes_a_kernel(sdk, tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path))
    compute = importlib.import_module("client.api.kernels.compute_kernels")
    request_model = importlib.import_module("client.models.kernels_request").KernelsRequest
    client = sdk.Client(base_url="http://testserver", httpx_args={"transport": httpx.ASGITransport(app=app)})
    body = request_model.from_dict({"kernel": {"type": "linear"}, "x1": [[1.0, 2.0], [3.0, 4.0]]})
    async with client:
        response = await compute.asyncio_detailed(client=client, body=body)
    assert response.status_code == 200
    parsed = response.parsed
    assert parsed.shape == [2, 2] or list(parsed.shape) == [2, 2]
    assert parsed.results.additional_properties["kernel"] == [[5.0, 11.0], [11.0, 25.0]]


async def test_generated_client_surfaces_problems(sdk, tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path))
    compute = importlib.import_module("client.api.kernels.compute_kernels")
    request_model = importlib.import_module("client.models.kernels_request").KernelsRequest
    client = sdk.Client(base_url="http://testserver", httpx_args={"transport": httpx.ASGITransport(app=app)})
    body = request_model.from_dict({"kernel": {"type": "linear"}, "x1": [[1.0, 2.0]], "x2": [[1.0]]})
    async with client:
        response = await compute.asyncio_detailed(client=client, body=body)
    assert response.status_code == 422
    assert response.parsed.detail == "x2 has 1 features but x1 has 2"
