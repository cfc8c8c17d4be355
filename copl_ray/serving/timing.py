"""Per-request durations for the ``Server-Timing`` response header.

The ASGI middleware opens a record per request (:func:`open_record`); the route handler,
which runs in the same asyncio task, adds named parts (:func:`record`); the middleware
writes them into the header when the response starts (:func:`header_value`), e.g.
``tokenize;dur=0.210, batch;dur=5.902, replica;dur=6.731`` (milliseconds).

The context variable lives here, in an importable package, because Ray pickles the
FastAPI ingress by value and a ``ContextVar`` cannot be pickled.
"""

from __future__ import annotations

import contextvars

_PARTS: contextvars.ContextVar[dict[str, float] | None] = contextvars.ContextVar(
    "copl_server_timing", default=None
)


def open_record() -> dict[str, float]:
    """A fresh record for the current request (task); returns it for the middleware."""
    parts: dict[str, float] = {}
    _PARTS.set(parts)
    return parts


def record(**seconds: float) -> None:
    """Add parts (seconds) to the current request's record; no-op outside a request."""
    parts = _PARTS.get()
    if parts is not None:
        parts.update(seconds)


def header_value(parts: dict[str, float]) -> bytes:
    return ", ".join(f"{k};dur={v * 1e3:.3f}" for k, v in parts.items()).encode()
