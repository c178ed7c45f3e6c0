"""Apply the realm in auth/realm/ to a running Keycloak with python-keycloak (idempotent).

The realm file holds what every deployment shares (roles, the OHIF client, token lifetimes);
`local-dev-clients.json` and `demo-users.json` are added only by the local stack launcher.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from keycloak import KeycloakAdmin
from keycloak.exceptions import KeycloakError

REALM_DIR = Path(__file__).resolve().parent / "realm"


class ProvisioningError(Exception):
    """The realm could not be applied."""


@dataclass(frozen=True)
class DemoUser:
    username: str
    password: str
    institution: str
    roles: tuple[str, ...]
    first_name: str = ""
    last_name: str = ""


def _render(text: str, values: Mapping[str, str]) -> Any:
    mappers = (REALM_DIR / "mappers.json").read_text()
    text = text.replace('"${STANDARD_MAPPERS}"', mappers)
    for key, value in values.items():
        text = text.replace("${" + key + "}", value)
    return json.loads(text)


def load_realm(gateway_url: str, *, local_dev: bool) -> dict[str, Any]:
    """The realm representation for a gateway URL; local_dev adds the CLI client."""
    values = {"GATEWAY_URL": gateway_url.rstrip("/")}
    realm = _render((REALM_DIR / "imaging-cloud.json").read_text(), values)
    if local_dev:
        realm["clients"] += _render((REALM_DIR / "local-dev-clients.json").read_text(), values)
    return realm


def builtin_client_settings() -> dict[str, dict[str, Any]]:
    """Settings for the clients Keycloak makes in every realm (admin-cli, ...), by clientId."""
    raw = json.loads((REALM_DIR / "builtin-clients.json").read_text())
    return {k: v for k, v in raw.items() if not k.startswith("_")}


def _apply_builtin_client_settings(admin: KeycloakAdmin) -> None:
    for client_id, settings in builtin_client_settings().items():
        internal_id = admin.get_client_id(client_id)
        if internal_id is None:
            raise ProvisioningError(f"built-in client '{client_id}' not found in the realm")
        admin.update_client(internal_id, {"clientId": client_id, **settings})


def gateway_client(institution: str, secret: str) -> dict[str, Any]:
    """One confidential client per hospital edge gateway: client-credentials tokens that
    carry the role `gateway` and the hospital's institution code."""
    mappers = json.loads((REALM_DIR / "mappers.json").read_text())
    mappers = [m for m in mappers if m["name"] != "institution"] + [
        {
            "name": "institution",
            "protocol": "openid-connect",
            "protocolMapper": "oidc-hardcoded-claim-mapper",
            "config": {
                "claim.name": "institution",
                "claim.value": institution,
                "jsonType.label": "String",
                "access.token.claim": "true",
            },
        },
    ]
    return {
        "clientId": gateway_client_id(institution),
        "name": f"Edge gateway of {institution}",
        "enabled": True,
        "publicClient": False,
        "clientAuthenticatorType": "client-secret",
        "secret": secret,
        "serviceAccountsEnabled": True,
        "standardFlowEnabled": False,
        "directAccessGrantsEnabled": False,
        "implicitFlowEnabled": False,
        "protocolMappers": mappers,
    }


def gateway_service_account(institution: str) -> dict[str, Any]:
    """The service-account user behind a gateway client, holding the role `gateway`."""
    client_id = gateway_client_id(institution)
    return {
        "username": f"service-account-{client_id}",
        "enabled": True,
        "serviceAccountClientId": client_id,
        "realmRoles": ["gateway"],
    }


def gateway_client_id(institution: str) -> str:
    return f"gateway-{institution.lower()}"


def load_demo_users(passwords: Mapping[str, str]) -> list[DemoUser]:
    """Demo users of the local stack, with passwords looked up by their `key`."""
    users = json.loads((REALM_DIR / "demo-users.json").read_text())
    return [
        DemoUser(
            username=u["username"],
            password=passwords[u["key"]],
            institution=u["institution"],
            roles=tuple(u["roles"]),
            first_name=u.get("firstName", ""),
            last_name=u.get("lastName", ""),
        )
        for u in users
    ]


def _declare_institution_attribute(admin: KeycloakAdmin, realm: str) -> None:
    """Keycloak 24+ drops undeclared user attributes: declare `institution` (admin-edited)."""
    profile = admin.get_realm_users_profile()
    names = {a["name"] for a in profile.get("attributes", [])}
    if "institution" in names:
        return
    profile.setdefault("attributes", []).append(
        {
            "name": "institution",
            "displayName": "Institution code",
            "permissions": {"view": ["admin", "user"], "edit": ["admin"]},
            "validations": {"pattern": {"pattern": "^[A-Z0-9]{2,16}$"}},
            "multivalued": False,
        }
    )
    admin.update_realm_users_profile(profile)


def provision(
    server_url: str,
    admin_user: str,
    admin_password: str,
    realm: dict[str, Any],
    users: list[DemoUser] = (),  # type: ignore[assignment]
    service_accounts: list[dict[str, Any]] = (),  # type: ignore[assignment]
) -> None:
    """Create or update the realm, its clients and roles, and the given users."""
    name = realm["realm"]
    try:
        admin = KeycloakAdmin(
            server_url=server_url.rstrip("/") + "/",
            username=admin_user,
            password=admin_password,
            realm_name="master",
            user_realm_name="master",
            timeout=30,
        )
        existing = {r["realm"] for r in admin.get_realms()}
        settings = {k: v for k, v in realm.items() if k not in ("clients", "roles")}
        if name not in existing:
            admin.create_realm(payload=settings)
        else:
            admin.update_realm(name, settings)
        admin.change_current_realm(name)
        _declare_institution_attribute(admin, name)
        payload: dict[str, Any] = {
            "ifResourceExists": "OVERWRITE",
            "clients": realm.get("clients", []),
            "roles": realm.get("roles", {}),
        }
        if users:
            payload["users"] = [
                {
                    "username": u.username,
                    "enabled": True,
                    "emailVerified": True,
                    "firstName": u.first_name,
                    "lastName": u.last_name,
                    "email": f"{u.username}@example.invalid",
                    "attributes": {"institution": [u.institution]},
                    "realmRoles": list(u.roles),
                    "credentials": [{"type": "password", "value": u.password, "temporary": False}],
                    "requiredActions": [],
                }
                for u in users
            ]
        if service_accounts:
            payload["users"] = [*payload.get("users", []), *service_accounts]
        admin.partial_import_realm(name, payload)
        _apply_builtin_client_settings(admin)
    except KeycloakError as exc:
        raise ProvisioningError(f"Keycloak refused the realm '{name}': {exc}") from exc
