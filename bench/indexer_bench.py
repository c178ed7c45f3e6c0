"""Indexer lookups and intake at scale, against Orthanc's own /tools/find as a reference.

With 1,000,000 generated exams in PostgreSQL (250,000 people at 10 institutions, written
once with COPY and kept for later runs), wrk (a separate process) measures:
- master-index resolution   GET  /api/v1/master-index/{id}
- person-level lookup (互认)  POST /api/v1/persons/exams/search (ID number in the body)
- Orthanc's /tools/find by accession number on the central archive, same run (reference;
  Orthanc holds only the studies the stack has received, its count is printed)
and bulk intake (POST .../bulk, patients + exams) in exams per second.

    make up && .venv/bin/python -m bench.indexer_bench [--exams 1000000] [--seconds 20]
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import os
import random
import re
import subprocess
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psycopg

from deploy.stack.client import StackClient
from deploy.stack.launcher import load_context
from deploy.stack.settings import StackSettings
from indexer.security.pii import PiiCipher
from indexer.services import national_id
from indexer.services.platform import BuiltInPlatform

INSTITUTIONS = [f"BN{i:02d}" for i in range(1, 11)]
EXAMS_PER_PERSON = 4
ID_BASE = 10_000_000
MODALITIES = (("CT", "CHEST"), ("MR", "HEAD"), ("DX", "CHEST"), ("CT", "ABDOMEN"))
SAMPLE = 20_000  # keys kept for the load generator

GET_LUA = """
local ids = {}
local token = os.getenv("BENCH_TOKEN")
function init(args)
  for line in io.lines(args[1]) do ids[#ids + 1] = line end
  math.randomseed(os.time() + math.floor(os.clock() * 100000))
end
function request()
  return wrk.format("GET", "/api/v1/master-index/" .. ids[math.random(#ids)],
                    {["Authorization"] = "Bearer " .. token})
end
"""
SEARCH_LUA = """
local ids = {}
local token = os.getenv("BENCH_TOKEN")
function init(args)
  for line in io.lines(args[1]) do ids[#ids + 1] = line end
  math.randomseed(os.time() + math.floor(os.clock() * 100000))
end
function request()
  local body = '{"national_id": "' .. ids[math.random(#ids)] .. '", "purpose": "bench", ' ..
               '"modalities": ["CT", "MR"], "date_from": "2022-01-01"}'
  return wrk.format("POST", "/api/v1/persons/exams/search",
                    {["Authorization"] = "Bearer " .. token,
                     ["Content-Type"] = "application/json"}, body)
end
"""
FIND_LUA = """
local ids = {}
local auth = os.getenv("BENCH_BASIC")
function init(args)
  for line in io.lines(args[1]) do ids[#ids + 1] = line end
end
function request()
  local body = '{"Level": "Study", "Query": {"AccessionNumber": "' ..
               ids[math.random(#ids)] .. '"}}'
  return wrk.format("POST", "/tools/find",
                    {["Authorization"] = "Basic " .. auth,
                     ["Content-Type"] = "application/json"}, body)
end
"""


def person_number(i: int) -> str:
    born = dt.date(1940, 1, 1) + dt.timedelta(days=i % 25_000)
    return national_id.make("530102", born, (i // 25_000) % 1000)  # a region tests never use


def generate(dsn: str, pii: PiiCipher, platform: BuiltInPlatform, exams: int, out: Path) -> None:
    """Write the bench population once (COPY); keep sample keys for the load generator."""
    persons = exams // EXAMS_PER_PERSON
    started = time.monotonic()
    with psycopg.connect(dsn, autocommit=True) as db:
        have = db.execute(
            "SELECT COUNT(*) FROM exams WHERE institution_code = ANY(%s)", (INSTITUTIONS,)
        ).fetchone()[0]  # type: ignore[index]
        if have >= exams and (out / "master_ids.txt").exists():
            print(f"bench population present: {have} exams")
            return
        if have:
            raise SystemExit("a partial bench population exists: `make clean` the stack first")
        for code in INSTITUTIONS:
            db.execute(
                "INSERT INTO institutions (institution_code, name) VALUES (%s, %s) "
                "ON CONFLICT DO NOTHING",
                (code, f"Bench hospital {code}"),
            )
        rng = random.Random(7)  # noqa: S311 - which keys to sample, not a secret
        sample_people = set(rng.sample(range(persons), min(SAMPLE, persons)))
        master_sample, number_sample = [], []
        now = dt.datetime.now(dt.UTC)
        with db.cursor() as cur:
            with cur.copy(
                "COPY persons (person_id, national_id_hmac, national_id_enc, sex, birth_date) "
                "FROM STDIN"
            ) as copy:
                person_ids = []
                for i in range(persons):
                    number = person_number(i)
                    pid = uuid.UUID(int=i + 1)
                    person_ids.append(pid)
                    copy.write_row(
                        (pid, pii.blind_index(number, "national_id"),
                         pii.encrypt(number, "persons.national_id"), national_id.sex(number),
                         national_id.birth_date(number))
                    )  # fmt: skip
                    if i in sample_people:
                        number_sample.append(number)
            with cur.copy(
                "COPY patients (id, institution_code, mrn, person_id, name_enc, sex, "
                "birth_date, content_hash, updated_at) FROM STDIN"
            ) as copy:
                for i in range(persons):
                    number = person_number(i)
                    copy.write_row(
                        (ID_BASE + i, INSTITUTIONS[i % 10], f"P{i:09d}", person_ids[i],
                         pii.encrypt(f"测试{i}", "patients.name"), national_id.sex(number),
                         national_id.birth_date(number), os.urandom(32), now)
                    )  # fmt: skip
            with cur.copy(
                "COPY exams (id, institution_code, exam_no, exam_uid, patient_id, person_id, "
                "master_index_id, modality, body_part, exam_datetime, study_instance_uid, "
                "state, registered_at, content_hash, updated_at) FROM STDIN"
            ) as copy:
                for i in range(persons):
                    code = INSTITUTIONS[i % 10]
                    nos = [f"X{i:09d}{k}" for k in range(EXAMS_PER_PERSON)]
                    ids = platform.issue([(code, person_number(i), no) for no in nos])
                    for k, (no, master) in enumerate(zip(nos, ids, strict=True)):
                        modality, part = MODALITIES[k]
                        when = dt.datetime(2021, 1, 1, tzinfo=dt.UTC) + dt.timedelta(
                            hours=(i * 7 + k * 977) % (5 * 365 * 24)
                        )
                        copy.write_row(
                            (ID_BASE + i * EXAMS_PER_PERSON + k, code, no,
                             uuid.UUID(int=(i << 8) + k + 1), ID_BASE + i, person_ids[i], master,
                             modality, part, when, f"1.2.826.0.1.3680043.10.{i}.{k}", "reported",
                             when, os.urandom(32), now)
                        )  # fmt: skip
                        if i in sample_people and k == 0:
                            master_sample.append(master)
        db.execute("SELECT setval('patients_id_seq', (SELECT MAX(id) FROM patients))")
        db.execute("SELECT setval('exams_id_seq', (SELECT MAX(id) FROM exams))")
        db.execute("ANALYZE")
    out.mkdir(parents=True, exist_ok=True)
    (out / "master_ids.txt").write_text("\n".join(master_sample) + "\n")
    (out / "national_ids.txt").write_text("\n".join(number_sample) + "\n")
    print(f"generated {persons * EXAMS_PER_PERSON} exams in {time.monotonic() - started:.0f} s")


def wrk(
    url: str, script: str, keys: Path, seconds: int, env: dict[str, str], connections: int
) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    done = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", f.name, url,
         "--", str(keys)],
        capture_output=True, text=True, timeout=seconds + 60, env=os.environ | env, check=True,
    )  # fmt: skip
    os.unlink(f.name)
    text = done.stdout

    def ms(label: str) -> float:
        match = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
        if not match:
            raise ValueError(f"no {label}% in wrk output:\n{text}")
        value, unit = float(match[1]), match[2]
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", text)[1]),  # type: ignore[index]
        "p50_ms": ms("50"),
        "p99_ms": ms("99"),
        "errors": int(non2xx[1]) if non2xx else 0,
    }


def bulk_rate(api: httpx.Client, requests: int, per_request: int) -> dict[str, float]:
    """`requests` bulk requests, two in flight (one per indexer worker)."""
    run = random.randrange(10**8)  # noqa: S311 - fresh keys per run
    bodies = []
    for r in range(requests):
        patients, exams = [], []
        for j in range(per_request):
            n = r * per_request + j
            number = national_id.make(
                "310104", dt.date(1960, 1, 1) + dt.timedelta(days=n % 20000), n % 1000
            )
            mrn = f"B{run}-{n}"
            patients.append({"mrn": mrn, "name": "测试", "national_id": number, "sex": "U"})
            exams.append(
                {"exam_no": f"BX{run}-{n}", "patient_mrn": mrn, "exam_uid": str(uuid.uuid4()),
                 "modality": "CT", "body_part": "CHEST",
                 "exam_datetime": "2026-11-02T08:00:00+08:00"}
            )  # fmt: skip
        bodies.append(json.dumps({"patients": patients, "exams": exams}).encode())

    def post(body: bytes) -> None:
        answer = api.post(
            "/api/v1/institutions/BN01/bulk",
            content=body,
            headers={"Content-Type": "application/json"},
        )
        answer.raise_for_status()
        counts = answer.json()["counts"]
        if counts.get("error"):
            raise SystemExit(f"bulk intake refused records: {counts}")

    started = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(post, bodies))
    elapsed = time.monotonic() - started
    total = requests * per_request
    return {"exams": total, "seconds": round(elapsed, 2), "exams_per_s": round(total / elapsed)}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.indexer_bench", description=__doc__)
    parser.add_argument("--exams", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument(
        "--connections", type=int, default=4, help="wrk connections (requests in flight)"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    settings = StackSettings.from_env()
    ctx = load_context(settings)
    stack = StackClient.from_file(settings.stack_env)
    pii = PiiCipher.from_file(ctx.state / "keys" / "indexer-pii.json")
    platform = BuiltInPlatform(ctx.secrets["indexer_platform_key"].encode())
    keys = ctx.state / "bench-indexer"
    generate(ctx.pg_dsn("indexer", "indexer", "db_indexer"), pii, platform, args.exams, keys)

    def token() -> str:
        answer = stack.password_token(stack["DEMO_ADMIN_USER"], stack["DEMO_ADMIN_PASSWORD"])
        return str(answer["access_token"])

    indexer = stack["INDEXER_URL"]
    with psycopg.connect(ctx.pg_dsn("indexer", "indexer", "db_indexer")) as db:
        count = db.execute("SELECT COUNT(*) FROM exams").fetchone()[0]  # type: ignore[index]
    result: dict[str, Any] = {"exams_in_db": count}
    result["master_index"] = wrk(
        indexer,
        GET_LUA,
        keys / "master_ids.txt",
        args.seconds,
        {"BENCH_TOKEN": token()},
        args.connections,
    )
    result["person_search"] = wrk(
        indexer,
        SEARCH_LUA,
        keys / "national_ids.txt",
        args.seconds,
        {"BENCH_TOKEN": token()},
        args.connections,
    )
    with stack.orthanc("CENTRAL_ORTHANC") as central:
        studies = central.get("/statistics").json()["CountStudies"]
        accessions = [
            s["MainDicomTags"].get("AccessionNumber", "")
            for s in central.get("/studies?expand&since=0&limit=2000").json()
        ]
    accession_file = keys / "accessions.txt"
    accession_file.write_text("\n".join(a for a in accessions if a) + "\n")
    basic = base64.b64encode(
        f"{stack['CENTRAL_ORTHANC_USER']}:{stack['CENTRAL_ORTHANC_PASSWORD']}".encode()
    ).decode()
    result["orthanc_tools_find"] = wrk(
        stack["CENTRAL_ORTHANC_URL"],
        FIND_LUA,
        accession_file,
        args.seconds,
        {"BENCH_BASIC": basic},
        args.connections,
    ) | {"studies_in_orthanc": studies}
    with httpx.Client(
        base_url=indexer, timeout=120, headers={"Authorization": f"Bearer {token()}"}
    ) as api:
        result["bulk"] = bulk_rate(api, requests=10, per_request=2000)
    if args.json:
        print(json.dumps(result, indent=1))
        return
    print(f"indexer with {result['exams_in_db']:,} exams in PostgreSQL; wrk -t2 "
          f"-c{args.connections} -d{args.seconds}s, "
          "tokens checked on every request")  # fmt: skip
    print(f"{'':<34}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}")
    for key, label in (
        ("master_index", "master-index resolution"),
        ("person_search", "person-level lookup (互认)"),
        ("orthanc_tools_find", f"Orthanc /tools/find ({studies} studies)"),
    ):
        r = result[key]
        print(f"{label:<34}{r['rps']:>9.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['errors']:>9}")
    b = result["bulk"]
    print(f"bulk intake: {b['exams']} exams (+ their patients) in {b['seconds']} s = "
          f"{b['exams_per_s']} exams/s")  # fmt: skip


if __name__ == "__main__":
    main()
