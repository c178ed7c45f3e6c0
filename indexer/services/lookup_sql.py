"""The two hot reads, each one SQL statement on an async connection pool: master-index
resolution and the person-level lookup. They answer JSON built directly from the row (no
ORM, no second validation pass): these are the requests every viewer and 互认 query makes.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool
from sqlalchemy import Integer, String, bindparam, func, literal_column, null
from sqlalchemy.dialects.postgresql import psycopg as pg_psycopg

from ..models import grant as grant_model
from ..schemas import PersonSearch
from .lifecycle import TIME_COLUMN
from .links import study_links

MASTER_SQL = """
SELECT e.institution_code, e.exam_no, e.exam_uid, p.mrn AS patient_mrn, e.master_index_id,
       e.modality, e.body_part, e.exam_type, e.method, e.device, e.requesting_department,
       e.exam_datetime, e.state, e.registered_at, e.images_arriving_at, e.images_complete_at,
       e.reported_at, e.report_revised_at, e.study_instance_uid, e.series_count,
       e.instance_count, r.version, r.findings, r.impression, r.author, r.reviewer,
       r.approved_at, r.created_at AS report_created_at
FROM exams e
JOIN patients p ON p.id = e.patient_id
LEFT JOIN LATERAL (
    SELECT * FROM reports WHERE exam_id = e.id ORDER BY version DESC LIMIT 1
) r ON true
WHERE e.master_index_id = %s
"""

# What both person-level reads answer per exam, and the filters of a PersonSearch they share
# (constant text: every value is a bound parameter).
PERSON_COLUMNS = """
SELECT e.master_index_id, e.institution_code, i.name AS institution_name, e.exam_no,
       e.modality, e.body_part, e.exam_datetime, e.state, e.study_instance_uid,
       EXISTS (SELECT 1 FROM reports r WHERE r.exam_id = e.id) AS has_report
"""
SEARCH_FILTERS = """
  AND (%(modalities)s::text[] IS NULL OR e.modality = ANY(%(modalities)s::text[]))
  AND (%(body_part)s::text IS NULL OR upper(e.body_part) = upper(%(body_part)s::text))
  AND (%(start)s::timestamptz IS NULL OR e.exam_datetime >= %(start)s::timestamptz)
  AND (%(end)s::timestamptz IS NULL OR e.exam_datetime < %(end)s::timestamptz)
ORDER BY e.exam_datetime DESC
LIMIT %(limit)s
"""
PERSON_SQL = (
    PERSON_COLUMNS
    + """FROM persons s
JOIN exams e ON e.person_id = s.person_id
JOIN institutions i ON i.institution_code = e.institution_code
WHERE s.national_id_hmac = %(hmac)s"""
    + SEARCH_FILTERS
)
# By name and birth date (blind index, security/pii.py name_digests): the matching
# patients' exams, and those of the persons they are (national ID) at other institutions.
# `institution` (a family-name search) keeps patients and exams to the caller's own.
NAME_MATCHES = """
WITH matched AS (
    SELECT p.id, p.person_id FROM patient_name_index n
    JOIN patients p ON p.id = n.patient_id
    WHERE n.digest = %(hmac)s AND n.kind = %(kind)s
      AND (%(institution)s::text IS NULL OR p.institution_code = %(institution)s::text)
)"""
PERSON_BY_NAME_SQL = (
    NAME_MATCHES  # noqa: S608 - constant fragments; every value is a bound parameter
    + PERSON_COLUMNS
    + """FROM exams e
JOIN institutions i ON i.institution_code = e.institution_code
WHERE (e.patient_id IN (SELECT id FROM matched)
       OR e.person_id IN (SELECT person_id FROM matched WHERE person_id IS NOT NULL))
  AND (%(institution)s::text IS NULL OR e.institution_code = %(institution)s::text)"""
    + SEARCH_FILTERS
)


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _links(gateway_url: str, uid: str | None) -> dict[str, str] | None:
    links = study_links(gateway_url, uid)
    return links.model_dump() if links is not None else None


async def master_index(
    pool: AsyncConnectionPool, gateway_url: str, master_index_id: str
) -> dict[str, Any] | None:
    async with pool.connection() as conn:
        cursor = await conn.cursor(row_factory=dict_row).execute(
            MASTER_SQL, (master_index_id,), prepare=True
        )
        row = await cursor.fetchone()
    if row is None:
        return None
    exam = {
        key: row[key]
        for key in (
            "institution_code", "exam_no", "patient_mrn", "master_index_id", "modality",
            "body_part", "exam_type", "method", "device", "requesting_department", "state",
            "study_instance_uid", "series_count", "instance_count",
        )
    }  # fmt: skip
    exam["exam_uid"] = str(row["exam_uid"])
    exam["exam_datetime"] = _iso(row["exam_datetime"])
    exam["state_times"] = {state: _iso(row[column]) for state, column in TIME_COLUMN.items()}
    exam["links"] = _links(gateway_url, row["study_instance_uid"])
    report = None
    if row["version"] is not None:
        report = {
            "institution_code": row["institution_code"],
            "exam_no": row["exam_no"],
            "version": row["version"],
            "findings": row["findings"],
            "impression": row["impression"],
            "author": row["author"],
            "reviewer": row["reviewer"],
            "approved_at": _iso(row["approved_at"]),
            "created_at": _iso(row["report_created_at"]),
        }
    return {"master_index_id": master_index_id, "exam": exam, "report": report}


async def person_exams(
    pool: AsyncConnectionPool,
    gateway_url: str,
    search: PersonSearch,
    digest: bytes,
    by_name: tuple[str, str | None] | None = None,
) -> dict[str, Any]:
    """Exams by national ID digest, or with `by_name` = (digest kind, institution or
    None) by a name digest."""
    start = dt.datetime.combine(search.date_from, dt.time(), dt.UTC) if search.date_from else None
    end = (
        dt.datetime.combine(search.date_to + dt.timedelta(days=1), dt.time(), dt.UTC)
        if search.date_to
        else None
    )
    params = {
        "hmac": digest,
        "modalities": search.modalities or None,
        "body_part": search.body_part,
        "start": start,
        "end": end,
        "limit": search.limit,
    }
    sql = PERSON_SQL
    if by_name is not None:
        sql = PERSON_BY_NAME_SQL
        params.update(kind=by_name[0], institution=by_name[1])
    async with pool.connection() as conn:
        cursor = await conn.cursor(row_factory=dict_row).execute(sql, params, prepare=True)
        rows = await cursor.fetchall()
    exams = []
    for row in rows:
        item = dict(row)
        item["exam_datetime"] = _iso(row["exam_datetime"])
        item["links"] = _links(gateway_url, row["study_instance_uid"])
        exams.append(item)
    return {"exams": exams}


STUDY_INSTITUTION_SQL = """
SELECT institution_code FROM image_studies WHERE study_instance_uid = %(uid)s
UNION ALL
SELECT institution_code FROM exams WHERE study_instance_uid = %(uid)s
LIMIT 1
"""


async def study_institution(pool: AsyncConnectionPool, study_instance_uid: str) -> str | None:
    """Which institution a study belongs to, as the indexer knows it (None: unknown)."""
    async with pool.connection() as conn:
        cursor = await conn.execute(
            STUDY_INSTITUTION_SQL, {"uid": study_instance_uid}, prepare=True
        )
        row = await cursor.fetchone()
    return str(row[0]) if row else None


# A grant counts only while its owner is the study's owner by arrival (services/ownership).
GRANT_SQL = """
SELECT 1 FROM grants g
JOIN image_studies s ON s.study_instance_uid = g.study_instance_uid
  AND s.institution_code = g.owner_institution
WHERE g.study_instance_uid = %(uid)s AND g.institution_code = %(institution)s
  AND (g.grantee_subject IS NULL OR g.grantee_subject = %(subject)s)
  AND g.revoked_at IS NULL AND (g.expires_at IS NULL OR g.expires_at > now())
LIMIT 1
"""
ARRIVAL_OWNER_SQL = "SELECT institution_code FROM image_studies WHERE study_instance_uid = %s"
_ZERO = literal_column("0", Integer)
# The same INSERT ... ON CONFLICT as the ORM routes' (models.grant.upsert), rendered once
# for the async pool: one live 互认 grant per study and institution, extended.
MUTUAL_RECOGNITION_SQL = str(
    grant_model.upsert(
        study_instance_uid=bindparam("uid", type_=String),
        owner_institution=bindparam("owner", type_=String),
        institution_code=bindparam("institution", type_=String),
        grantee_subject=null(),
        kind=literal_column("'mutual-recognition'"),
        purpose=bindparam("purpose", type_=String),
        granted_by=bindparam("subject", type_=String),
        expires_at=func.now() + func.make_interval(*[_ZERO] * 4, bindparam("hours", type_=Integer)),
    ).compile(dialect=pg_psycopg.dialect())
)


async def has_grant(
    pool: AsyncConnectionPool, study_instance_uid: str, institution: str, subject: str
) -> bool:
    """A live grant to the institution, or to this user of it (break-glass)."""
    async with pool.connection() as conn:
        cursor = await conn.execute(
            GRANT_SQL,
            {"uid": study_instance_uid, "institution": institution, "subject": subject},
            prepare=True,
        )
        return await cursor.fetchone() is not None


async def arrival_owner(pool: AsyncConnectionPool, study_instance_uid: str) -> str | None:
    """The institution whose edge's arrival record named the study (None: none yet)."""
    async with pool.connection() as conn:
        cursor = await conn.execute(ARRIVAL_OWNER_SQL, (study_instance_uid,), prepare=True)
        row = await cursor.fetchone()
    return str(row[0]) if row else None


async def grant_mutual_recognition(
    pool: AsyncConnectionPool,
    study_instance_uid: str,
    owner: str,
    institution: str,
    purpose: str,
    subject: str,
    hours: int,
) -> None:
    async with pool.connection() as conn:
        await conn.execute(
            MUTUAL_RECOGNITION_SQL,
            {
                "uid": study_instance_uid,
                "owner": owner,
                "institution": institution,
                "purpose": purpose,
                "subject": subject,
                "hours": hours,
            },
        )


SHARE_LINK_SQL = """
SELECT id, study_instance_uid, GREATEST(0, EXTRACT(EPOCH FROM expires_at - now()))::int
FROM share_links
WHERE secret_sha256 = %(digest)s AND revoked_at IS NULL AND expires_at > now()
"""


async def share_link(pool: AsyncConnectionPool, digest: bytes) -> tuple[int, str, int] | None:
    """(link id, study, seconds it has left) of a live share link with this secret hash."""
    async with pool.connection() as conn:
        cursor = await conn.execute(SHARE_LINK_SQL, {"digest": digest}, prepare=True)
        row = await cursor.fetchone()
    return (int(row[0]), str(row[1]), int(row[2])) if row else None
