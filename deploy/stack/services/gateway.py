"""nginx: the one HTTPS door (viewer, DICOMweb, indexer API, Keycloak)."""

from __future__ import annotations

import base64
import json
import shutil
import signal
from pathlib import Path
from string import Template

from ..context import REALM
from ..errors import PrerequisiteMissing
from .base import Service, http_health

NGINX = Path("/usr/sbin/nginx")


class Gateway(Service):
    name = "gateway"
    ports = ("gateway",)
    stop_signal = signal.SIGQUIT  # graceful: finish open requests, then exit

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
            (self.home / sub).mkdir(parents=True, exist_ok=True)
        shutil.chown(self.home / "tmp", "www-data", "www-data")
        self._write_viewer_config()
        central_user = "central-admin"
        basic = base64.b64encode(
            f"{central_user}:{self.ctx.secrets['central_orthanc']}".encode()
        ).decode()
        template = Template(
            (self.ctx.settings.repo_root / "deploy/gateway/nginx.conf.template").read_text()
        )
        conf = template.substitute(
            GATEWAY_PORT=self.ctx.ports["gateway"],
            HOME=self.home,
            SERVER_CERT=self.ctx.pki["server_cert"],
            SERVER_KEY=self.ctx.pki["server_key"],
            OHIF_DIST=dist,
            VIEWER_CONFIG=self.home / "app-config.js",
            CENTRAL=f"127.0.0.1:{self.ctx.ports['central_http']}",
            CENTRAL_BASIC_AUTH=basic,
            INDEXER=f"127.0.0.1:{self.ctx.ports['indexer']}",
            KEYCLOAK=f"127.0.0.1:{self.ctx.ports['keycloak']}",
        )
        path = self.home / "nginx.conf"
        path.touch(mode=0o600, exist_ok=True)
        path.write_text(conf)

    def _write_viewer_config(self) -> None:
        template = (self.ctx.settings.repo_root / "deploy/gateway/app-config.js").read_text()
        values = {"GATEWAY_URL": self.ctx.gateway_url, "REALM": REALM}
        js = template
        for key, value in values.items():
            js = js.replace("${" + key + "}", json.dumps(value)[1:-1])
        (self.home / "app-config.js").write_text(js)

    def argv(self) -> list[str]:
        return [str(NGINX), "-p", str(self.home), "-c", str(self.home / "nginx.conf")]

    def health(self) -> str | None:
        def is_viewer(response) -> str | None:  # noqa: ANN001
            return None if "<html" in response.text.lower() else "index.html is not HTML"

        return http_health(
            f"{self.ctx.gateway_url}/", verify=str(self.ctx.pki["ca_cert"]), check=is_viewer
        )
