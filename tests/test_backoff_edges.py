"""hsb.backoff's schedule exactly, with the jitter pinned: first, doubling, capped, started over
by `reset()`, the cap at once after `slow_down()`, and the jitter's whole span 0.5..1.5."""

from __future__ import annotations

import random

import pytest

from hsb.backoff import Backoff, doubling


class Fixed(random.Random):
    """A `random()` that answers what it is told."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


def test_the_waits_double_from_the_first_up_to_the_cap_and_start_over_after_a_reset() -> None:
    b = Backoff(0.05, 0.5, rng=Fixed(0.5))  # jitter factor 1.0
    assert [b.next() for _ in range(6)] == pytest.approx([0.05, 0.1, 0.2, 0.4, 0.5, 0.5])
    b.reset()
    assert [b.next() for _ in range(2)] == pytest.approx([0.05, 0.1])


def test_slow_down_waits_the_cap_each_time_until_a_reset() -> None:
    b = Backoff(0.01, 2.0, rng=Fixed(0.5))
    b.next()
    b.slow_down()
    assert [b.next() for _ in range(3)] == pytest.approx([2.0, 2.0, 2.0])
    b.reset()
    assert b.next() == pytest.approx(0.01)


@pytest.mark.parametrize(("r", "factor"), [(0.0, 0.5), (0.999, 1.499)])
def test_the_jitter_spans_half_to_one_and_a_half_times_the_wait(r: float, factor: float) -> None:
    b = Backoff(0.2, 1.0, rng=Fixed(r))
    assert b.next() == pytest.approx(0.2 * factor)
    assert b.next() == pytest.approx(0.4 * factor)


def test_doubling_counts_from_0_and_stays_at_the_cap_for_any_n() -> None:
    assert [doubling(0.05, 30.0, n) for n in range(4)] == pytest.approx([0.05, 0.1, 0.2, 0.4])
    assert doubling(0.05, 30.0, 10**6) == 30.0
