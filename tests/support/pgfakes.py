"""Stand-ins for an asyncpg pool whose transactions' end (COMMIT, or ROLLBACK after the body
raised) fails as a test says, for hsb.service.db's sorting of errors without a server."""

from __future__ import annotations

from typing import Any


class FakeEnd:
    """conn.transaction(): its end (COMMIT, or ROLLBACK after the body raised) fails with `fails`."""

    def __init__(self, fails: BaseException | None) -> None:
        self.fails = fails

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: Any) -> None:
        if self.fails is not None:
            raise self.fails


class FakePool:
    """A pool of `size` connections, `idle` of them free; its transactions end with `fails`."""

    def __init__(self, fails: BaseException | None = None, size: int = 1, idle: int = 0, acquire_fails: BaseException | None = None) -> None:
        self.fails, self.size, self.idle, self.acquire_fails = fails, size, idle, acquire_fails

    def get_size(self) -> int:
        return self.size

    def get_idle_size(self) -> int:
        return self.idle

    def acquire(self, timeout: float) -> Any:
        pool = self
        if self.acquire_fails is not None:
            raise self.acquire_fails

        class Conn:
            def is_closed(self) -> bool:
                return False

            def transaction(self) -> FakeEnd:
                return FakeEnd(pool.fails)

        class Acquired:
            async def __aenter__(self) -> Conn:
                return Conn()

            async def __aexit__(self, *exc: Any) -> None:
                return None

        return Acquired()
