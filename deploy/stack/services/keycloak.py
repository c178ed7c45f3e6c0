"""Keycloak, pre-built for PostgreSQL and the /auth path, behind the gateway."""

from __future__ import annotations

from auth.provision import (
    ProvisioningError,
    gateway_client,
    gateway_service_account,
    load_demo_users,
    load_realm,
    provision,
)

from ..context import INSTITUTION_A, INSTITUTION_B
from ..errors import PrerequisiteMissing, StackError
from .base import Service, http_health

ADMIN_USER = "bootstrap-admin"


class Keycloak(Service):
    name = "keycloak"
    ports: tuple[str, ...] = ("keycloak", "keycloak_mgmt")  # (HTTP, management)
    stop_timeout_s = 30.0
    log_level = "WARN"

    def prepare(self) -> None:
        kc = self.ctx.settings.keycloak_home / "bin" / "kc.sh"
        if not kc.exists() or not (self.ctx.settings.keycloak_home / ".built").exists():
            raise PrerequisiteMissing(self.name, f"{kc} not installed/built: run make install")

    @property
    def internal_url(self) -> str:
        """This node's own /auth URL on loopback."""
        return f"{self.ctx.http(self.ports[0])}/auth"

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.ctx.ports[self.ports[1]]}/auth/health/ready"

    @property
    def admin_url(self) -> str:
        """Where the admin console is used: the gateway if admin networks are set."""
        if self.ctx.settings.keycloak_admin_cidrs:
            return self.ctx.keycloak_public_url
        return self.internal_url

    def cache_options(self) -> list[str]:
        return ["--cache=local"]  # one node here: no JGroups cluster listening on the network

    def argv(self) -> list[str]:
        p = self.ctx.ports
        http_port, mgmt_port = (p[name] for name in self.ports[:2])
        return [
            str(self.ctx.settings.keycloak_home / "bin" / "kc.sh"),
            "start",
            "--optimized",
            f"--db-url=jdbc:postgresql://127.0.0.1:{p['postgres']}/keycloak",
            "--db-username=keycloak",
            "--http-enabled=true",
            "--http-host=127.0.0.1",
            f"--http-port={http_port}",
            # Health (and, with the current build, metrics) on loopback only; the gateway
            # never routes to this port.
            f"--http-management-port={mgmt_port}",
            # Browsers and tokens see the gateway's URL; services may talk to Keycloak directly.
            f"--hostname={self.ctx.keycloak_public_url}",
            # The admin console and the master realm are not behind the gateway unless the
            # settings name admin networks: by default, administrators use it on loopback.
            f"--hostname-admin={self.admin_url}",
            "--hostname-backchannel-dynamic=true",
            "--proxy-headers=xforwarded",
            *self.cache_options(),
            f"--log-level={self.log_level}",
        ]

    def env(self) -> dict[str, str]:
        return {
            # Secrets by environment, so they do not show in `ps`.
            "KC_DB_PASSWORD": self.ctx.secrets["db_keycloak"],
            "KC_BOOTSTRAP_ADMIN_USERNAME": ADMIN_USER,
            "KC_BOOTSTRAP_ADMIN_PASSWORD": self.ctx.secrets["keycloak_admin"],
            "JAVA_OPTS_KC_HEAP": "-Xms64m -Xmx640m -XX:MaxMetaspaceSize=256m",
        }

    def health(self) -> str | None:
        return http_health(self.health_url)

    def after_healthy(self) -> None:
        realm = load_realm(self.ctx.gateway_url, local_dev=True)
        service_accounts = []
        for institution in (INSTITUTION_A, INSTITUTION_B):
            secret = self.ctx.secrets[f"gateway_{institution.lower()}"]
            realm["clients"].append(gateway_client(institution, secret))
            service_accounts.append(gateway_service_account(institution))
        users = load_demo_users(self.ctx.secrets)
        try:
            provision(
                self.ctx.keycloak_internal_url,
                ADMIN_USER,
                self.ctx.secrets["keycloak_admin"],
                realm,
                users,
                service_accounts,
            )
        except ProvisioningError as exc:
            raise StackError(self.name, str(exc), self.log) from exc
