"""A throwaway PostgreSQL server for the tests: Debian's `postgresql` binaries, `initdb` and
`pg_ctl` into a fresh directory, listening only on a Unix socket in that directory.
`fresh(pg)` makes a database of its own for one test; `needs_pg` skips a test (one that
starts its server through the sandbox rather than the `pg` fixture) when none can run here.

The server refuses to run as root, so as root (CI) it runs as the `postgres` user in a
directory that user owns. `missing()` says what is absent, for a skip reason.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from hsb.ports import free_port


def bindir() -> Path | None:
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True):
        if Path(d, "initdb").exists() and Path(d, "pg_ctl").exists():
            return Path(d)
    w = shutil.which("pg_ctl")
    return Path(w).parent if w and Path(w).with_name("initdb").exists() else None


def missing() -> str | None:
    """Why a throwaway server cannot be started here, or None."""
    if bindir() is None:
        return "PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql (.ci/run installs it)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run the server as (apt-get install postgresql creates it)"
        if shutil.which("runuser") is None:
            return "running as root and 'runuser' is missing (util-linux)"
    return None


class PgServer:
    def __init__(self) -> None:
        b = bindir()
        assert b is not None, missing()
        self.bin = b
        self.dir = Path(tempfile.mkdtemp(prefix="hsb-pg-"))
        self.port = free_port()
        self.as_root = os.geteuid() == 0
        if self.as_root:
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        os.chmod(self.dir, 0o755)  # the tests (as root) read nothing in it; postgres owns it
        self.data = self.dir / "data"
        self.log = self.dir / "log"
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
        self.start()

    def _run(self, prog: str, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bin / prog), *args]
        if self.as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise RuntimeError(f"{prog} failed ({r.returncode}): {r.stderr[-2000:]}{self.tail()}")
        return r

    def tail(self) -> str:
        try:
            return "\n" + self.log.read_text()[-1500:]
        except OSError:
            return ""

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@/postgres?host={self.dir}&port={self.port}"

    def dsn_for(self, db: str) -> str:
        return f"postgresql://postgres@/{db}?host={self.dir}&port={self.port}"

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses='' -c fsync=on -c max_connections=200"
        self._run("pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.log), "-w", "-t", "30", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop", check=False)

    def running(self) -> bool:
        return self._run("pg_ctl", "-D", str(self.data), "status", check=False).returncode == 0

    def createdb(self, name: str) -> str:
        """A fresh database; its DSN."""
        self._psql(f"CREATE DATABASE {name}")
        return self.dsn_for(name)

    def _psql(self, sql: str) -> str:
        psql = self.bin / "psql"
        cmd = [str(psql), "-h", str(self.dir), "-p", str(self.port), "-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-Atc", sql]
        if self.as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            raise RuntimeError(f"psql {sql!r}: {r.stderr}")
        return r.stdout

    def close(self) -> None:
        deadline = time.monotonic() + 30
        self.stop("immediate")
        while self.running() and time.monotonic() < deadline:
            time.sleep(0.05)
        shutil.rmtree(self.dir, ignore_errors=True)


NO_PG = missing()
needs_pg = pytest.mark.skipif(NO_PG is not None, reason=NO_PG or "")

_dbs = iter(range(1, 10**6))


def fresh(pg: PgServer) -> str:
    """A new database on `pg` for one test; its DSN."""
    return pg.createdb(f"t{os.getpid()}_{next(_dbs)}")


async def run_on(db: Any, body: Callable[[Any], Awaitable[None]]) -> None:
    """`body(db)` on a database of either kind (SQLite or PostgreSQL), closed after it."""
    try:
        await body(db)
    finally:
        await db.close()
