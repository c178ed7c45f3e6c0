"""Operator commands for the indexer.

python -m indexer institutions add CODE NAME   register an institution
python -m indexer audit verify                 check the audit trail's hash chain, and
                                               that no record is left unsealed
python -m indexer audit seal                   chain the newest records now
python -m indexer audit seal --every 1         the deployment's sealer (one works at a
                                               time, by a PostgreSQL lease; SIGTERM stops
                                               it after its batch)
python -m indexer outbox deliver [--every S]   the deployment's notification deliverer
                                               (one works at a time, by a lease; needs
                                               INDEXER_ALERT_WEBHOOK_URL)
python -m indexer serve UVICORN-ARGV...        uvicorn, with this node's sealer (and
                                               deliverer, with a webhook) beside it
python -m indexer audit purge [--days N]       drop sealed records older than N days
                                               (default INDEXER_AUDIT_RETENTION_DAYS)
python -m indexer names index                  add patients registered before the name
                                               index (0008) to it; quick when none are
"""

from __future__ import annotations

import argparse
import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable

from sqlalchemy.orm import Session

from .config import get_settings
from .db import get_engine, session_factory
from .services import audit, outbox
from .services.fleet_stale import fleet_loop
from .services.leased_loop import LeasedLoop
from .services.registry import Registry

STOP_WITHIN_S = 30.0  # serve: how long a SIGTERM waits for the loops' batches


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
    trail.add_argument(
        "--unsealed-after",
        type=float,
        default=audit.UNSEALED_AFTER_S,
        help="verify: seconds after which an unsealed record is a problem",
    )
    deliver = sub.add_parser("outbox", help="the notification outbox")
    deliver.add_argument("action", choices=["deliver"])
    deliver.add_argument("--every", type=float, default=1.0)
    names = sub.add_parser("names", help="the patients' name blind index")
    names.add_argument("action", choices=["index"])
    serve_cmd = sub.add_parser("serve", help="uvicorn and this node's audit sealer")
    serve_cmd.add_argument("uvicorn", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve(args.uvicorn)
    if args.command == "outbox":
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        deliverer = _deliverer(every_s=args.every)
        if deliverer is None:
            print("outbox: INDEXER_ALERT_WEBHOOK_URL is not set", file=sys.stderr)
            return 2
        _stop_on_signals(deliverer.stop)
        deliverer.run_forever()
        return 0
    sessions = session_factory()
    if args.command == "institutions":
        with sessions() as session:
            registry = Registry(session, pii=None, gateway_url="")  # type: ignore[arg-type]
            outcome = registry.put_institution(args.code, args.name)
            session.commit()
        print(f"institution {args.code}: {outcome}")
        return 0
    if args.command == "names":
        return index_names(sessions)
    if args.action == "seal" and args.every:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        sealer = audit.Sealer(get_engine(), every_s=args.every)
        _stop_on_signals(sealer.stop)
        sealer.run_forever()
        return 0
    with sessions() as session, session.begin():
        if args.action == "seal":
            print(f"sealed {audit.seal(session, min_age_s=0)} audit records")
            return 0
        if args.action == "purge":
            days = args.days or get_settings().audit_retention_days
            print(f"purged {audit.purge(session, days)} audit records older than {days} days")
            return 0
        checked, problems = audit.verify(session, args.unsealed_after)
    for problem in problems:
        print(f"audit record {problem.id}: {problem.reason}")
    print(f"{checked} sealed audit records checked, {len(problems)} problems")
    return 1 if problems else 0


def index_names(sessions: Callable[[], Session]) -> int:
    """Index the names of patients the name index does not hold yet, a batch per
    transaction (names are decrypted in memory only)."""
    from .api.deps import get_pii

    done, after = 0, 0
    while True:
        with sessions() as session, session.begin():
            registry = Registry(session, get_pii(), gateway_url="")
            last = registry.index_missing_names(after)
        if last is None:
            break
        done, after = done + 1, last
    print(f"name index: {done} batch(es) of patients added")
    return 0


def _stop_on_signals(stop: Callable[[], object]) -> None:
    def handler(_signum: int, _frame: object) -> None:
        stop()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def _deliverer(every_s: float = 1.0) -> outbox.Deliverer | None:
    settings = get_settings()
    if not settings.alert_webhook_url:
        return None
    return outbox.Deliverer(get_engine(), settings.alert_webhook_url, every_s=every_s)


def background_loops() -> list[LeasedLoop]:
    """This node's leased loops: the audit sealer, the fleet's staleness check (#15), and
    with a webhook the deliverer."""
    deliverer = _deliverer()
    stale = fleet_loop(get_engine(), webhook=deliverer is not None)
    return [
        audit.Sealer(get_engine(), every_s=1.0),
        stale,
        *([deliverer] if deliverer else []),
    ]


def serve(uvicorn_argv: list[str], stop_within_s: float = STOP_WITHIN_S) -> int:
    """uvicorn as a child (same process group: the launcher's SIGTERM reaches it and its
    workers) and the node's leased loops in this process, so a node has one of each, not
    one per worker. On SIGTERM each loop finishes its batch, and this waits for them (at
    most `stop_within_s` in all); when uvicorn ends, so does this."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    argv = uvicorn_argv[1:] if uvicorn_argv[:1] == ["--"] else uvicorn_argv
    if not argv:
        print("serve: the uvicorn command line is missing", file=sys.stderr)
        return 2
    loops = background_loops()
    stopping = threading.Event()

    def stop() -> None:
        stopping.set()
        for loop in loops:
            loop.stop()

    _stop_on_signals(stop)
    child = subprocess.Popen(argv)  # the launcher's own command line
    for loop in loops:
        loop.start()
    while child.poll() is None and not stopping.is_set():
        stopping.wait(0.5)
    if child.poll() is None:
        try:  # a group signal reached uvicorn too; told alone, it is told now
            child.wait(timeout=5)
        except subprocess.TimeoutExpired:
            child.terminate()
            child.wait(timeout=25)
    for loop in loops:
        loop.stop()
    deadline = time.monotonic() + stop_within_s
    stopped = all([loop.join(max(0.0, deadline - time.monotonic())) for loop in loops])
    return (child.returncode or 0) if stopped else 1


if __name__ == "__main__":
    sys.exit(main())
