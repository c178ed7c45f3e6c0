"""Central Orthanc's REST API through the gateway: platform administrators, and hospital
gateway accounts for exactly the calls their edge makes; the edges forward that way."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from deploy.stack.client import StackClient


def gateway_token(stack: StackClient, institution: str) -> str:
    secrets = json.loads((Path(stack["STACK_DIR"]) / "secrets.json").read_text())
    answer = httpx.post(
        f"{stack['KEYCLOAK_URL']}/realms/{stack['KEYCLOAK_REALM']}/protocol/openid-connect/token",
        data={"grant_type": "client_credentials"},
        auth=(f"gateway-{institution.lower()}", secrets[f"gateway_{institution.lower()}"]),
        verify=stack.ca_context(),
        timeout=30,
    )
    answer.raise_for_status()
    return str(answer.json()["access_token"])


def user_token(stack: StackClient, who: str) -> str:
    return str(
        stack.password_token(stack[f"DEMO_{who}_USER"], stack[f"DEMO_{who}_PASSWORD"])[
            "access_token"
        ]
    )


def test_the_edges_reach_central_through_the_gateway(stack: StackClient) -> None:
    config = json.loads((Path(stack["STACK_DIR"]) / "edge-a" / "orthanc.json").read_text())
    peer = config["OrthancPeers"]["central"]
    assert peer["Url"] == f"{stack['GATEWAY_URL']}/orthanc/" and "Password" not in peer


def test_who_may_call_central_rest(stack: StackClient) -> None:
    with stack.gateway() as anonymous:
        assert anonymous.get("/orthanc/system").status_code == 401
    with stack.gateway(user_token(stack, "ADMIN")) as admin:
        assert admin.get("/orthanc/system").status_code == 200
    with stack.gateway(user_token(stack, "RADIOLOGIST_A")) as radiologist:
        assert radiologist.get("/orthanc/system").status_code == 403
        assert radiologist.post("/orthanc/tools/lookup", content="1.2.3").status_code == 403
    with stack.gateway(gateway_token(stack, "H0001")) as edge:
        assert edge.post("/orthanc/tools/lookup", content="1.2.3").status_code == 200
        assert edge.get("/orthanc/system").status_code == 403  # not an edge's call
        assert edge.delete("/orthanc/studies/0" * 1).status_code == 403
        assert edge.get("/orthanc/app/explorer.html").status_code == 403
