from auth.provision import load_demo_users, load_realm

GW = "https://127.0.0.1:8443"


def clients(realm: dict) -> dict:
    return {c["clientId"]: c for c in realm["clients"]}


def test_production_realm_has_no_password_grant_client() -> None:
    realm = load_realm(GW, local_dev=False)
    assert "imaging-cli" not in clients(realm)
    assert not any(c.get("directAccessGrantsEnabled") for c in realm["clients"])


def test_local_realm_adds_the_cli_client() -> None:
    assert clients(load_realm(GW, local_dev=True))["imaging-cli"]["directAccessGrantsEnabled"]


def test_viewer_is_public_with_pkce_and_redirects_only_to_the_gateway() -> None:
    ohif = clients(load_realm(GW, local_dev=False))["ohif-viewer"]
    assert ohif["publicClient"] is True
    assert ohif["attributes"]["pkce.code.challenge.method"] == "S256"
    assert ohif["redirectUris"] == [f"{GW}/*"]
    mappers = {m["protocolMapper"] for m in ohif["protocolMappers"]}
    assert {"oidc-usermodel-attribute-mapper", "oidc-audience-mapper"} <= mappers


def test_roles_and_token_lifetime() -> None:
    realm = load_realm(GW, local_dev=False)
    roles = {r["name"] for r in realm["roles"]["realm"]}
    assert roles == {
        "platform-admin",
        "hospital-admin",
        "radiologist",
        "clinician",
        "auditor",
        "gateway",
        "regulator",
    }
    assert realm["accessTokenLifespan"] <= 300


def test_demo_users_take_passwords_from_the_stack_secrets() -> None:
    secrets = {
        "demo_radiologist_a": "pw-a-123456789",
        "demo_radiologist_b": "pw-b-123456789",
        "demo_admin": "pw-admin-1234567",
        "demo_auditor": "pw-audit-1234567",
        "demo_hospital_admin_a": "pw-hadmin-123456",
        "demo_clinician_b": "pw-clin-12345678",
        "demo_regulator": "pw-reg-123456789",
    }
    users = {u.username: u for u in load_demo_users(secrets)}
    assert users["auditor.demo"].roles == ("auditor",)
    assert users["radiologist.a"].password == "pw-a-123456789"
    assert users["radiologist.a"].institution != users["radiologist.b"].institution


def test_admin_cli_takes_no_password_grants_in_the_realm() -> None:
    from auth.provision import builtin_client_settings

    assert builtin_client_settings()["admin-cli"]["directAccessGrantsEnabled"] is False
