"""nginx: the one HTTPS door (viewer, DICOMweb, indexer API, Keycloak)."""

from __future__ import annotations

import base64
import re
import shutil
import signal
import ssl
from pathlib import Path

from ..context import StackContext
from ..errors import PrerequisiteMissing
from ..modes import GATEWAY_HOME_MODE
from .base import Service, http_health
from .central import central_nodes
from .indexer import indexer_nodes

NGINX = Path("/usr/sbin/nginx")
_PLACEHOLDER = re.compile(r"\$\{([A-Z][A-Z0-9_]*)\}")


def render_template(text: str, values: dict[str, str]) -> str:
    """Fill ${NAME} placeholders as envsubst does in the nginx image; nginx's own $vars stay.

    Every placeholder must have a value: a typo fails here, not as a broken nginx config.
    """
    missing = sorted({m for m in _PLACEHOLDER.findall(text) if m not in values})
    if missing:
        raise ValueError(f"gateway template: no value for {', '.join(missing)}")
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


def keycloak_admin_access(cidrs: tuple[str, ...]) -> str:
    """nginx rules for Keycloak's admin console and master realm: the admin networks, or
    nobody (404, as if they did not exist)."""
    if not cidrs:
        return "return 404;"
    return " ".join([*(f"allow {c};" for c in cidrs), "deny all;"])


def upstream_servers(addresses: list[str]) -> str:
    """The `server` lines of an nginx upstream, one per node (at least one)."""
    if not addresses:
        raise ValueError("gateway template: an upstream needs at least one server")
    return " ".join(f"server {address};" for address in addresses)


def keycloak_ports(ctx: StackContext) -> list[str]:
    """The HTTP port names of the Keycloak nodes (two in the HA topology)."""
    return ["keycloak", "keycloak_2"] if ctx.settings.ha else ["keycloak"]


class NginxService(Service):
    """A service that is an nginx of its own: its prefix is `home`, its nginx.conf there."""

    @property
    def home(self) -> Path:
        raise NotImplementedError

    def write_conf(self, conf: str) -> None:
        path = self.home / "nginx.conf"
        path.touch(mode=0o600, exist_ok=True)  # may hold paths of keys: the owner's only
        path.write_text(conf)

    def argv(self) -> list[str]:
        return [str(NGINX), "-p", str(self.home), "-c", str(self.home / "nginx.conf")]


class Gateway(NginxService):
    name = "gateway"
    ports = ("gateway",)
    stop_signal = signal.SIGQUIT  # graceful: finish open requests, then exit
    redact_log = True  # its error log (stderr) writes failed request lines, queries included

    @property
    def home(self) -> Path:
        return self.ctx.state / "gateway"

    def prepare(self) -> None:
        if not NGINX.exists():
            raise PrerequisiteMissing(self.name, f"{NGINX} not found: run make install")
        dist = self.ctx.settings.ohif_dist
        if not (dist / "index.html").exists():
            raise PrerequisiteMissing(self.name, f"OHIF not in {dist}: run make install")
        for sub in ("tmp", "logs"):
            (self.home / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
        shutil.chown(self.home / "tmp", "www-data", "www-data")
        # nginx's workers (www-data) pass through the home to their tmp/, nothing more.
        shutil.chown(self.home, "root", "www-data")
        self.home.chmod(GATEWAY_HOME_MODE)
        self.write_conf(self.render())

    def render(self) -> str:
        """nginx.conf for this stack: every central (and indexer) node in its upstream."""
        dist = self.ctx.settings.ohif_dist
        basic = base64.b64encode(
            f"central-admin:{self.ctx.secrets['central_orthanc']}".encode()
        ).decode()
        centrals = [f"127.0.0.1:{self.ctx.ports[n.http_port]}" for n in central_nodes(self.ctx)]
        indexers = [f"127.0.0.1:{self.ctx.ports[n.port_name]}" for n in indexer_nodes(self.ctx)]
        return render_template(
            (self.ctx.settings.repo_root / "deploy/gateway/nginx.conf.template").read_text(),
            {
                "GATEWAY_LISTEN": f"127.0.0.1:{self.ctx.ports['gateway']}",
                "GATEWAY_STATUS_LISTEN": f"127.0.0.1:{self.ctx.ports['gateway_status']}",
                "GATEWAY_HOME": str(self.home),
                "NGINX_USER": "www-data",
                "SERVER_CERT": str(self.ctx.pki["server_cert"]),
                "SERVER_KEY": str(self.ctx.pki["server_key"]),
                "OHIF_DIST": str(dist),
                "VIEWER_CONFIG": str(self.ctx.settings.repo_root / "deploy/gateway/app-config.js"),
                "CENTRAL_SERVERS": upstream_servers(centrals),
                "CENTRAL_BASIC_AUTH": basic,
                "INDEXER_SERVERS": upstream_servers(indexers),
                "GATEWAY_FORWARD_SECRET": self.ctx.secrets["gateway_forward_secret"],
                "KEYCLOAK_SERVERS": upstream_servers(
                    [f"127.0.0.1:{self.ctx.ports[name]}" for name in keycloak_ports(self.ctx)]
                ),
                "KEYCLOAK_ADMIN_ACCESS": keycloak_admin_access(
                    self.ctx.settings.keycloak_admin_cidrs
                ),
            },
        )

    def health(self) -> str | None:
        def is_viewer(response) -> str | None:
            return None if "<html" in response.text.lower() else "index.html is not HTML"

        return http_health(
            f"{self.ctx.gateway_url}/",
            verify=ssl.create_default_context(cafile=str(self.ctx.pki["ca_cert"])),
            check=is_viewer,
        )
