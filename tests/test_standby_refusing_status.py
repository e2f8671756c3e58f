"""`hsbctl status` names the standby sessions the standby refuses (hsb.host.sessions_ctl's
`refusing`, the host's `standby_refusing` in its status): an attrs change reloaded on both hosts
and then one host restarted (a rolling upgrade) leaves the open sessions with the attrs of before
on the active and the new ones on the restarted standby, which refuses them. Status said
ESTABLISHED with no word of it, and the next switchover or failover disconnected those terminals
(the classic path) as a surprise."""

from __future__ import annotations

from pathlib import Path

import pytest

from hsb.service.builtin import EchoService
from tests.support.inproc import pair_in_hot_standby, until
from tests.support.procs import write_secret

pytestmark = pytest.mark.timeout(60)


async def test_status_names_the_standby_sessions_the_standby_refuses_until_they_close(tmp_path: Path) -> None:
    from hsb.ctl.gather import status_all
    from hsb.ctl.status import shown
    from tests.support.hostclient import FakeTerminal

    async with pair_in_hot_standby(tmp_path, EchoService) as (cp, a, b, _tasks):
        b.sessions_ctl.sessions.table["T00003"].attrs = {"kind": "kiosk"}  # (host-a's: the default attrs)
        terms = {}
        for name in ("T00001", "T00003"):
            t = await FakeTerminal.connect(cp.bound["terminal"], name)
            await t.wait(lambda m: m["t"] == "session" and m["state"] == "open")
            terms[name] = t
        await until(lambda: "T00003" in b.sessions_ctl.refusing, "host-b refusing T00003's standby session")
        secret = str(write_secret(tmp_path))

        async def lines() -> tuple[int, list[str]]:
            st = await status_all(cp.bound["admin"], [a.bound["admin"], b.bound["admin"]], secret)
            return int(st["exit_status"]), shown(st).splitlines()

        code, text = await lines()
        said = [x for x in text if "STANDBY SESSIONS REFUSED here" in x]
        assert code == 0 and text[0].startswith("hsb: ESTABLISHED"), text
        assert len(said) == 1 and "REFUSED here: T00003 (terminal 'T00003': this host's session attributes" in said[0], text
        assert "a switchover or failover disconnects it (the classic path, nothing lost)" in said[0], said
        at = text.index(said[0])
        assert any(x.startswith("  host-b    STANDBY") for x in text[:at]) and not any(x.startswith("  host-a ") for x in text[:at][-8:]), text
        # the terminal logs off: no standby session is owed any more, the line goes
        await terms["T00003"].close()
        await until(lambda: "T00003" not in b.sessions_ctl.refusing, "the refusal ended by the logoff")
        code, text = await lines()
        assert code == 0 and not [x for x in text if "STANDBY SESSIONS REFUSED" in x], text
        await terms["T00001"].close()
