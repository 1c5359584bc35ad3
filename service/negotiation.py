"""``Accept`` header negotiation (RFC 9110 §12.5.1): q-values and wildcards."""

from __future__ import annotations


def _parse(accept: str) -> list[tuple[str, float]]:
    ranges = []
    for part in accept.split(","):
        fields = [f.strip() for f in part.split(";")]
        media = fields[0].lower()
        if not media:
            continue
        q = 1.0
        for f in fields[1:]:
            if f.lower().startswith("q="):
                try:
                    q = float(f[2:])
                except ValueError:
                    q = 0.0
        ranges.append((media, q))
    return ranges


def _quality(offer: str, ranges: list[tuple[str, float]]) -> float:
    kind, _, sub = offer.partition("/")
    best: tuple[int, float] = (-1, 0.0)  # (specificity, q)
    for media, q in ranges:
        mkind, _, msub = media.partition("/")
        if media == offer:
            spec = 2
        elif mkind == kind and msub == "*":
            spec = 1
        elif media in ("*/*", "*"):
            spec = 0
        else:
            continue
        if spec > best[0]:
            best = (spec, q)
    return best[1]


def negotiate(accept: str | None, offers: list[str]) -> str | None:
    """The offer the client prefers (ties go to the earlier offer); ``None`` if none is acceptable.

    A missing or empty ``Accept`` accepts anything: the first offer.
    """
    if not accept or not accept.strip():
        return offers[0]
    ranges = _parse(accept)
    scored = [(_quality(o, ranges), -i, o) for i, o in enumerate(offers)]
    q, _, offer = max(scored)
    return offer if q > 0 else None
