"""A SIGHUP's reload of hsbd's config, applied on the loop (HostServer.reload): what can change
while running (HostServer.RELOADABLE) changes, what needs a restart is named (hsb.ops.reload)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from hsb.host.config import HostConfig
from hsb.host.ha import batch_wait
from hsb.ops import reload
from hsb.wire.tls import reload_tls

if TYPE_CHECKING:
    from hsb.host.server import HostServer


async def apply(srv: HostServer) -> None:
    """Apply what can change while running; name what needs a restart. The file is read and
    checked on a thread (the loop serves meanwhile), and applied on the loop."""
    reload_tls(srv.tls, srv.cfg.host.name)
    planned = await asyncio.get_running_loop().run_in_executor(None, reload.plan, srv.config_path, HostConfig, srv.cfg, srv.RELOADABLE)
    if planned is None:
        return
    new, applied, restart = planned
    h = new.host
    srv.peer.interval = srv.cp.interval = h.heartbeat_interval
    srv.peer.timeout = srv.cp.timeout = h.heartbeat_timeout
    srv.takeover.store.timeout = srv.cp_memory.timeout = new.takeover.storage_timeout
    # what waits on storage follows it: the standby's wait for a batch write
    srv.ha.batch_wait_s = batch_wait(new.takeover)
    added = 0
    capacity = srv.takeover.own_batch_records * srv.takeover.entries_per_record
    # removed terminals stay in the table (and on the fast-switch link) until a restart: the
    # batch must hold them and the new ones together
    if len(srv.sessions.table.keys() | new.terminal_table.keys()) > capacity:
        restart += ["terminals (the batch area B was sized at start)"]
        applied = [k for k in applied if k not in ("terminals", "terminal_groups")]
        new_defs = {}
    else:
        new_defs = new.terminal_table
        srv.cfg.terminals, srv.cfg.terminal_groups, srv.cfg._defs = new.terminals, new.terminal_groups, new.terminal_table
    for name, d in new_defs.items():
        ts = srv.sessions.get(name)
        if ts is None:
            srv.sessions.add(d)
            added += 1
        elif ts.state == "closed":
            ts.attrs = d.attrs  # attributes of an open session change at its next open
    srv.cfg.host.heartbeat_interval = h.heartbeat_interval
    srv.cfg.host.heartbeat_timeout = h.heartbeat_timeout
    srv.cfg.host.ring_poll_interval = h.ring_poll_interval
    srv.cfg.takeover.storage_timeout = new.takeover.storage_timeout
    reload.report(applied, restart, terminals_added=added)
