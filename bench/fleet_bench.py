"""Extra hospital-gateway accounts in a running stack's Keycloak, for the fleet bench and
test: gateways that no real edge of the stack heartbeats as (the two demo edges are
gateway-h0001 and gateway-h0002, and their own agents keep those fresh).

Each is a confidential client `gateway-<code>` made by the same helpers as the stack's own
gateway accounts (auth/provision.py: role `gateway`, institution claim `<CODE>`), so its
tokens are exactly what a real edge gets; imported in one partial import.
"""

from __future__ import annotations

import secrets

import httpx
from keycloak import KeycloakAdmin

from auth.provision import gateway_client, gateway_client_id, gateway_service_account
from deploy.stack.client import StackClient
from deploy.stack.context import REALM, StackContext
from deploy.stack.services.keycloak import ADMIN_USER


def add_gateway_accounts(ctx: StackContext, institutions: list[str]) -> dict[str, str]:
    """Create (or overwrite) one gateway client per institution code: client id -> secret."""
    made = {gateway_client_id(code): secrets.token_urlsafe(24) for code in institutions}
    admin = KeycloakAdmin(
        server_url=ctx.keycloak_internal_url.rstrip("/") + "/",
        username=ADMIN_USER,
        password=ctx.secrets["keycloak_admin"],
        realm_name="master",
        user_realm_name="master",
        timeout=120,
    )
    admin.change_current_realm(REALM)
    admin.partial_import_realm(
        REALM,
        {
            "ifResourceExists": "OVERWRITE",
            "clients": [
                gateway_client(code, made[gateway_client_id(code)]) for code in institutions
            ],
            "users": [gateway_service_account(code) for code in institutions],
        },
    )
    return made


def account_token(
    stack: StackClient, client_id: str, secret: str, client: httpx.Client | None = None
) -> str:
    """A client-credentials access token, through the gateway as an edge gets one."""
    url = f"{stack['KEYCLOAK_URL']}/realms/{stack['KEYCLOAK_REALM']}/protocol/openid-connect/token"
    http = client or httpx.Client(verify=stack.ca_context(), timeout=30.0)
    try:
        answer = http.post(url, data={"grant_type": "client_credentials"}, auth=(client_id, secret))
        answer.raise_for_status()
        return str(answer.json()["access_token"])
    finally:
        if client is None:
            http.close()
