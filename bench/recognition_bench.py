"""互认 statistics at scale (#16): 1,000,000 recognition decisions in the stack's
PostgreSQL, and the statistics query's latency (p50, p99 of N runs) as the API runs it.

The decisions are written with COPY into a scratch schema (`recognition_bench`, a copy
of the real tables' columns and indexes, dropped afterwards unless --keep), the rollup
built from them with one GROUP BY per side (the state the per-decision upkeep of
services/recognition.record reaches; the bench also records --writes decisions through
record() itself and checks the rollup still counts every decision once). Then
services/recognition_stats.statistics runs N times per variant: the regulator's whole
view by exam institution and by deciding institution, one modality over 12 months, and a
hospital admin's view of its own institution.

Fair layout (--layout fair, the default on 2+ CPUs): PostgreSQL (the postmaster and
every backend) on CPU 0, this client on the others, restored afterwards.

    make up && .venv/bin/python -m bench.recognition_bench [--decisions 1000000] [--runs 200]
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import io
import os
import random
import statistics as pystats
import time
from pathlib import Path

import psycopg
from psycopg_pool import AsyncConnectionPool

from deploy.stack.launcher import load_context
from deploy.stack.settings import StackSettings
from indexer.services import recognition, recognition_stats

SCHEMA = "recognition_bench"
INSTITUTIONS = [f"H{i:04d}" for i in range(1, 21)]  # 20 hospitals
MODALITIES = ("CT", "MR", "DX", "US", "MG", "PT")
MONTHS = [dt.date(2025 + (m // 12), m % 12 + 1, 1) for m in range(24)]  # 2025-01 .. 2026-12
OUTCOMES = ["recognised"] * 14 + [c for c in recognition.REASONS]  # ~70 % recognised


def rows(count: int, seed: int = 16) -> io.StringIO:
    """`count` decisions as COPY text, deterministic for a seed."""
    rng = random.Random(seed)  # noqa: S311 - bench data, not secrets
    out = io.StringIO()
    for i in range(1, count + 1):
        exam_inst, deciding = rng.sample(INSTITUTIONS, 2)
        outcome = rng.choice(OUTCOMES)
        month = rng.choice(MONTHS)
        text = "bench" if outcome == "other" else "\\N"
        out.write(
            f"{i}\t{i}\t{exam_inst}\t{rng.choice(MODALITIES)}\t{deciding}\tbench-user\t"
            f"{'t' if outcome == 'recognised' else 'f'}\t{outcome}\t{text}\tbench\t"
            f"{month.isoformat()}\t{month.isoformat()} 10:00:00+08\n"
        )
    out.seek(0)
    return out


COLUMNS = (
    "id, exam_id, exam_institution, modality, deciding_institution, decided_by, recognised, "
    "outcome, reason_text, purpose, period, decided_at"
)
ROLLUP_FROM_DECISIONS = f"""
INSERT INTO {SCHEMA}.recognition_rollup
SELECT period, 'exam', exam_institution, modality, outcome, count(*)
FROM {SCHEMA}.recognition_decisions GROUP BY period, exam_institution, modality, outcome
UNION ALL
SELECT period, 'deciding', deciding_institution, modality, outcome, count(*)
FROM {SCHEMA}.recognition_decisions GROUP BY period, deciding_institution, modality, outcome
"""  # noqa: S608 - constant names


def load(dsn: str, count: int) -> dict[str, float]:
    timings: dict[str, float] = {}
    with psycopg.connect(dsn, autocommit=True) as db:
        db.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        db.execute(f"CREATE SCHEMA {SCHEMA}")
        for table in ("recognition_decisions", "recognition_rollup"):
            db.execute(
                f"CREATE TABLE {SCHEMA}.{table} (LIKE public.{table} "
                "INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES)"
            )
        # its own id sequence: the copied default would draw on the real table's
        db.execute(f"CREATE SEQUENCE {SCHEMA}.decision_ids START {count + 1}")
        db.execute(
            f"ALTER TABLE {SCHEMA}.recognition_decisions ALTER COLUMN id"
            f" SET DEFAULT nextval('{SCHEMA}.decision_ids')"
        )
        data = rows(count)
        start = time.perf_counter()
        with db.cursor().copy(
            f"COPY {SCHEMA}.recognition_decisions ({COLUMNS}) FROM STDIN"
        ) as copy:
            while chunk := data.read(1 << 20):
                copy.write(chunk)
        timings["copy_s"] = time.perf_counter() - start
        start = time.perf_counter()
        db.execute(ROLLUP_FROM_DECISIONS)
        timings["rollup_s"] = time.perf_counter() - start
        db.execute(f"ANALYZE {SCHEMA}.recognition_decisions")
        db.execute(f"ANALYZE {SCHEMA}.recognition_rollup")
        (timings["rollup_rows"],) = db.execute(
            f"SELECT count(*) FROM {SCHEMA}.recognition_rollup"  # noqa: S608
        ).fetchone() or (0,)
    return timings


def postgres_pids(state: Path) -> list[int]:
    """The postmaster (postmaster.pid's first line) and its children (the backends)."""
    first = int((state / "pg" / "data" / "postmaster.pid").read_text().split()[0])
    children = Path(f"/proc/{first}/task/{first}/children").read_text().split()
    return [first, *map(int, children)]


def pin(pids: list[int], cpus: set[int]) -> None:
    for pid in pids:
        try:
            os.sched_setaffinity(pid, cpus)
        except (ProcessLookupError, PermissionError):
            continue


VARIANTS = {
    "regulator, by exam institution": recognition_stats.Query(None, "exam"),
    "regulator, by deciding institution": recognition_stats.Query(None, "deciding"),
    "regulator, CT, 12 months": recognition_stats.Query(
        None, "exam", None, "CT", dt.date(2026, 1, 1), dt.date(2026, 12, 1)
    ),
    "hospital admin H0003": recognition_stats.Query("H0003", "exam"),
}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def say(line: str) -> None:
    print(line, flush=True)


async def measure(dsn: str, runs: int, writes: int) -> None:
    pool = AsyncConnectionPool(
        dsn,
        min_size=2,
        max_size=4,
        open=False,
        kwargs={"options": f"-c search_path={SCHEMA},public"},
    )
    await pool.open()
    try:
        # the institutions' names come from public.institutions (none for the bench's codes)
        every: list[float] = []
        for name, query in VARIANTS.items():
            await recognition_stats.statistics(pool, query)  # prepared, cached
            took = []
            for _ in range(runs):
                start = time.perf_counter()
                answer = await recognition_stats.statistics(pool, query)
                took.append((time.perf_counter() - start) * 1000)
            every += took
            say(
                f"{name:38s} p50 {pystats.median(took):7.1f} ms  p99 {percentile(took, 0.99):7.1f}"
                f" ms  max {max(took):7.1f} ms  ({len(answer['rows'])} lines,"
                f" {answer['totals']['decisions']} decisions)"
            )
        say(
            f"{'all variants':38s} p50 {pystats.median(every):7.1f} ms  p99 "
            f"{percentile(every, 0.99):7.1f} ms  ({len(every)} runs)"
        )
        # the write path: record() on new and replaced decisions, the rollup kept exact
        took = []
        for i in range(writes):
            exam = recognition.ExamFacts(10_000_000 + i % (writes // 2 or 1), "H0001", "CT")
            decided = recognition.choice(i % 3 != 0, None if i % 3 else "too-old", None)
            start = time.perf_counter()
            await recognition.record(pool, exam, "H0002", "bench-user", decided, "bench")
            took.append((time.perf_counter() - start) * 1000)
        if took:
            say(
                f"{'record() (new and replaced)':38s} p50 {pystats.median(took):7.1f} ms  p99 "
                f"{percentile(took, 0.99):7.1f} ms  ({len(took)} decisions)"
            )
        async with pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT (SELECT count(*) FROM recognition_decisions) * 2,"
                " (SELECT sum(decisions) FROM recognition_rollup)"
            )
            counted = await cursor.fetchone()
        assert counted is not None and counted[0] == counted[1], counted
        say(f"rollup check: {counted[0] // 2} decisions, twice that {counted[1]} in the rollup")
    finally:
        await pool.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--decisions", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=200, help="per variant")
    parser.add_argument("--writes", type=int, default=400)
    parser.add_argument("--layout", choices=("fair", "shared"), default="fair")
    parser.add_argument("--keep", action="store_true", help="keep the scratch schema")
    args = parser.parse_args()
    ctx = load_context(StackSettings.from_env())
    dsn = ctx.pg_dsn("indexer", "indexer", "db_indexer")
    cpus = os.sched_getaffinity(0)
    loaded = load(dsn, args.decisions)
    print(
        f"loaded {args.decisions} decisions with COPY in {loaded['copy_s']:.1f} s; rollup "
        f"{int(loaded['rollup_rows'])} rows in {loaded['rollup_s']:.1f} s"
    )
    fair = args.layout == "fair" and len(cpus) >= 2
    db_cpu = {min(cpus)}
    layout = f"fair: PostgreSQL on CPU {min(cpus)}, this client on the rest" if fair else "shared"
    try:
        if fair:
            os.sched_setaffinity(0, cpus - db_cpu)
            pin(postgres_pids(ctx.state), db_cpu)  # backends forked later inherit it
        asyncio.run(measure(dsn, args.runs, args.writes))
        print(f"layout: {layout}; {len(cpus)} CPUs")
    finally:
        if fair:
            pin(postgres_pids(ctx.state), cpus)
            os.sched_setaffinity(0, cpus)
        if not args.keep:
            with psycopg.connect(dsn, autocommit=True) as db:
                db.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")


if __name__ == "__main__":
    main()
