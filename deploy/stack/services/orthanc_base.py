"""What every Orthanc process of the stack shares: a home, a key folder of its own, its
configuration (the repo's static file merged with the stack's run-time values), and a
health check against its Python plugin's status route."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from imgcloud.storage.keyring import KeyRing, write_key_ring

from ..errors import PrerequisiteMissing
from ..sandbox import orthanc_command, platform_for
from .base import Service, http_health


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge extra into a copy of base (extra wins)."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


class OrthancService(Service):
    role: str = ""  # what the Python plugin's status route must answer
    static_config: str = ""
    http_port: str = ""
    http_user: str = ""
    password_key: str = ""
    redact_log = True  # Orthanc's core logs PatientID on some failed stores, at ERROR level

    @property
    def home(self) -> Path:
        return self.ctx.state / self.name

    @property
    def url(self) -> str:
        return self.ctx.http(self.http_port)

    @property
    def credentials(self) -> tuple[str, str]:
        return (self.http_user, self.ctx.secrets[self.password_key])

    def runtime_config(self) -> dict[str, Any]:
        raise NotImplementedError

    @property
    def key_dir(self) -> Path:
        """This Orthanc's own folder of keys/ (its key ring, its credentials): the only
        one of keys/ its mount namespace shows it, read-only (0700, the service uid)."""
        return self.ctx.state / "keys" / self.name

    @property
    def key_ring_file(self) -> Path:
        """This Orthanc's master key ring (generated once per stack, mode 0600)."""
        return self.key_dir / "keyring.json"

    def ensure_key_ring(self) -> Path:
        path = self.key_ring_file
        self.key_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        # A stack started before the service uid kept every ring flat in keys/, where
        # one Orthanc's namespace cannot show its own without the others'.
        flat = self.ctx.state / "keys" / f"{self.name}-keyring.json"
        for old, new in ((flat, path), (flat.with_suffix(".rewrap-checkpoint"),
                                        path.with_suffix(".rewrap-checkpoint"))):  # fmt: skip
            if old.exists() and not new.exists():
                os.replace(old, new)
        if not path.exists():
            write_key_ring(KeyRing.generate("k1"), path)
        return path

    def write_private(self, name: str, content: str) -> Path:
        """A credentials file in this Orthanc's key folder (0600, the service uid); the
        flat keys/ copy an older stack wrote is removed."""
        path = self.key_dir / name
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.touch(mode=0o600, exist_ok=True)
        path.write_text(content)
        (self.ctx.state / "keys" / f"{self.name}-{name}").unlink(missing_ok=True)
        return path

    def prepare(self) -> None:
        platform_for(self.ctx.settings).check()
        if not self.ctx.settings.bind_shim.exists():
            raise PrerequisiteMissing(
                self.name, f"{self.ctx.settings.bind_shim} not built: run make install"
            )
        (self.home / "storage").mkdir(parents=True, exist_ok=True)
        self.ensure_key_ring()
        static = json.loads((self.ctx.settings.repo_root / self.static_config).read_text())
        config = deep_merge(static, self.runtime_config())
        path = self.home / "orthanc.json"  # it holds passwords: 0600, the service uid
        path.touch(mode=0o600, exist_ok=True)
        path.write_text(json.dumps(config, indent=2))

    def _command(self) -> tuple[list[str], dict[str, str]]:
        # Orthanc writes its own home only (storage, queues) and reads its own key folder;
        # the other Orthancs' homes and keys are not in its mount namespace.
        return orthanc_command(
            self.ctx.settings, self.home / "orthanc.json", [self.home], private=[self.key_dir]
        )

    def argv(self) -> list[str]:
        return self._command()[0]

    def env(self) -> dict[str, str]:
        return self._command()[1]

    def common_runtime(self) -> dict[str, Any]:
        return {
            "HttpPort": self.ctx.ports[self.http_port],
            "StorageDirectory": str(self.home / "storage"),
            "IndexDirectory": str(self.home / "storage"),
            "RegisteredUsers": {self.http_user: self.ctx.secrets[self.password_key]},
            "PythonVerbose": False,
        }

    def health(self) -> str | None:
        def plugin_loaded(response) -> str | None:
            role = response.json().get("role")
            return None if role == self.role else f"plugin role {role!r}, not {self.role!r}"

        return http_health(
            f"{self.url}/imaging-cloud/status", auth=self.credentials, check=plugin_loaded
        )
