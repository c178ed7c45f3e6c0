"""The regional platform is down: master-index requests stay queued in PostgreSQL, back
off, and the master index appears once the platform answers. Real PostgreSQL (the stack's
indexer database) and a real HTTP platform on loopback speaking the documented contract."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.orm import sessionmaker

from deploy.samples.records import exam_record, patient_record
from deploy.samples.studies import make_study
from deploy.stack.client import StackClient
from deploy.stack.launcher import load_context, start_service, stop_service
from deploy.stack.settings import StackSettings
from indexer.security.pii import PiiCipher
from indexer.services.platform import HttpPlatform, MasterIndexQueue

from .fresh import fresh_seed


class Platform(BaseHTTPRequestHandler):
    up: ClassVar[bool] = False
    calls: ClassVar[list[dict]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        Platform.calls.append(body)
        if not Platform.up or self.path != "/mpi/master-index/batch":
            self.send_response(503)
            self.end_headers()
            return
        ids = [f"PLAT-{r['institution_code']}-{r['exam_no']}" for r in body["requests"]]
        payload = json.dumps({"master_index_ids": ids}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def platform_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Platform)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/mpi"
    finally:
        server.shutdown()


def test_master_index_waits_for_the_platform_then_appears(
    stack: StackClient, stack_settings: StackSettings, platform_url: str
) -> None:
    study = make_study(fresh_seed(), "CT", instances=1, institution_code="H0001")
    token = stack.password_token(stack["DEMO_ADMIN_USER"], stack["DEMO_ADMIN_PASSWORD"])
    with stack.gateway(token["access_token"]) as api:
        base = "/api/v1/institutions/H0001"
        assert api.put(
            f"{base}/patients/{study.patient.mrn}", json=patient_record(study)
        ).is_success
        assert api.put(f"{base}/exams/{study.exam.exam_no}", json=exam_record(study)).is_success
    ctx = load_context(stack_settings)
    dsn = ctx.pg_dsn("indexer", "indexer", "db_indexer")
    engine = create_engine(dsn.replace("postgresql://", "postgresql+psycopg://", 1))
    sessions = sessionmaker(engine)
    pii = PiiCipher.from_file(ctx.state / "keys" / "indexer-pii.json")
    stop_service(ctx, "indexer")  # its own worker (built-in platform) must not race this one
    try:
        with engine.begin() as db:
            exam_id = db.execute(
                text(
                    "UPDATE exams SET master_index_id = NULL WHERE exam_no = :no "
                    "AND institution_code = 'H0001' RETURNING id"
                ),
                {"no": study.exam.exam_no},
            ).scalar_one()
            db.execute(text("DELETE FROM platform_requests"))
            db.execute(
                text("INSERT INTO platform_requests (exam_id) VALUES (:id)"), {"id": exam_id}
            )
        queue = MasterIndexQueue(sessions, HttpPlatform(platform_url, 5), pii, retry_max_s=60)
        Platform.up, Platform.calls = False, []
        assert queue.run_once() == 0  # platform down
        with engine.connect() as db:
            waiting = db.execute(
                text(
                    "SELECT attempts, last_error, next_attempt_at > now() FROM platform_requests "
                    "WHERE exam_id = :id"
                ),
                {"id": exam_id},
            ).one()
            assert waiting[0] == 1 and "503" in waiting[1] and waiting[2] is True
            assert (
                db.execute(
                    text("SELECT master_index_id FROM exams WHERE id = :id"), {"id": exam_id}
                ).scalar_one()
                is None
            )
        assert queue.run_once() == 0  # backing off: the platform is not even asked
        assert len(Platform.calls) == 1
        # the platform received what the contract says, the ID number in the body
        sent = Platform.calls[0]["requests"][0]
        assert sent == {
            "institution_code": "H0001",
            "national_id": study.patient.national_id,
            "exam_no": study.exam.exam_no,
        }
        Platform.up = True
        with engine.begin() as db:  # time passes: the retry is due
            db.execute(text("UPDATE platform_requests SET next_attempt_at = now()"))
        assert queue.run_once() == 1
        with engine.connect() as db:
            master = db.execute(
                text("SELECT master_index_id FROM exams WHERE id = :id"), {"id": exam_id}
            ).scalar_one()
            left = db.execute(text("SELECT COUNT(*) FROM platform_requests")).scalar_one()
        assert master == f"PLAT-H0001-{study.exam.exam_no}" and left == 0
    finally:
        engine.dispose()
        start_service(ctx, "indexer")
