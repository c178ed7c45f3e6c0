"""The data-at-rest inventory in docs/security.md matches the running stack: every file of
the state directory belongs to a row of the inventory, with its owner and at most its
modes; every listed database column exists, the patient tables have no unlisted column,
and what the inventory calls encrypted or HMAC does not hold the clear value."""

from __future__ import annotations

import fnmatch
import json
import os
import pwd
import re
import stat
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from deploy.samples.records import exam_record, patient_record
from deploy.samples.studies import make_study
from deploy.stack.client import StackClient
from deploy.stack.settings import REPO_ROOT

from .fresh import fresh_seed

SECURITY_MD = REPO_ROOT / "docs" / "security.md"
ALWAYS_THERE = ("pg/data", "edge-*/storage/index", "seaweedfs/data", "secrets.json", "keys", "log")
COMPLETE_TABLES = {("indexer", "patients"), ("indexer", "persons")}


def _table(marker: str) -> list[list[str]]:
    text = SECURITY_MD.read_text()
    block = re.search(rf"<!-- {marker} -->\n(.*?)<!-- /{marker} -->", text, re.S)
    assert block, f"docs/security.md has no {marker} table"
    rows = [line for line in block.group(1).splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[2:]]


@dataclass(frozen=True)
class FileRow:
    pattern: str
    owner: str
    files: int | None
    dirs: int | None

    def matches(self, relative: str) -> bool:
        return relative == self.pattern or fnmatch.fnmatch(relative, self.pattern)

    def covers(self, relative: str) -> bool:
        """This path, or anything below it."""
        if self.matches(relative):
            return True
        parts = relative.split("/")
        return any(self.matches("/".join(parts[:i])) for i in range(1, len(parts)))


def _file_rows() -> list[FileRow]:
    rows = []
    for cells in _table("data-at-rest:files"):
        mode = {k: None if v == "-" else int(v, 8) for k, v in zip("fd", cells[3:5], strict=True)}
        for pattern in re.findall(r"`([^`]+)`", cells[1]):
            rows.append(FileRow(pattern, cells[2], mode["f"], mode["d"]))
    return rows


def _owner(uid: int) -> str:
    """A user's name, or its number when it has none (the Orthancs' service uid 10042)."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _most_specific(rows: list[FileRow], relative: str) -> FileRow | None:
    """The row whose pattern matches the deepest ancestor (or the path itself)."""
    parts = relative.split("/")
    for depth in range(len(parts), 0, -1):
        candidate = "/".join(parts[:depth])
        found = [r for r in rows if r.matches(candidate)]
        if found:
            return max(found, key=lambda r: len(r.pattern))
    return None


def test_the_inventory_lists_the_stores_of_the_issue() -> None:
    paths = {row.pattern for row in _file_rows()}
    assert {"pg", "edge-*/storage", "edge-*/objects", "seaweedfs", "secrets.json", "keys"} <= paths
    assert {"log", "gateway/logs"} <= paths


def test_every_file_of_the_stack_matches_its_row(stack: StackClient) -> None:
    state = Path(stack["STACK_DIR"])
    rows = _file_rows()
    for pattern in ALWAYS_THERE:  # the others appear with the first study or volume
        assert list(state.glob(pattern)), f"no {pattern} in the stack"
    unlisted, wrong = [], {}
    for root, dirs, files in os.walk(state):
        dirs[:] = [d for d in dirs if not (Path(root, d) / "ports.json").exists()]
        for name in [".", *dirs, *files] if root == str(state) else [*dirs, *files]:
            path = Path(root, name)
            relative = "." if path == state else str(path.relative_to(state))
            info = path.lstat()
            if stat.S_ISSOCK(info.st_mode) or stat.S_ISLNK(info.st_mode):
                continue
            row = _most_specific(rows, relative)
            if row is None:
                unlisted.append(relative)
                continue
            allowed = row.dirs if stat.S_ISDIR(info.st_mode) else row.files
            mode = stat.S_IMODE(info.st_mode)
            owner = _owner(info.st_uid)
            if allowed is None or mode & ~allowed or owner != row.owner:
                wrong[relative] = f"{owner} {oct(mode)} (row {row.pattern})"
    assert unlisted == []
    assert wrong == {}


@pytest.fixture(scope="module")
def registered(stack: StackClient):
    """A sample patient the indexer holds (registered as hospital A's edge does)."""
    study = make_study(fresh_seed(), "CT", instances=1, institution_code="H0001")
    token = stack.gateway_account_token("H0001")
    base = "/api/v1/institutions/H0001"
    with stack.gateway(token) as api:
        put = api.put(f"{base}/patients/{study.patient.mrn}", json=patient_record(study))
        assert put.status_code in (200, 201), put.text
        put = api.put(f"{base}/exams/{study.exam.exam_no}", json=exam_record(study))
        assert put.status_code in (200, 201), put.text
    return study


def _connect(stack: StackClient, database: str) -> psycopg.Connection:
    secrets = json.loads((Path(stack["STACK_DIR"]) / "secrets.json").read_text())
    return psycopg.connect(
        host="127.0.0.1",
        port=int(stack["POSTGRES_PORT"]),
        user="postgres",
        password=secrets["postgres_superuser"],
        dbname=database,
        connect_timeout=5,
    )


def _columns() -> dict[tuple[str, str], dict[str, str]]:
    listed: dict[tuple[str, str], dict[str, str]] = {}
    for database, table, column, _holds, form in _table("data-at-rest:columns"):
        listed.setdefault((database, table), {})[column] = form
    return listed


def test_every_listed_column_exists_and_patient_tables_have_no_other(
    stack: StackClient, registered
) -> None:
    missing, unlisted = [], []
    by_database: dict[str, list[tuple[str, dict[str, str]]]] = {}
    for (database, table), columns in _columns().items():
        by_database.setdefault(database, []).append((table, columns))
    for database, tables in by_database.items():
        with _connect(stack, database) as conn:
            for table, columns in tables:
                live = {
                    row[0]
                    for row in conn.execute(
                        "SELECT column_name FROM information_schema.columns "
                        "WHERE table_schema = 'public' AND table_name = %s",
                        (table,),
                    )
                }
                missing += [f"{database}.{table}.{c}" for c in columns if c not in live]
                if (database, table) in COMPLETE_TABLES:
                    unlisted += [f"{database}.{table}.{c}" for c in sorted(live - set(columns))]
    assert missing == []
    assert unlisted == []


def test_sealed_columns_do_not_hold_the_clear_values(stack: StackClient, registered) -> None:
    patient = registered.patient
    sealed = {
        c
        for (db, t), cols in _columns().items()
        if (db, t) in COMPLETE_TABLES
        for c, form in cols.items()
        if form in ("encrypted", "hmac")
    }
    with _connect(stack, "indexer") as conn:
        row = conn.execute(
            "SELECT p.name_enc, p.phone_enc, p.phone_hmac, s.national_id_enc, "
            "s.national_id_hmac, p.mrn, p.birth_date FROM patients p "
            "JOIN persons s ON s.person_id = p.person_id "
            "WHERE p.institution_code = 'H0001' AND p.mrn = %s",
            (patient.mrn,),
        ).fetchone()
    assert row is not None
    assert {"name_enc", "phone_enc", "phone_hmac", "national_id_enc", "national_id_hmac"} <= sealed
    clear = [patient.name_hanzi, patient.phone, patient.national_id, patient.national_id[-4:]]
    for value in row[:5]:
        blob = bytes(value)
        assert not any(c.encode() in blob for c in clear)
    # What the inventory says is clear is indeed clear (so the decision is visible).
    assert row[5] == patient.mrn and row[6] == patient.birth_date
