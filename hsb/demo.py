"""The `scripts/demo` job (filled in as the issues land)."""

from __future__ import annotations

import sys


def main() -> int:
    print("demo: not implemented yet", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
