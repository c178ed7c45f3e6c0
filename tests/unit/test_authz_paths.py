"""Which study a DICOMweb request is confined to, as the gateway's check sees it: only a
path naming one study counts, and anything a proxy or Orthanc could read differently
(dot segments, encoded separators, a second study in the query) confines it to none. And
which row of the gateway's table of central's REST calls a request is, and what it decides."""

from __future__ import annotations

import asyncio

import pytest

from indexer.api.routes.authz import gateway_call, gateway_may, study_of
from indexer.security.auth import Principal

UID = "1.2.826.0.1.3680043.8.498.71986104404705979535517013728157915242"  # 38-digit part


@pytest.mark.parametrize(
    "path",
    [
        f"/dicom-web/studies/{UID}",
        f"/dicom-web/studies/{UID}/metadata",
        f"/dicom-web/studies/{UID}/series?includefield=0008103E",
        f"/dicom-web/studies/{UID}/series/1.2/instances/1.2.3/frames/1",
    ],
)
def test_a_path_naming_one_study_is_confined_to_it(path: str) -> None:
    assert study_of(path) == UID


@pytest.mark.parametrize(
    "path",
    [
        "/dicom-web/studies",
        "/dicom-web/studies/",
        f"/dicom-web/studies?StudyInstanceUID={UID}",
        f"/dicom-web/studies/?StudyInstanceUID={UID}&StudyInstanceUID=",
        f"/dicom-web/series?StudyInstanceUID={UID}",
        f"/dicom-web/instances?0020000D={UID}",
        f"/dicom-web/studies/{UID}/%2e%2e/1.2.3/metadata",
        f"/dicom-web/studies/{UID}/%2E%2E/1.2.3/metadata",
        f"/dicom-web/studies/{UID}/../1.2.3/metadata",
        f"/dicom-web/studies/{UID}/.%2e/1.2.3/metadata",
        f"/dicom-web/studies/{UID}%2F..%2F1.2.3/metadata",
        f"/dicom-web/studies/{UID}//series",
        f"/dicom-web/studies/{UID}\\..\\1.2.3",
        f"/dicom-web/studies/{UID}/series?StudyInstanceUID=1.2.3",
        f"/dicom-web/studies/{UID}/series?0020000d=1.2.3",
        "/dicom-web/studies/1..2/metadata",
        "/dicom-web/studies/1.2./metadata",
        "/dicom-web/studies/" + "1." * 40 + "1/metadata",  # longer than a UID may be
        f"/dicom-web/studies/{UID}#/../../studies/1.2.3/metadata",  # Orthanc reads past '#'
        f"/dicom-web/studies/{UID}/metadata?_method=DELETE",
    ],
)
def test_anything_else_is_confined_to_no_study(path: str) -> None:
    assert study_of(path) is None


# The gateway's check of central's REST API: a table of (method, path, check) rows.
GW_A = Principal("sub-gw-a", "gw-a", "H0001", frozenset({"gateway"}))
GW_B = Principal("sub-gw-b", "gw-b", "H0002", frozenset({"gateway"}))
ADMIN = Principal("sub-admin", "admin", None, frozenset({"platform-admin"}))
RAD_A = Principal("sub-rad-a", "rad-a", "H0001", frozenset({"radiologist"}))
ORTHANC_ID = "0" * 8 + "-" + "-".join(["1" * 8] * 4)
PUSH_ID = "12345678-1234-1234-1234-123456789abc"


@pytest.mark.parametrize(
    ("method", "uri", "check"),
    [
        ("GET", f"/orthanc/studies/{ORTHANC_ID}/instances", "_study_resource"),
        ("GET", f"/orthanc/instances/{ORTHANC_ID}/file", "_study_resource"),
        ("GET", "/orthanc/imaging-cloud/pushes?to=H0002", "_push_list"),
        ("GET", f"/orthanc/imaging-cloud/pushes/{PUSH_ID}", "_one_push"),
        ("DELETE", f"/orthanc/studies/{ORTHANC_ID}", None),
        ("GET", "/orthanc/system", None),
        ("GET", f"/orthanc/instances/{ORTHANC_ID}/%2e%2e/file", None),
        ("GET", f"/orthanc/instances/{ORTHANC_ID}/file#x", None),
    ],
)
def test_each_call_of_the_edge_has_its_row(method: str, uri: str, check: str | None) -> None:
    found = gateway_call(method, uri)
    assert (found[0].check.__name__ if found else None) == check


def _may(who: Principal, uri: str, method: str = "GET") -> bool:
    # these rows' checks read nothing of the request: no app, no database
    return bool(asyncio.run(gateway_may(None, who, method, uri)))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("who", "uri", "allowed"),
    [
        (GW_B, "/orthanc/imaging-cloud/pushes?to=H0002", True),
        (GW_B, "/orthanc/imaging-cloud/pushes?to=H0002&state=delivered", True),
        (GW_B, "/orthanc/imaging-cloud/pushes?to=H0001", False),
        (GW_B, "/orthanc/imaging-cloud/pushes?to=H0002&to=H0001", False),
        (GW_B, "/orthanc/imaging-cloud/pushes?state=delivered&to=H0002", False),
        (GW_B, "/orthanc/imaging-cloud/pushes", False),
        (GW_A, f"/orthanc/imaging-cloud/pushes/{PUSH_ID}", True),
        (GW_A, "/orthanc/system", False),
        (RAD_A, f"/orthanc/imaging-cloud/pushes/{PUSH_ID}", False),
        (ADMIN, "/orthanc/system", True),
        (ADMIN, "/orthanc/imaging-cloud/pushes?to=H0001&to=H0002", True),
    ],
)
def test_the_table_decides_the_edges_calls(who: Principal, uri: str, allowed: bool) -> None:
    assert _may(who, uri) is allowed


def test_a_trailing_newline_matches_no_row_and_no_study() -> None:
    # `$` would match before a final newline; the table and the study path match whole paths
    from indexer.api.routes import authz

    assert authz._STUDY_PATH.match(f"/dicom-web/studies/{UID}\n") is None
    for call in authz.GATEWAY_CALLS:
        assert call.path.fullmatch("/imaging-cloud/pushes\n") is None
    assert authz.GATEWAY_CALLS[3].path.fullmatch(f"/imaging-cloud/pushes/{PUSH_ID}")


def test_no_one_but_an_administrator_gets_past_a_row_without_its_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from indexer.api.routes import authz
    from indexer.services import access

    asked: list[str] = []

    async def refusing(_r: object, who: Principal, _m: object, _u: str) -> access.Decision:
        asked.append(who.username)
        return access.refuse("row says no")

    calls = list(authz.GATEWAY_CALLS)
    calls[3] = authz.GatewayCall(calls[3].method, calls[3].path, refusing)
    monkeypatch.setattr(authz, "GATEWAY_CALLS", calls)
    uri = f"/orthanc/imaging-cloud/pushes/{PUSH_ID}"
    assert not _may(GW_A, uri) and not _may(RAD_A, uri)
    # the row's check decided for the gateway; staff are refused before it (no lookup)
    assert asked == ["gw-a"]
    assert _may(ADMIN, uri) and asked == ["gw-a"]  # administrators: the whole API
