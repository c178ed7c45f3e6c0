"""Operator commands for the indexer.

python -m indexer institutions add CODE NAME   register an institution
python -m indexer audit verify                 check the audit trail's hash chain
python -m indexer audit seal                   chain the newest records now
python -m indexer audit purge [--days N]       drop sealed records older than N days
                                               (default INDEXER_AUDIT_RETENTION_DAYS)
"""

from __future__ import annotations

import argparse
import sys

from .config import get_settings
from .db import session_factory
from .services import audit
from .services.registry import Registry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m indexer", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    add = sub.add_parser("institutions", help="manage institutions")
    add.add_argument("action", choices=["add"])
    add.add_argument("code")
    add.add_argument("name")
    trail = sub.add_parser("audit", help="the audit trail")
    trail.add_argument("action", choices=["verify", "seal", "purge"])
    trail.add_argument("--days", type=int, default=None)
    trail.add_argument("--every", type=float, default=None, help="seal: keep sealing")
    args = parser.parse_args(argv)
    sessions = session_factory()
    if args.command == "institutions":
        with sessions() as session:
            registry = Registry(session, pii=None, gateway_url="")  # type: ignore[arg-type]
            outcome = registry.put_institution(args.code, args.name)
            session.commit()
        print(f"institution {args.code}: {outcome}")
        return 0
    if args.action == "seal" and args.every:
        audit.Sealer(sessions, every_s=args.every).run_forever()
        return 0
    with sessions() as session, session.begin():
        if args.action == "seal":
            print(f"sealed {audit.seal(session, min_age_s=0)} audit records")
            return 0
        if args.action == "purge":
            days = args.days or get_settings().audit_retention_days
            print(f"purged {audit.purge(session, days)} audit records older than {days} days")
            return 0
        checked, problems = audit.verify(session)
    for problem in problems:
        print(f"audit record {problem.id}: {problem.reason}")
    print(f"{checked} sealed audit records checked, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
