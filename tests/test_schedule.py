"""copl_ray/schedule.py: the LR factor f(t) of every stage (warm-up ramp, then cosine to 0)."""

from __future__ import annotations

import math

import pytest

from copl_ray.schedule import cosine_with_warmup


def test_warmup_ramp_is_linear_up_to_one() -> None:
    f = cosine_with_warmup(total_steps=20, n_warmup=4)
    # (t + 1) / w for t < w: the first step already trains at lr / w
    assert [f(t) for t in range(4)] == [0.25, 0.5, 0.75, 1.0]


def test_cosine_starts_at_one_halves_at_midpoint_and_ends_at_zero() -> None:
    f = cosine_with_warmup(total_steps=14, n_warmup=4)
    assert f(4) == 1.0  # progress 0 right after the ramp
    assert f(9) == pytest.approx(0.5)  # (9 - 4) / (14 - 4) = 1/2: cos(pi / 2) = 0
    assert f(14) == pytest.approx(0.0, abs=1e-12)
    # one quarter in: 0.5 * (1 + cos(pi / 4))
    f2 = cosine_with_warmup(total_steps=8, n_warmup=0)
    assert f2(2) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))


def test_past_the_end_stays_at_zero() -> None:
    f = cosine_with_warmup(total_steps=10, n_warmup=2)
    assert f(10) == f(25) == pytest.approx(0.0, abs=1e-12)


def test_no_warmup_and_degenerate_totals() -> None:
    f = cosine_with_warmup(total_steps=10, n_warmup=0)
    assert f(0) == 1.0 and f(5) == pytest.approx(0.5)
    # total == warm-up: the denominator is clamped to 1, so the step after the ramp is 0
    g = cosine_with_warmup(total_steps=3, n_warmup=3)
    assert [g(0), g(1), g(2)] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert g(3) == 1.0 and g(4) == pytest.approx(0.0, abs=1e-12)
