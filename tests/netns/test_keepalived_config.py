"""configs/keepalived/ parses with the real keepalived (`keepalived -t`), in a namespace that has
the interfaces it names, with its scripts where it says they are installed."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.netns.cplab import KEEPALIVED, keepalived_reason
from tests.netns.harness import ip

REPO = Path(__file__).resolve().parents[2]
WHY = keepalived_reason()
pytestmark = [pytest.mark.timeout(60), pytest.mark.skipif(WHY is not None, reason=WHY or "")]


def check(conf_text: str) -> subprocess.CompletedProcess[str]:
    d = Path(tempfile.mkdtemp(prefix="hsb-ka-"))
    ns = f"hsbka{os.getpid() % 100000}"
    try:
        d.chmod(0o755)
        for f in ("hsb-cp-notify", "hsb-cp-health"):
            shutil.copy(REPO / "configs" / "keepalived" / f, d / f)
            (d / f).chmod(0o755)
        conf = d / "keepalived.conf"
        conf.write_text(conf_text.replace("/usr/local/lib/hsb", str(d)))
        ip("netns", "add", ns)
        ip("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
        assert KEEPALIVED is not None
        return subprocess.run(["ip", "netns", "exec", ns, KEEPALIVED, "-t", "-f", str(conf), "-l"], capture_output=True, text=True, timeout=30)
    finally:
        ip("netns", "del", ns, check=False)
        shutil.rmtree(d, ignore_errors=True)


def test_the_reference_config_is_valid_for_keepalived() -> None:
    text = (REPO / "configs" / "keepalived" / "keepalived.conf").read_text()
    r = check(text)
    assert r.returncode == 0, r.stdout + r.stderr
    # the check can fail: a config naming a script that is not there does
    broken = check(text.replace("hsb-cp-health", "no-such-script"))
    assert broken.returncode != 0 and "not found" in broken.stdout + broken.stderr
