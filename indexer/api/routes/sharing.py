"""Patient share links (云胶片): a radiologist or clinician of the study's institution
makes a time-limited link to one study (with its QR code) for the patient; it opens in the
viewer without an account, read-only, that study only, until it expires or is revoked.
The secret appears once, in the answer that creates the link; only its hash is kept."""

from __future__ import annotations

import datetime as dt
from html import escape
from typing import Annotated

from fastapi import APIRouter, Path, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import Field
from sqlalchemy import select

from ...errors import InvalidRecord, NotFound
from ...models import ShareLink
from ...schemas import CODE, UID, Strict
from ...services import access, lookup_sql, sharing
from ...services.access import StudyFacts
from ..deps import Caller, Reg

router = APIRouter(prefix="/v1/institutions", tags=["share links"])
landing = APIRouter(tags=["share links"])


class ShareLinkIn(Strict):
    hours: int = Field(default=72, ge=1, description="how long the link works")


class ShareLinkOut(Strict):
    id: int
    study_instance_uid: str
    created_at: dt.datetime
    expires_at: dt.datetime
    revoked_at: dt.datetime | None


class NewShareLink(ShareLinkOut):
    url: str = Field(description="give this to the patient: it is shown only once")
    qr_code_png: str = Field(description="the link as a QR code, a data: URI (PNG)")


def _out(row: ShareLink) -> ShareLinkOut:
    return ShareLinkOut(
        id=row.id,
        study_instance_uid=row.study_instance_uid,
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
    )


StudyPath = Annotated[str, Path(pattern=UID, max_length=64)]
CodePath = Annotated[str, Path(pattern=CODE)]


@router.post("/{code}/studies/{study_instance_uid}/share-links", response_model=NewShareLink)
def create(
    code: CodePath,
    study_instance_uid: StudyPath,
    body: ShareLinkIn,
    who: Caller,
    reg: Reg,
    request: Request,
) -> NewShareLink:
    access.require(access.may_share(who, code))
    settings = request.app.state.settings
    if body.hours > settings.share_link_max_hours:
        raise InvalidRecord("hours", f"at most {settings.share_link_max_hours}")
    study = StudyFacts(study_instance_uid, reg.study_institution(study_instance_uid))
    access.require(access.held_by(code, study))
    secret = sharing.new_secret()
    row = ShareLink(
        secret_sha256=sharing.digest(secret),
        study_instance_uid=study_instance_uid,
        owner_institution=code,
        created_by=who.subject,
        expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(hours=body.hours),
    )
    reg.session.add(row)
    reg.session.commit()
    url = f"{settings.gateway_url}/s/{secret}"
    return NewShareLink(**_out(row).model_dump(), url=url, qr_code_png=sharing.qr_data_uri(url))


@router.get("/{code}/studies/{study_instance_uid}/share-links", response_model=list[ShareLinkOut])
def list_links(
    code: CodePath, study_instance_uid: StudyPath, who: Caller, reg: Reg
) -> list[ShareLinkOut]:
    """The study's links (never their secrets), newest first."""
    access.require(access.may_share(who, code))
    rows = reg.session.scalars(
        select(ShareLink)
        .where(
            ShareLink.owner_institution == code,
            ShareLink.study_instance_uid == study_instance_uid,
        )
        .order_by(ShareLink.id.desc())
    )
    return [_out(row) for row in rows]


@router.delete(
    "/{code}/studies/{study_instance_uid}/share-links/{link_id}", response_model=ShareLinkOut
)
def revoke(
    code: CodePath,
    study_instance_uid: StudyPath,
    link_id: Annotated[int, Path(ge=1, le=2**63 - 1)],
    who: Caller,
    reg: Reg,
) -> ShareLinkOut:
    """Withdraw a link: the next request made with it is refused."""
    access.require(access.may_share(who, code))
    row = reg.session.get(ShareLink, link_id, with_for_update=True)
    if (
        row is None
        or row.study_instance_uid != study_instance_uid
        or not access.held_by(code, StudyFacts(row.study_instance_uid, row.owner_institution))
    ):
        raise NotFound("no such share link on this institution's study")
    if row.revoked_at is None:
        row.revoked_at = dt.datetime.now(dt.UTC)
    reg.session.commit()
    return _out(row)


GONE = """<!doctype html><html lang="zh-CN"><meta charset="utf-8">
<title>链接已失效 Link not available</title>
<body style="font-family:sans-serif;margin:3em">
<h1>此影像链接已过期或已被撤回</h1>
<p>This image link has expired or was withdrawn. Please ask your hospital for a new one.</p>
</body></html>"""


@landing.get("/s/exit", include_in_schema=False)
async def leave(request: Request) -> Response:
    """Forget a share link in this browser (the viewer asks for a login again)."""
    request.state.audit_resource = "share-link:exit"
    response = RedirectResponse("/", status_code=303)
    for name in (sharing.COOKIE, sharing.MODE_COOKIE):
        response.delete_cookie(name, path="/", secure=True, samesite="lax")
    return response


@landing.get("/s/{secret}", response_class=HTMLResponse, include_in_schema=False)
async def open_link(secret: str, request: Request) -> Response:
    """The patient's link: remember it in a cookie for the viewer and open the study."""
    found = None
    if sharing.plausible(secret):
        found = await lookup_sql.share_link(request.app.state.pool, sharing.digest(secret))
    if found is None:
        request.state.audit_resource = "share-link:unknown"
        return HTMLResponse(GONE, status_code=404)
    link_id, study, seconds_left = found
    request.state.audit_resource = f"share-link:{link_id}"
    response = RedirectResponse(f"/viewer?StudyInstanceUIDs={escape(study)}", status_code=303)
    for name, value, http_only in (
        (sharing.COOKIE, secret, True),
        (sharing.MODE_COOKIE, "1", False),
    ):
        response.set_cookie(  # gone with the link, or earlier at /s/exit
            name,
            value,
            max_age=seconds_left,
            path="/",
            secure=True,
            httponly=http_only,
            samesite="lax",
        )
    return response
