"""`hsbterm connect` fed by a script, a message not answered within its `--linger` (docs/operations.md
§17): the CP hands what it held over to the active with the terminal's logoff (docs/protocol.md,
`bye`), so its reply may come after the bye, before the CP closes. The lines are said once the CP
closed: a reply that came then is printed, and the last line says it came only after the bye (exit
1, late, as hsbterm load counts it), not "1 message still without a reply" below the reply it
printed. One never answered is still said so. The real hsbterm process against the fake CP."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.fakecp import FakeCP, reap, spawn

pytestmark = pytest.mark.timeout(60)


async def connect_with(fake: FakeCP, name: str, text: bytes) -> tuple[int, list[str]]:
    proc = await spawn("connect", name, "--cp", f"127.0.0.1:{fake.port}", "--linger", "0.3", stdin=True)
    try:
        assert proc.stdin is not None
        out, err = await asyncio.wait_for(proc.communicate(text), 30)
        assert proc.returncode is not None
        return proc.returncode, out.decode().splitlines() + err.decode().splitlines()
    finally:
        await reap(proc)


async def test_a_reply_that_comes_with_the_logoff_is_printed_and_said_late_not_missing(fake: FakeCP) -> None:
    fake.pause(lambda name: name == "T00051")  # held until the bye, as a CP without a session at the active
    fake.release_at_bye = True
    code, lines = await connect_with(fake, "T00051", b"balance?\n")
    assert fake.terms["T00051"].byes == 1, lines
    replies = [i for i, s in enumerate(lines) if s.startswith("reply id=") and s.endswith(")") and ": balance?" in s]
    assert len(replies) == 1, lines
    assert not any("still without a reply" in s for s in lines), lines
    late = [i for i, s in enumerate(lines) if s == "1 message answered only after the bye, not within the linger (0.3 s)"]
    assert late and late[0] > replies[0], lines
    assert code == 1, lines


async def test_a_message_never_answered_is_still_said_without_a_reply(fake: FakeCP) -> None:
    fake.lose = lambda name, seq: True  # acknowledged, never answered, not even at the bye
    code, lines = await connect_with(fake, "T00052", b"balance?\n")
    assert code == 1 and "1 message still without a reply" in lines, lines
    assert not any("answered only after the bye" in s for s in lines), lines
    fake.lose = lambda name, seq: False
    code, lines = await connect_with(fake, "T00053", b"balance?\n")
    assert code == 0 and not any("without a reply" in s or "after the bye" in s for s in lines), lines
