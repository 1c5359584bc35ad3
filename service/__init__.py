"""HTTP service for infinite-width neural-network kernels.

The public surface is :func:`create_app` (an ASGI app factory) and :class:`Settings`.
"""

from service.app import create_app
from service.settings import Settings

__all__ = ["Settings", "create_app"]
