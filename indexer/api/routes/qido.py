"""QIDO-RS study search for viewers, answered per caller (see services/qido.py). The
gateway sends GET /dicom-web/studies here instead of to the central archive."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse, Response

from ...services import access, qido
from ..deps import authenticate
from .authz import share_link_reader

router = APIRouter(tags=["dicomweb"])
DICOM_JSON = "application/dicom+json"


@router.get(
    "/dicom-web/studies",
    responses={200: {"content": {DICOM_JSON: {}}}, 403: {}, 422: {}},
)
async def search_studies(
    request: Request, authorization: Annotated[str | None, Header()] = None
) -> Response:
    """QIDO-RS /studies with the DICOMweb query parameters (PatientID, StudyDate,
    AccessionNumber, ModalitiesInStudy, includefield, limit, offset, ...). Staff see their
    institution's studies and those granted to it; platform administrators see all.
    PatientName matches its alphabetic, ideographic and phonetic groups (马*, 马华, ma^hua)."""
    request.state.audit_resource = "dicomweb:search"
    params = list(request.query_params.multi_items())
    central: qido.CentralQido = request.app.state.central_qido
    if not authorization:
        shared = await share_link_reader(request)
        if shared is not None:  # a patient's link: its one study
            request.state.principal, study = shared
            return JSONResponse(
                await qido.search_one(central, study, params), media_type=DICOM_JSON
            )
    who = authenticate(request, authorization)
    decision = access.require(access.may_search_studies(who))
    # platform administrators read the whole archive; staff their own and granted studies
    unconfined = access.unconfined(decision)
    reader = None if unconfined else qido.Reader(access.confined_to(decision), who.subject)
    settings = request.app.state.settings
    page = await qido.search_for_reader(
        central, request.app.state.pool, reader, params, settings.qido_max_matches
    )
    return JSONResponse(page.studies, media_type=DICOM_JSON)
