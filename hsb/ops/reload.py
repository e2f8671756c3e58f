"""SIGHUP: compare the config on disk with the running one, key by key.

Each daemon says which keys it can apply while running; everything else that
changed is reported as needing a restart, by name.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


def flatten(model: BaseModel) -> dict[str, Any]:
    out: dict[str, Any] = {}

    def walk(prefix: str, v: Any) -> None:
        if isinstance(v, BaseModel):
            for k in type(v).model_fields:
                walk(f"{prefix}{k}.", getattr(v, k))
        else:
            out[prefix.rstrip(".")] = v.model_dump() if isinstance(v, BaseModel) else v

    walk("", model)
    return out


def changed_keys(old: BaseModel, new: BaseModel) -> list[str]:
    a, b = flatten(old), flatten(new)
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
