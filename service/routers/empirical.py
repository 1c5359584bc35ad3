"""``POST /v1/empirical-kernels``: the NTK of one finite network, and its distance to the limit."""

from __future__ import annotations

import numpy as np
from fastapi import Request
from starlette.responses import Response

from core import empirical as core_empirical
from core import kernels as core_kernels
from core.kernels.spec import Dense, KernelSpec, Network
from service.auth import Owner
from service.checks import check_features, check_inputs, check_layers, check_result_size
from service.compute import run_compute
from service.deps import SettingsDep, StorageDep
from service.inputs import resolve_datasets
from service.matrices import NPY_200, ensure_finite, render, resolve_outputs, wants_npy
from service.problems import invalid, too_large
from service.routing import v1_router
from service.schemas.gram import EmpiricalKernelsRequest, EmpiricalKernelsResponse

router = v1_router("kernels")


def _empirical_and_errors(
    spec: KernelSpec, x1: np.ndarray, x2: np.ndarray | None, width: int, seed: int, outputs: list[str],
    dtype: np.dtype,
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    finite = core_empirical.empirical_kernels(spec, x1, x2, width=width, seed=seed, outputs=outputs, dtype=dtype)
    limit = core_kernels.gram(core_kernels.layer_widths_applied(spec, width), x1, x2, outputs=outputs,
                              dtype=np.dtype(np.float64))
    ensure_finite(limit, "float64")
    errors = {}
    for name in outputs:
        scale = float(np.linalg.norm(limit[name]))
        diff = float(np.linalg.norm(finite[name].astype(np.float64) - limit[name]))
        errors[name] = diff / scale if scale > 0 else diff
    return finite, errors


@router.post("/empirical-kernels", operation_id="computeEmpiricalKernels", response_model=EmpiricalKernelsResponse,
             responses=NPY_200)
async def compute_empirical_kernels(
    body: EmpiricalKernelsRequest, request: Request, owner: Owner, settings: SettingsDep, store: StorageDep,
) -> Response:
    """The exact ``⟨∇θ f(x), ∇θ f(x')⟩`` of one network of ``width`` drawn with ``seed``.

    ``relative_error_to_infinite[name]`` is ``‖K_width − K_∞‖_F / ‖K_∞‖_F`` against the
    infinite-width kernel of the same parameterization (with the same hidden widths).
    """
    resolve_datasets(body, store, owner)
    spec = body.kernel.to_core()
    outputs = resolve_outputs(spec, body.outputs)
    check_features(body.x1, body.x2)
    check_layers(settings, spec)
    if isinstance(spec, Network) and not isinstance(spec.layers[-1], Dense):
        raise invalid(["body", "kernel", "layers"],
                      "a finite network needs a dense readout: end the layers with {\"type\": \"dense\"}")
    if body.width > settings.max_empirical_width:
        raise too_large("max_empirical_width", f"width {body.width} is over {settings.max_empirical_width}")
    n1 = len(body.x1)
    n2 = len(body.x2) if body.x2 is not None else n1
    check_inputs(settings, spec, body.x1, "x1", n2)  # the infinite-width side: rank, fit, work
    try:  # the finite network: fits its input rows (n × d, n × L × C or n × H × W × C)
        work = core_empirical.working_memory_entries(spec, n1, n2, body.x1.shape[1:], body.width)
    except ValueError as exc:
        raise invalid(["body", "kernel"], str(exc)) from None
    if work > settings.max_empirical_work:
        raise too_large("max_empirical_work",
                        f"this network and data need about {work} float entries at once, over "
                        f"{settings.max_empirical_work}; use fewer points, a smaller width or fewer layers")
    check_result_size(settings, n1, n2, len(outputs))
    npy = wants_npy(request.state.media_type, outputs)
    results, errors = await run_compute(request, _empirical_and_errors, spec, body.x1, body.x2, body.width,
                                        body.seed, outputs, np.dtype(body.dtype))
    ensure_finite(results, body.dtype)
    return render(npy, outputs, results, body.dtype, {"relative_error_to_infinite": errors})
