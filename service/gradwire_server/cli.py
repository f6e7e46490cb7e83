"""`gradwire serve`: start the server and its training workers."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from .config import parse_settings
    from .server import serve

    try:
        settings = parse_settings(sys.argv[1:] if argv is None else argv)
    except ValueError as exc:
        print(f"gradwire serve: {exc}", file=sys.stderr)
        return 2
    serve(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
