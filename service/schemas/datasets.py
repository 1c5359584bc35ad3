"""Dataset resources."""

from __future__ import annotations

from pydantic import BaseModel, Field

from service.schemas.common import Dtype


class DatasetOut(BaseModel):
    """An uploaded array. ``sha256`` and ``bytes`` describe the ``.npy`` file as uploaded."""

    id: str = Field(examples=["ds_5f1c0a9e2b7d4c3a1e0f9b8c"])
    name: str | None
    shape: list[int]
    dtype: Dtype
    sha256: str
    bytes: int
    created_at: str = Field(description="RFC 3339 UTC timestamp.")


class DatasetList(BaseModel):
    """One page, newest first; pass ``next_page_token`` as ``page_token`` for the next."""

    items: list[DatasetOut]
    next_page_token: str | None
