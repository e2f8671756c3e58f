"""Running hsbctl's click commands in-process (CliRunner) and checking a one-line error."""

from __future__ import annotations

from click.testing import CliRunner

from hsb.ctl.main import main


def invoke(*args: str) -> tuple[int, str, str]:
    """hsbctl with `args`: (exit code, stdout, stderr)."""
    res = CliRunner().invoke(main, list(args))
    return res.exit_code, res.stdout, res.stderr


def one_line_error(code: int, out: str, err: str, expected_code: int, *fragments: str) -> str:
    """The run exited `expected_code` with exactly one `error: …` line naming every fragment,
    and no traceback; that line."""
    assert code == expected_code, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in out + err
    for f in fragments:
        assert f in lines[0], lines[0]
    return lines[0]
