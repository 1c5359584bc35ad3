"""The base of every ``/v1`` router: NTK route class and the shared problem responses."""

from __future__ import annotations

from fastapi import APIRouter

from service.openapi_doc import COMMON_ERRORS
from service.responses import ORJSONResponse
from service.routing import NTKRoute


def v1_router(tag: str) -> APIRouter:
    """A router for one resource, mounted under ``/v1``."""
    return APIRouter(prefix="/v1", tags=[tag], route_class=NTKRoute, responses=COMMON_ERRORS,
                     default_response_class=ORJSONResponse)
