"""Optional bearer API keys and resource ownership.

With ``NTK_API_KEYS`` unset every caller is the anonymous owner ``""``. With keys set, a
caller is identified by a one-way digest of its key (the key itself is never stored or
logged); resources carry that digest as their owner and are invisible to other keys.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.problems import ProblemError

_bearer = HTTPBearer(auto_error=False, description="An API key from NTK_API_KEYS (when configured).")


def _owner_of(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def _unauthorized(detail: str) -> ProblemError:
    return ProblemError(401, detail, slug="unauthorized", headers={"WWW-Authenticate": "Bearer"})


def authenticate(request: Request) -> str:
    """Check the bearer key (constant-time against every configured key); store and return the owner."""
    keys: tuple[str, ...] = request.app.state.settings.api_keys
    if not keys:
        request.state.owner = ""
        return ""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized("This service requires an API key: send 'Authorization: Bearer <key>'.")
    token_bytes = token.strip().encode()
    matched = False
    for key in keys:  # no early exit: timing does not reveal which key matched
        matched |= hmac.compare_digest(token_bytes, key.encode())
    if not matched:
        raise _unauthorized("The API key is not valid.")
    request.state.owner = _owner_of(token.strip())
    return request.state.owner


def _current_owner(
    request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> str:
    return request.state.owner


#: The owner of the calling key ("" without API keys); declares bearer auth in OpenAPI.
Owner = Annotated[str, Depends(_current_owner)]
