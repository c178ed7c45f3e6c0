"""Grants: the owner institution shares a study with another one (a push, the patient's
consent); 互认 grants are made by the master-index lookup itself, with a purpose."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from fastapi import APIRouter, Path
from pydantic import Field
from sqlalchemy import select, update

from ...errors import NotFound
from ...models import Grant
from ...models import grant as grant_model
from ...models.grant import LIVE_KEY
from ...schemas import CODE, UID, Strict, Timestamp
from ...services import access
from ...services.access import StudyFacts
from ..deps import Caller, Reg

router = APIRouter(prefix="/v1/institutions", tags=["grants"])


class GrantIn(Strict):
    to_institution: str = Field(pattern=CODE)
    kind: Literal["push", "consent"]
    purpose: str | None = Field(default=None, max_length=200)
    expires_at: Timestamp | None = None


class GrantOut(Strict):
    id: int
    study_instance_uid: str
    owner_institution: str
    institution_code: str
    for_user: bool = Field(description="for one user of that institution (break-glass)")
    kind: str
    purpose: str | None
    created_at: dt.datetime
    expires_at: dt.datetime | None
    revoked_at: dt.datetime | None


def _out(row: Grant) -> GrantOut:
    return GrantOut(
        id=row.id,
        study_instance_uid=row.study_instance_uid,
        owner_institution=row.owner_institution,
        institution_code=row.institution_code,
        for_user=access.is_for_one_person(row.grantee_subject),
        kind=row.kind,
        purpose=row.purpose,
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
    )


@router.post("/{code}/studies/{study_instance_uid}/grants", response_model=GrantOut)
def grant(
    code: Annotated[str, Path(pattern=CODE)],
    study_instance_uid: Annotated[str, Path(pattern=UID, max_length=64)],
    body: GrantIn,
    who: Caller,
    reg: Reg,
) -> GrantOut:
    """Let another institution read one of this institution's studies (its gateway or
    admins: the edge does it when a study is pushed)."""
    access.require(access.may_write_records(who, code))
    access.require(access.may_grant_to(code, body.to_institution))
    study = StudyFacts(study_instance_uid, reg.study_institution(study_instance_uid))
    access.require(access.held_by(code, study))
    grant_id = reg.session.execute(
        grant_model.upsert(
            study_instance_uid=study_instance_uid,
            owner_institution=code,
            institution_code=body.to_institution,
            grantee_subject=None,
            kind=body.kind,
            purpose=body.purpose,
            granted_by=who.subject,
            expires_at=body.expires_at,
        )
    ).scalar_one()  # the live grant of this study, grantee and kind: new, or reused and extended
    reg.session.commit()
    row = reg.session.get(Grant, grant_id, populate_existing=True)
    assert row is not None
    return _out(row)


@router.get("/{code}/studies/{study_instance_uid}/grants", response_model=list[GrantOut])
def grants_of_study(
    code: Annotated[str, Path(pattern=CODE)],
    study_instance_uid: Annotated[str, Path(pattern=UID, max_length=64)],
    who: Caller,
    reg: Reg,
) -> list[GrantOut]:
    """Who else may read one of this institution's studies, and who could (revoked and
    expired grants too), newest first: for its staff and platform administrators."""
    access.require(access.may_read_records(who, code))
    rows = reg.session.scalars(
        select(Grant)
        .where(Grant.owner_institution == code, Grant.study_instance_uid == study_instance_uid)
        .order_by(Grant.id.desc())
    )
    return [_out(row) for row in rows]


@router.delete("/{code}/studies/{study_instance_uid}/grants/{grant_id}", response_model=GrantOut)
def revoke(
    code: Annotated[str, Path(pattern=CODE)],
    study_instance_uid: Annotated[str, Path(pattern=UID, max_length=64)],
    grant_id: Annotated[int, Path(ge=1, le=2**63 - 1)],
    who: Caller,
    reg: Reg,
) -> GrantOut:
    """Revoke a grant of one of this institution's studies: from now on the gateway refuses."""
    access.require(access.may_write_records(who, code))
    row = reg.session.get(Grant, grant_id, with_for_update=True)
    if (
        row is None
        or row.study_instance_uid != study_instance_uid
        or not access.held_by(code, StudyFacts(row.study_instance_uid, row.owner_institution))
    ):
        raise NotFound("no such grant on this institution's study")
    # every live row of its key (study, grantee, kind), whatever the state of the named one:
    # a copy that migration 0006 revoked names the grant it kept live
    now = dt.datetime.now(dt.UTC)
    key = [getattr(Grant, name) == getattr(row, name) for name in LIVE_KEY]  # None: IS NULL
    reg.session.execute(
        update(Grant).where(*key, Grant.revoked_at.is_(None)).values(revoked_at=now)
    )
    reg.session.commit()
    reg.session.refresh(row)
    return _out(row)
