"""Output selection, finiteness and response rendering shared by the Gram-matrix endpoints."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from starlette.responses import Response

from core.kernels.spec import KernelSpec
from core.kernels.spec import resolve_outputs as core_resolve_outputs
from service.npy import NPY_MEDIA_TYPE
from service.problems import ProblemError, invalid
from service.responses import ORJSONResponse, npy_response

#: The 200 of a Gram endpoint in OpenAPI: JSON matrices, or one matrix as .npy.
NPY_200 = {200: {"description": "The Gram matrices (JSON), or the one requested matrix as .npy.",
                 "content": {NPY_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}}}}


def resolve_outputs(spec: KernelSpec, requested: Sequence[str] | None) -> list[str]:
    """The requested matrix names (deduplicated, in order), or all the kernel yields; 422 otherwise."""
    try:
        return list(core_resolve_outputs(spec, requested))
    except ValueError as exc:
        raise invalid(["body", "outputs"], str(exc)) from None


def wants_npy(media_type: str, outputs: list[str]) -> bool:
    """Whether to answer with ``.npy``; 406 if ``.npy`` is demanded for several matrices."""
    if media_type != NPY_MEDIA_TYPE:
        return False
    if len(outputs) != 1:
        raise ProblemError(
            406, f"application/x-npy carries exactly one matrix but {len(outputs)} outputs were requested "
            f"({', '.join(outputs)}); request one output or accept application/json.", slug="not-acceptable")
    return True


def ensure_finite(results: dict[str, np.ndarray], dtype: str) -> None:
    """A result with NaN/Infinity is refused (422) rather than sent as ``null``."""
    for name, matrix in results.items():
        # min and max propagate NaN and meet ±inf: two passes without a temporary (this runs on the loop)
        if matrix.size and not (np.isfinite(matrix.min()) and np.isfinite(matrix.max())):
            raise ProblemError(
                422, f"The {name} matrix overflows {dtype}: reduce the input scale, the weight/bias scales or "
                "the depth, or use float64.", slug="non-finite-result", title="Result is not finite",
                errors=[{"loc": ["body", "kernel"], "msg": f"{name} is not finite in {dtype}"}])


def render(npy: bool, outputs: list[str], results: dict[str, np.ndarray], dtype: str,
           extra: dict[str, object] | None = None) -> Response:
    """JSON ``{"shape", "dtype", "results", **extra}`` or, with ``npy``, the one matrix as ``.npy``.

    Large answers are streamed and rendered off the event loop (:mod:`service.responses`).
    """
    if npy:
        return npy_response(results[outputs[0]])
    first = results[outputs[0]]
    body = {"shape": list(first.shape), "dtype": dtype, "results": {k: results[k] for k in outputs}}
    return ORJSONResponse(body | (extra or {}))
