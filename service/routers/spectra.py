"""``POST /v1/spectra``: eigenvalues of a Gram matrix."""

from __future__ import annotations

from fastapi import Request
from starlette.responses import Response

from service.auth import Owner
from service.checks import check_inputs, check_layers, resolve_which
from service.compute import run_compute
from service.deps import SettingsDep, StorageDep
from service.inputs import resolve_datasets
from service.learning import kernel_spectrum
from service.problems import too_large
from service.responses import ORJSONResponse
from service.routing import v1_router
from service.schemas.learning import SpectraOut, SpectraRequest

router = v1_router("spectra")


@router.post("/spectra", operation_id="computeSpectrum", response_model=SpectraOut)
async def compute_spectrum(
    body: SpectraRequest, request: Request, owner: Owner, settings: SettingsDep, store: StorageDep,
) -> Response:
    """Eigenvalues (descending; all or ``top_k``), condition number, smallest eigenvalue and trace."""
    resolve_datasets(body, store, owner)
    spec = body.kernel.to_core()
    which = resolve_which(spec, body.which)
    check_layers(settings, spec)
    check_inputs(settings, spec, body.x, "x")
    if body.x.shape[0] > settings.max_train_size:
        raise too_large("max_train_size", f"{body.x.shape[0]} points is over {settings.max_train_size}")
    return ORJSONResponse(await run_compute(request, kernel_spectrum, spec, which, body.x, body.top_k))
