"""hsb.gcpolicy in this process: `apply()` collects the garbage there is before it freezes and
turns full collections off; `paused()` gives back the collector as it found it."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from hsb import gcpolicy


class Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: reference counting alone never frees it


@pytest.fixture
def collector() -> Iterator[None]:
    threshold, enabled = gc.get_threshold(), gc.isenabled()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)
    (gc.enable if enabled else gc.disable)()


def test_apply_collects_the_cyclic_garbage_first_and_turns_full_collections_off(collector: None) -> None:
    young, middle, _ = gc.get_threshold()
    gc.disable()  # (nothing collects the cycle before apply() does)
    n = Node()
    gone = weakref.ref(n)
    del n
    assert gone() is not None
    gcpolicy.apply()
    assert gone() is None, "cyclic garbage frozen for the process's life"
    assert gc.get_threshold() == (young, middle, gcpolicy.NO_FULL_COLLECTION)
    assert gc.get_freeze_count() > 0


@pytest.mark.parametrize("was_on", [True, False])
def test_paused_stops_collections_and_leaves_the_collector_as_it_found_it(collector: None, was_on: bool) -> None:
    (gc.enable if was_on else gc.disable)()
    with gcpolicy.paused():
        assert not gc.isenabled()
    assert gc.isenabled() is was_on
    with pytest.raises(KeyError), gcpolicy.paused():
        raise KeyError("x")
    assert gc.isenabled() is was_on
