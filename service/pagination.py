"""Newest-first pages with opaque tokens (the position after the last item returned)."""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from typing import TypeVar

from service.problems import invalid

T = TypeVar("T")


def encode_token(seq: int) -> str:
    return base64.urlsafe_b64encode(f"v1:{seq}".encode()).decode().rstrip("=")


def decode_token(token: str) -> int:
    """The ``seq`` to continue below; 422 for a token this service did not issue."""
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        prefix, seq = text.split(":")
        if prefix != "v1":
            raise ValueError
        return int(seq)
    except (ValueError, UnicodeDecodeError):
        raise invalid(["query", "page_token"], "page_token is not a token from a previous page; omit it to start") from None


def page(fetch: Callable[[int, int | None], Sequence[T]], seq_of: Callable[[T], int], limit: int,
         page_token: str | None) -> tuple[Sequence[T], str | None]:
    """``fetch(limit + 1, before_seq)`` newest first → (items, next_page_token or None)."""
    rows = fetch(limit + 1, decode_token(page_token) if page_token else None)
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    return rows, encode_token(seq_of(rows[-1]))
