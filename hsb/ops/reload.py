"""SIGHUP: compare the config on disk with the running one, key by key.

Each daemon says which keys it can apply while running; everything else that
changed is reported as needing a restart, by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import structlog
from pydantic import BaseModel

from hsb.config import ConfigError, load

log = structlog.get_logger("hsb.ops")
M = TypeVar("M", bound=BaseModel)


def flatten(model: BaseModel) -> dict[str, Any]:
    """Every leaf of the config by its full dotted key (`cp.host_timeout`); a list of tables (the
    terminals, say) is one leaf, compared whole."""
    out: dict[str, Any] = {}

    def walk(prefix: str, v: Any) -> None:
        if isinstance(v, BaseModel):
            for k in type(v).model_fields:
                walk(f"{prefix}{k}.", getattr(v, k))
        else:
            out[prefix.rstrip(".")] = v

    walk("", model)
    return out


def changed_keys(old: BaseModel, new: BaseModel) -> list[str]:
    a, b = flatten(old), flatten(new)
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def plan(path: str | Path | None, model: type[M], current: M, reloadable: tuple[str, ...]) -> tuple[M, list[str], list[str]] | None:
    """Read the config again: (new config, keys to apply, keys that need a restart), or None if it is bad."""
    if path is None:
        return None
    try:
        new = load(path, model)
    except ConfigError as exc:
        log.error(
            "config_reload_failed",
            path=str(path),
            errors=exc.errors,
            msg=f"{path} not reloaded, the running config stays: {'; '.join(exc.errors)}; fix the file"
            " (--check-config with the daemon's --config says every error), then reload again",
        )
        return None
    keys = changed_keys(current, new)
    return new, [k for k in keys if k in reloadable], [k for k in keys if k not in reloadable]


def report(applied: list[str], restart: list[str], **counts: int) -> None:
    log.info("config_reloaded", applied=applied, needs_restart=restart, **counts)
    if restart:
        log.warning("config_reload_incomplete", msg=f"these settings change only on restart: {', '.join(restart)}")
