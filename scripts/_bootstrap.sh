# Sourced by scripts/test and scripts/demo: make .venv and install the project if needed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"
# A .venv counts only with pip in it and Python 3.11 or newer: `python3 -m venv` without Debian's
# python3-venv writes .venv/bin/python and then fails at ensurepip, and a .venv made by an older
# python3 stays one; either was taken for done at every later run (and failed: No module named pip)
venv_ok() {
    [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c 'import pip, sys; assert sys.version_info >= (3, 11)' >/dev/null 2>&1
}
if ! venv_ok; then
    if ! command -v "$PY" >/dev/null 2>&1; then
        echo "error: $PY not found: install Python 3.11 or newer, or set PYTHON=python3.11 (or newer)" >&2
        exit 1
    fi
    if ! "$PY" -c 'import sys; assert sys.version_info >= (3, 11)' >/dev/null 2>&1; then
        echo "error: hsb needs Python 3.11 or newer; $PY is $("$PY" -V 2>&1): set PYTHON=python3.11 (or newer)" >&2
        exit 1
    fi
    if [ -e "$VENV" ]; then
        echo "note: $VENV has no pip or an older Python (a venv that failed half-way?): making it again" >&2
    fi
    if ! out="$("$PY" -m venv --clear "$VENV" 2>&1)" || ! venv_ok; then
        if printf '%s' "$out" | grep -qi 'ensurepip\|python3.*-venv'; then
            echo "error: $PY -m venv cannot put pip into $VENV: install python3-venv (Debian/Ubuntu: sudo apt-get install python3-venv), then run this again" >&2
        else
            echo "error: $PY -m venv could not make $VENV with pip in it: $(printf '%s' "$out" | tail -n 1)" >&2
        fi
        exit 1
    fi
fi
STAMP="$VENV/.hsb-installed"
if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ]; then
    "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true  # (offline: the pip it has will do)
    "$VENV/bin/python" -m pip install -q -e "$ROOT[test]"
    touch "$STAMP"
fi
# Byte-compile the package as pip does for an installed one: an editable checkout with
# PYTHONDONTWRITEBYTECODE set would otherwise compile every module at every daemon start
# (about 70 ms each on a 2-core machine; the tests start hundreds). Quick when up to date.
"$VENV/bin/python" -m compileall -q "$ROOT/hsb" >/dev/null
export PATH="$VENV/bin:$PATH"
