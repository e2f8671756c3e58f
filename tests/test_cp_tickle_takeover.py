"""The tickling a CP does once it took the journal over (hsb.cp.taking_over.TakingOver.tickle):
the predecessor's list read, tickles sent unless that list was written in this network
namespace, and resent after RESEND_AFTER_S to the terminals not back by then. In-process: the
sending is a recorder, the CP server a stand-in with only what `tickle` reads."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgpack
import pytest

from hsb.cp import taking_over, tickle
from hsb.cp.taking_over import TakingOver
from hsb.cp.tickle import list_name

pytestmark = pytest.mark.timeout(30)

CONNS = [
    ["10.0.0.9", 7000, "10.1.0.1", 40001, "T1"],
    ["10.0.0.9", 7000, "10.1.0.2", 40002, "T2"],
    ["10.0.0.9", 7000, "10.1.0.3", 40003, "T3"],
]


class Term:
    def __init__(self) -> None:
        self.conn: object | None = None


def _server(d: Path, terms: dict[str, Term]) -> Any:
    return SimpleNamespace(cfg=SimpleNamespace(cp=SimpleNamespace(journal=str(d))), took_over={}, cp=SimpleNamespace(terms=terms))


def _write_list(d: Path, gen: int, origin: str) -> None:
    (d / list_name(gen)).write_bytes(msgpack.packb({"v": 1, "generation": gen, "origin": origin, "conns": CONNS}))


class Sent(list[list[str]]):
    """Each send_tickles call: the names of the connections it was given (every tickle goes
    out); `hooks` run after each call with its number (terminals coming back)."""

    def __init__(self) -> None:
        super().__init__()
        self.hooks: list[Any] = []

    def __call__(self, conns: Any, *a: Any) -> tuple[int, int, None]:
        conns = list(conns)
        self.append([c[4] for c in conns])
        for hook in self.hooks:
            hook(len(self))
        return len(conns), 0, None


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> Sent:
    rec = Sent()
    monkeypatch.setattr(taking_over, "send_tickles", rec)
    monkeypatch.setattr(taking_over, "RESEND_AFTER_S", (0.01, 0.02))
    return rec


async def test_a_list_written_in_this_network_namespace_is_not_tickled(tmp_path: Path, sent: Sent) -> None:
    """Its kernel reset those connections when their process died: no tickle (docstring of
    hsb.cp.tickle). A list from elsewhere is tickled."""
    _write_list(tmp_path, 1, tickle.origin())
    srv = _server(tmp_path, {n: Term() for n in ("T1", "T2", "T3")})
    await TakingOver.tickle(srv, 2)
    assert srv.took_over["tickles"]["here"] is True
    assert srv.took_over["tickles"]["connections"] == 3
    assert sent == [] and srv.took_over["tickles"]["sent"] == 0

    _write_list(tmp_path, 2, "another-machine:1")
    for t in srv.cp.terms.values():
        t.conn = object()  # (all back at once: no resend)
    await TakingOver.tickle(srv, 3)
    assert srv.took_over["tickles"]["here"] is False
    assert sent == [["T1", "T2", "T3"]] and srv.took_over["tickles"]["sent"] == 3


async def test_terminals_not_back_are_tickled_again_at_each_resend(tmp_path: Path, sent: Sent) -> None:
    """RESEND_AFTER_S holds two waits: after each, the terminals still not back are tickled
    again; one back meanwhile is not; once all are back, nothing more is sent."""
    _write_list(tmp_path, 1, "another-machine:1")
    terms = {n: Term() for n in ("T1", "T2", "T3")}
    terms["T3"].conn = object()  # back before the first resend

    def back(call: int) -> None:
        if call == 2:
            terms["T2"].conn = object()  # back after the first resend

    sent.hooks.append(back)
    srv = _server(tmp_path, terms)
    await TakingOver.tickle(srv, 2)
    assert sent == [["T1", "T2", "T3"], ["T1", "T2"], ["T1"]]
    assert srv.took_over["tickles"]["resent"] == 3 and srv.took_over["tickles"]["error"] is None

    sent.clear()
    for t in terms.values():
        t.conn = None
    _write_list(tmp_path, 2, "another-machine:1")

    def all_back(call: int) -> None:
        for t in terms.values():
            t.conn = object()

    sent.hooks[:] = [all_back]
    await TakingOver.tickle(srv, 3)
    assert sent == [["T1", "T2", "T3"]]  # all back after the tickles: no resend
    assert srv.took_over["tickles"]["resent"] == 0
