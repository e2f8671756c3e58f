"""The CP's promise to a mix of resuming and non-resuming terminals, with logoffs and CP crashes,
against a model (hypothesis, stateful): tests/support/cpmodel_mixed.py says what it drives and
checks."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.cpmodel import checked, model_test
from tests.support.cpmodel_mixed import MixedModel

pytestmark = pytest.mark.timeout(600)  # (a failure's shrinking included; a clean run takes ~26 s)

TestCPModelMixed = model_test(MixedModel)


def test_a_bye_and_a_confirmation_lost_with_a_crash_are_allowed() -> None:
    """Steps the model once found on a loaded machine (the whole suite beside it): T00001's run
    confirms a kept reply, says bye, and its next run logs on; the CP dies before the group commit
    of the confirmation and the bye. The recovered CP holds the reply again and sends it, marked
    resent, to the next run, as the promise allows (a logoff whose record a crash lost). The
    model took the bye as settled because the CP held nothing for it in memory; it counts it now."""

    Replay = checked(MixedModel)

    @settings(max_examples=1, database=None, deadline=None)
    @given(st.just(0))
    def replay(_: int) -> None:
        state = Replay()
        state.start()
        state.answer_then_drop(pick=18, then_durable=True)
        state.answer_then_drop(pick=11, then_durable=False)
        state.send(n=1, name="T00001")
        state.crash(flushed=True, mid_group=False, remembers=True)
        state.answer_then_drop(pick=20, then_durable=True)
        state.reconnect(name="T00001")
        state.reconnect(name="T00002")
        state.answer_then_drop(pick=20, then_durable=False)
        state.logoff(back=True, name="T00001", resume=True)
        state.crash(flushed=False, mid_group=False, remembers=False)
        state.answer_then_drop(pick=18, then_durable=False)
        state.send(n=3, name="T00003")
        state.answer_then_drop(pick=9, then_durable=False)
        state.answer_then_drop(pick=13, then_durable=True)
        state.answer_then_drop(pick=16, then_durable=True)
        state.reconnect(name="T00003")
        state.reconnect(name="T00002")
        state.reconnect(name="T00003")
        state.send(n=3, name="T00003")
        state.answer_then_drop(pick=5, then_durable=True)
        state.logoff(back=False, name="T00003", resume=False)
        state.reconnect(name="T00003")
        state.answer_then_drop(pick=19, then_durable=False)
        state.reconnect(name="T00002")
        state.reconnect(name="T00003")
        state.crash(flushed=True, mid_group=False, remembers=False)
        state.answer_then_drop(pick=0, then_durable=False)
        state.logoff(back=True, name="T00003", resume=False)
        state.answer_then_drop(pick=19, then_durable=True)
        state.teardown()

    replay()
