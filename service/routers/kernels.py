"""``POST /v1/kernels``: infinite-width and classic Gram matrices."""

from __future__ import annotations

import numpy as np
from fastapi import Request
from starlette.responses import Response

from core import kernels as core_kernels
from service.auth import Owner
from service.checks import check_features, check_inputs, check_layers, check_result_size
from service.compute import run_compute
from service.deps import SettingsDep, StorageDep
from service.inputs import resolve_datasets
from service.matrices import NPY_200, ensure_finite, render, resolve_outputs, wants_npy
from service.routing import v1_router
from service.schemas.gram import KernelsRequest, KernelsResponse

router = v1_router("kernels")


@router.post("/kernels", operation_id="computeKernels", response_model=KernelsResponse, responses=NPY_200)
async def compute_kernels(
    body: KernelsRequest, request: Request, owner: Owner, settings: SettingsDep, store: StorageDep,
) -> Response:
    """Gram matrices of a kernel: ``results[name][i][j] = k(x1[i], x2[j])``.

    With ``Accept: application/x-npy`` and exactly one output, the matrix as ``.npy``.
    """
    resolve_datasets(body, store, owner)
    spec = body.kernel.to_core()
    outputs = resolve_outputs(spec, body.outputs)
    check_features(body.x1, body.x2)
    check_layers(settings, spec)
    check_inputs(settings, spec, body.x1, "x1", None if body.x2 is None else len(body.x2))
    n2 = len(body.x2) if body.x2 is not None else len(body.x1)
    check_result_size(settings, len(body.x1), n2, len(outputs))
    npy = wants_npy(request.state.media_type, outputs)
    results = await run_compute(request, core_kernels.gram, spec, body.x1, body.x2,
                                outputs=outputs, dtype=np.dtype(body.dtype))
    ensure_finite(results, body.dtype)
    return render(npy, outputs, results, body.dtype)
