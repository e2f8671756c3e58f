# Sourced by scripts/test and scripts/demo: make .venv and install the project if needed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
STAMP="$VENV/.hsb-installed"
if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ]; then
    "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
    "$VENV/bin/python" -m pip install -q -e "$ROOT[test]"
    touch "$STAMP"
fi
# Byte-compile the package as pip does for an installed one: an editable checkout with
# PYTHONDONTWRITEBYTECODE set would otherwise compile every module at every daemon start
# (about 70 ms each on a 2-core machine; the tests start hundreds). Quick when up to date.
"$VENV/bin/python" -m compileall -q "$ROOT/hsb" >/dev/null
export PATH="$VENV/bin:$PATH"
