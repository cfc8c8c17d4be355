"""copl_ray/serving/timing.py: the ``Server-Timing`` value is ``name;dur=<ms, 3 decimals>``
parts joined by ", " in the order recorded; outside a request ``record`` does nothing."""

from __future__ import annotations

import contextvars

from copl_ray.serving import timing


def test_header_value_is_milliseconds_with_three_decimals():
    parts = {"tokenize": 0.00021, "batch": 0.0059024, "replica": 0.006731}
    assert timing.header_value(parts) == b"tokenize;dur=0.210, batch;dur=5.902, replica;dur=6.731"
    assert timing.header_value({}) == b""


def test_record_adds_to_the_current_request_only():
    def request() -> dict[str, float]:
        parts = timing.open_record()
        timing.record(tokenize=0.001)
        timing.record(batch=0.002, tokenize=0.003)  # a repeated name keeps the last value
        return parts

    parts = contextvars.copy_context().run(request)
    assert parts == {"tokenize": 0.003, "batch": 0.002}
    assert timing.header_value(parts) == b"tokenize;dur=3.000, batch;dur=2.000"

    def outside() -> None:
        timing.record(tokenize=1.0)  # no open record in this context: no-op, no error
        assert timing._PARTS.get() is None

    contextvars.Context().run(outside)
