"""hsb.ports edges: $HSB_PORT_RANGE's bounds, the slices' smallest width, and the default range
when the kernel's ephemeral range cannot be read."""

from __future__ import annotations

import pytest

from hsb import ports


@pytest.mark.parametrize("spec, want", [("1024-1039", (1024, 1039)), ("65520-65535", (65520, 65535)), (" 20000-20015 ", (20000, 20015))])
def test_a_range_at_the_bounds_is_taken_as_written(monkeypatch: pytest.MonkeyPatch, spec: str, want: tuple[int, int]) -> None:
    monkeypatch.setenv(ports.ENV, spec)
    assert ports.port_range() == want


@pytest.mark.parametrize("spec", ["1023-1038", "65519-65536", "20000-20014"])
def test_a_range_just_past_the_bounds_is_refused(monkeypatch: pytest.MonkeyPatch, spec: str) -> None:
    monkeypatch.setenv(ports.ENV, spec)
    with pytest.raises(ports.PortRangeError, match="is not LOW-HIGH with 1024 <= LOW, LOW \\+ 15 <= HIGH <= 65535"):
        ports.port_range()


def test_slices_of_exactly_16_ports_cover_the_range_and_15_are_refused() -> None:
    assert [ports.split_range(i, 2, (20000, 20031)) for i in range(2)] == ["20000-20015", "20016-20031"]
    assert [ports.split_range(i, 3, (20000, 20047)) for i in range(3)] == ["20000-20015", "20016-20031", "20032-20047"]
    with pytest.raises(ports.PortRangeError, match="20000-20030 is too narrow for 2 slices of 16 ports or more"):
        ports.split_range(0, 2, (20000, 20030))


def test_without_the_kernels_range_the_default_stops_below_its_usual_floor(monkeypatch: pytest.MonkeyPatch) -> None:
    """Linux's default ephemeral range starts at 32768: that port must not be drawn."""

    def unreadable(*_a: object, **_k: object) -> object:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(ports, "open", unreadable, raising=False)
    assert ports.default_range() == (10000, 32767)
