"""A host started as the active while another host is the active rejoins the pair as the standby.

The systemd unit starts hsbd in the role of its name (`hsbd@active`). After a clean stop of the
active, which hands over, or after a failover, the other host is the active: the next start of
`hsbd@active` (a restart, a reboot, a package upgrade, systemd after a crash) asks for the active
role, and the CP refuses it (`active_exists`). Such a host now carries on as the standby, as
keepalived with `nopreempt` and Patroni bring a returning node back as a replica: the pair has
its hot standby again with nothing to do, instead of a failed unit and no standby.

It happens in the same process, before the host served anything: the role is all that changes
(the CP closed the link after its refusal, and the link's next registration asks for the
standby role), as a planned switchover turns the old active into the standby on its process.
No re-exec: the listeners, the systemd watchdog and readiness (READY once hot standby is
established, as for `hsbd@standby`) carry on untouched. It happens once: the role never goes
back to active but by the CP's grant, so a refusal as the standby (`standby_exists`) is
handled as for any standby. `hsbd --no-rejoin` keeps the strict start: exit 76.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import structlog

from hsb.host.states import STARTING

if TYPE_CHECKING:
    from hsb.host.ha import HA

log = structlog.get_logger("hsb.host")


def refused_at_start(ha: HA, msg: dict[str, Any]) -> None:
    """The CP refused this host's first registration as the active (`msg`: its `active_exists`
    error, naming the active): carry on as the standby, or exit 76 (`start_refused`) with
    `--no-rejoin`."""
    text = str(msg.get("msg", ""))
    if not ha.srv.rejoin or ha.srv.rejoined_from is not None or ha.state != STARTING:
        from hsb.cli import EXIT_NOT_ACTIVE

        ha.fail(EXIT_NOT_ACTIVE, f"refused by the CP: {text}", "start_refused")
        return
    active = msg.get("active")
    if not isinstance(active, str) or not active:
        active = text.split(" ", 1)[0] or "?"  # a CP of before names it only in its message, first
    ha.srv.rejoined_from = active
    why = f"started as the active, but {active} is the active: rejoining as the standby"
    log.warning("rejoining_as_standby", active=active, refusal=text, msg=why)
    # the role only: the state stays `starting` until the registration as the standby is answered,
    # and the role-change hook runs once this host holds the standby role, as at a standby's start
    ha.role = "standby"
    log.info("state_change", prev_role="active", prev=STARTING, role="standby", state=STARTING, reason=why)
    ha.srv.on_state_change()  # (systemd's STATUS says it)
