"""Two of everything: the break-glass notification outbox and the node's leased loops
(#19, 4). Two delivering workers against the stack's database, the one holding the lease
killed in the middle of a POST: every notification reaches the webhook at least once, the
one it was posting again. `python -m indexer serve` stops its loops and waits for them."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from deploy.stack.client import StackClient
from deploy.stack.launcher import load_context, service
from deploy.stack.settings import REPO_ROOT, StackSettings
from indexer.services import outbox

from ..support.eventually import eventually

NOTIFICATIONS = 30
HOLD_AT = 10  # the receiver holds this delivery until the test has killed its sender
LEASE = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 7403 AND granted"
CONNECTED = "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"


class Receiver(ThreadingHTTPServer):
    """The operators' alerting endpoint: counts deliveries per notification id."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.held = threading.Event()
        self.release = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/alerts"


class Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with self.server.lock:
            self.server.counts[self.headers.get(outbox.HEADER, "?")] += 1
            hold = sum(self.server.counts.values()) == HOLD_AT
        if hold:
            self.server.held.set()
            self.server.release.wait(timeout=30)
        try:
            self.send_response(200)
            self.end_headers()
        except OSError:
            pass  # its sender was killed meanwhile

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()


def indexer_process(stack_settings: StackSettings, url: str, *args: str) -> subprocess.Popen:
    env = service(load_context(stack_settings), "indexer").env()
    return subprocess.Popen(
        [sys.executable, "-m", "indexer", *args],
        env={**env, "INDEXER_ALERT_WEBHOOK_URL": url, "PATH": os.environ.get("PATH", "/bin")},
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def dsn(stack_settings: StackSettings) -> str:
    return load_context(stack_settings).pg_dsn("indexer", "indexer", "db_indexer")


def count(db: psycopg.Connection, sql: str, *params: object) -> int:
    return int(db.execute(sql, params).fetchone()[0])  # type: ignore[index]


def test_two_deliverers_one_killed_mid_post_every_notification_arrives(
    stack: StackClient, stack_settings: StackSettings, receiver: Receiver
) -> None:
    tag = secrets.token_hex(4)
    workers: list[subprocess.Popen] = []
    with psycopg.connect(dsn(stack_settings), autocommit=True) as db:
        try:
            workers.append(indexer_process(stack_settings, receiver.url, *DELIVER))
            eventually(lambda: count(db, LEASE) == 1, what="the first deliverer holds the lease")
            workers.append(indexer_process(stack_settings, receiver.url, *DELIVER))
            eventually(
                lambda: count(db, CONNECTED, "imgcloud-outbox") == 2,
                what="the second deliverer connected",
            )
            engine = create_engine(dsn(stack_settings).replace("://", "+psycopg://", 1))
            with Session(engine) as session, session.begin():
                for n in range(NOTIFICATIONS):
                    outbox.enqueue(session, "test", {"alert_id": n, "tag": tag})
            engine.dispose()
            ids = [
                str(r[0])
                for r in db.execute(
                    "SELECT id FROM notification_outbox WHERE payload->>'tag' = %s", (tag,)
                )
            ]
            assert len(ids) == NOTIFICATIONS
            assert receiver.held.wait(timeout=30), "the holder delivered too few"
            workers[0].kill()  # the lease holder, in the middle of a POST
            workers[0].wait(timeout=10)
            receiver.release.set()

            def all_delivered() -> bool:
                missing = [i for i in ids if receiver.counts[i] == 0]
                assert not missing, f"not delivered: {missing}"
                return True

            eventually(all_delivered, what="every notification delivered at least once")
            eventually(
                lambda: (
                    count(
                        db,
                        "SELECT count(*) FROM notification_outbox "
                        "WHERE payload->>'tag' = %s AND delivered_at IS NULL",
                        tag,
                    )
                    == 0
                ),
                what="delivered notifications marked delivered",
            )
        finally:
            for worker in workers:
                if worker.poll() is None:
                    os.killpg(worker.pid, signal.SIGTERM)
                    worker.communicate(timeout=30)
    # the one the killed holder was posting went out again, from the other worker
    assert sorted(receiver.counts[i] for i in ids)[-1] == 2
    assert sum(receiver.counts[i] for i in ids) == NOTIFICATIONS + 1


DELIVER = ("outbox", "deliver", "--every", "0.2")


def test_serve_stops_its_loops_and_waits_for_them(
    stack: StackClient, stack_settings: StackSettings, receiver: Receiver, tmp_path: Path
) -> None:
    # in uvicorn's place: a SIGTERM ends it cleanly, as it does uvicorn (once its handler
    # is in place: the file says so; a SIGTERM before it would end it with -15)
    ready = tmp_path / "child-ready"
    quits = "import signal, sys; signal.signal(signal.SIGTERM, lambda *_: sys.exit(0)); "
    child = [sys.executable, "-c", quits + f"open({str(ready)!r}, 'w').close(); signal.pause()"]
    with psycopg.connect(dsn(stack_settings), autocommit=True) as db:
        sealers = count(db, CONNECTED, "imgcloud-audit-sealer")
        served = indexer_process(stack_settings, receiver.url, "serve", "--", *child)
        try:
            eventually(
                lambda: (
                    count(db, CONNECTED, "imgcloud-audit-sealer") == sealers + 1
                    and count(db, CONNECTED, "imgcloud-outbox") == 1
                    and ready.exists()
                ),
                what="serve started its sealer, its deliverer and its server",
            )
        finally:
            os.killpg(served.pid, signal.SIGTERM)  # as the launcher stops it
            out, _ = served.communicate(timeout=45)
        assert served.returncode == 0, out
        assert "audit sealer stopped" in out and "outbox deliverer stopped" in out, out
        assert count(db, CONNECTED, "imgcloud-audit-sealer") == sealers
        assert count(db, CONNECTED, "imgcloud-outbox") == 0
