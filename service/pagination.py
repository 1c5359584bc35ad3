"""Opaque page tokens for newest-first lists: the position after the last item returned."""

from __future__ import annotations

import base64

from service.problems import invalid


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
