"""`python -m indexer institutions add CODE NAME`: register an institution (operators, the
launcher) without going through the API."""

from __future__ import annotations

import argparse
import sys

from .db import session_factory
from .services.registry import Registry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m indexer")
    sub = parser.add_subparsers(dest="command", required=True)
    add = sub.add_parser("institutions", help="manage institutions")
    add.add_argument("action", choices=["add"])
    add.add_argument("code")
    add.add_argument("name")
    args = parser.parse_args(argv)
    with session_factory()() as session:
        registry = Registry(session, pii=None, gateway_url="")  # type: ignore[arg-type]
        outcome = registry.put_institution(args.code, args.name)
        session.commit()
    print(f"institution {args.code}: {outcome}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
