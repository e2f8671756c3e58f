"""docs/ledger.md's "Your own service, in a few lines", run as written on a real PostgreSQL
server: the walk-through that followed it found its statement refused (`left` is a reserved
word in PostgreSQL: a syntax error, each message answered `error: PostgresSyntaxError`) and its
table never made (each message held for ever, `stock` missing). Here the example makes its
table, sells once per message, and a redelivery (marked or not) gets the stored reply with the
effect not run again."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from hsb.service.api import load_service
from tests.support.pg import PgServer, fresh

pytestmark = pytest.mark.timeout(60)

DOC = Path(__file__).resolve().parent.parent / "docs" / "ledger.md"


def example() -> str:
    """The Python block under the heading "Your own service"."""
    text = DOC.read_text()
    part = text[text.index("## Your own service") :]
    m = re.search(r"```python\n(.*?)```", part, re.S)
    assert m is not None, "no python block under 'Your own service'"
    return m.group(1)


def test_the_example_names_its_module_and_factory_as_its_config_does() -> None:
    code = example()
    assert code.startswith('# myapp/service.py     [host] service = "myapp.service:Orders"'), code[:80]
    toml = DOC.read_text()[DOC.read_text().index("## Your own service") :].split("## The `ledger` service")[0]
    assert 'service = "myapp.service:Orders"' in toml and 'dsn = "postgresql://' in toml


async def test_the_documented_service_sells_once_per_message_across_redeliveries(
    pg: PgServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pkg = tmp_path / "myapp"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "service.py").write_text(example())
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("myapp", "myapp.service"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    assert importlib.util.find_spec("myapp.service") is not None
    svc: Any = load_service("myapp.service:Orders", "host-a", {"dsn": fresh(pg)})
    try:
        assert await svc.handle("T1", 1, "widget", False) == "sold out"  # its table made, empty
        await svc.db.setup(["INSERT INTO stock VALUES ('widget', 2)"])
        assert await svc.handle("T1", 2, "widget", False) == "sold"
        assert await svc.handle("T1", 2, "widget", True) == "sold"  # redelivered: the stored reply
        assert await svc.handle("T1", 2, "widget", False) == "sold"  # again unmarked: met at the record's insert
        assert await svc.handle("T1", 3, "widget", False) == "sold"
        assert await svc.handle("T1", 4, "widget", False) == "sold out"

        async def left(tx: Any) -> Any:
            return await tx.fetchval("SELECT qty FROM stock WHERE item = 'widget'")

        assert await svc.db.run(left) == 0  # two sold, whatever the repeats

        async def records(tx: Any) -> Any:
            return await tx.fetch("SELECT msg_id, reply FROM hsb_idempotency WHERE terminal = 'T1' ORDER BY msg_id")

        assert await svc.db.run(records) == [(1, "sold out"), (2, "sold"), (3, "sold"), (4, "sold out")]
    finally:
        await svc.close()
