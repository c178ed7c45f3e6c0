"""Every service of the stack runs, is healthy, and a second `up` leaves it alone."""

from __future__ import annotations

from deploy.stack.client import StackClient
from deploy.stack.launcher import load_context, services, status, up
from deploy.stack.settings import StackSettings

REQUIRED_KEYS = (
    "GATEWAY_URL CA_CERT KEYCLOAK_URL KEYCLOAK_REALM OIDC_CLI_CLIENT_ID CENTRAL_ORTHANC_URL "
    "CENTRAL_ORTHANC_USER CENTRAL_ORTHANC_PASSWORD INDEXER_URL S3_ENDPOINT S3_BUCKET "
    "S3_ACCESS_KEY S3_SECRET_KEY DEMO_RADIOLOGIST_A_USER DEMO_RADIOLOGIST_A_PASSWORD "
    "DEMO_RADIOLOGIST_B_USER DEMO_RADIOLOGIST_B_PASSWORD DEMO_ADMIN_USER DEMO_ADMIN_PASSWORD"
).split() + [
    f"EDGE_{e}_{k}"
    for e in "AB"
    for k in ("URL", "USER", "PASSWORD", "AET", "DICOM_PORT", "INSTITUTION")
]


def test_stack_env_has_the_whole_contract(stack: StackClient) -> None:
    missing = [k for k in REQUIRED_KEYS if not stack.env.get(k)]
    assert missing == []
    assert stack["GATEWAY_URL"].startswith("https://127.0.0.1:")
    assert stack["EDGE_A_INSTITUTION"] != stack["EDGE_B_INSTITUTION"]


def test_every_service_is_running_and_healthy(stack_settings: StackSettings) -> None:
    ctx = load_context(stack_settings)
    rows = status(ctx)
    # every component's processes, the HL7 listener and the monitoring included
    assert [r.name for r in rows] == [svc.name for svc in services(ctx)]
    assert {"hl7", "prometheus"} <= {r.name for r in rows}
    unhealthy = {r.name: r.problem for r in rows if not r.healthy}
    assert unhealthy == {}


def test_second_up_leaves_a_healthy_stack_alone(stack_settings: StackSettings) -> None:
    ctx = load_context(stack_settings)
    before = {r.name: r.pid for r in status(ctx)}
    messages: list[str] = []
    up(ctx, say=messages.append)
    after = {r.name: r.pid for r in status(ctx)}
    assert after == before
    assert all("already running" in m for m in messages)
    assert len(messages) == len(services(ctx))


def test_orthanc_uses_postgresql_index_at_central(stack: StackClient) -> None:
    with stack.orthanc("CENTRAL_ORTHANC") as central:
        system = central.get("/system").json()
        plugins = central.get("/plugins").json()
    assert system["DatabaseBackendPlugin"] is not None
    assert "postgresql-index" in plugins
    assert {"python", "dicom-web"} <= set(plugins)


def test_orthanc_refuses_requests_without_credentials(stack: StackClient) -> None:
    import httpx

    for which in ("CENTRAL_ORTHANC", "EDGE_A", "EDGE_B"):
        response = httpx.get(f"{stack[which + '_URL']}/system", timeout=10)
        assert response.status_code == 401, which
