"""SeaweedFS: the S3 object store (master, volume, filer and S3 gateway in one process).

Only the S3 API, with the stack's keys, reaches the archive. SeaweedFS's own security
(security.toml in the config directory) closes the other doors: the master's and filer's
HTTP APIs are off (`-disableHttp`), the volume server wants a JWT signed with the stack's
keys for every read and write, and every gRPC port wants a client certificate from the
stack's CA with the common name "seaweedfs" (mutual TLS). Logs go to var/log, and the
local sockets SeaweedFS makes in /tmp to a private directory (its own mount namespace).

The bucket's path rule asks for fsync on every write (`fs.configure -fsync`), and the
filer keeps its entries (the objects' names) in the stack's PostgreSQL (seaweedfs_filer.py),
so that S3's 200, after which central tells Orthanc the instance is stored, means the object
and its name are on disk.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import boto3
from botocore.client import Config
from botocore.exceptions import BotoCoreError, ClientError

from ..context import S3_BUCKET, StackContext
from ..errors import PrerequisiteMissing, ServiceUnhealthy
from ..pki import issue_leaf
from ..ports import SEAWEEDFS_PORTS
from .base import Service
from .seaweedfs_filer import (
    LEVELDB2,
    POSTGRES2,
    filer_toml,
    legacy_store,
)

UNSHARE = "/usr/bin/unshare"
# The common name every gRPC peer of SeaweedFS must present (the CA also signs others).
GRPC_COMMON_NAME = "seaweedfs"
_GRPC_SERVERS = ("master", "volume", "filer", "s3")
SHELL_TIMEOUT_S = 60.0
# A small object in a bucket of its own that health() reads back: after a restart the S3
# API answers before the volume server has told the master its volumes, and reads of
# stored objects fail (InternalError) until it has.
PROBE_BUCKET = "seaweedfs-probe"
PROBE_KEY = "readable"


def bucket_prefix(bucket: str) -> str:
    """The filer path under which SeaweedFS keeps an S3 bucket's objects."""
    return f"/buckets/{bucket}/"


def fsync_command(bucket: str, fsync: bool = True) -> str:
    """The `weed shell` line that sets (or, fsync=False, drops) the bucket's fsync rule."""
    if not fsync:
        return f"fs.configure -locationPrefix={bucket_prefix(bucket)} -delete -apply"
    return f"fs.configure -locationPrefix={bucket_prefix(bucket)} -fsync -apply"


def fsync_rule_applied(shell_output: str, bucket: str) -> bool:
    """Whether fs.configure's printed configuration has the bucket's rule with fsync on.

    fs.configure prints the whole filer.conf as JSON after the line it ran ("locations":
    [{"locationPrefix": ..., "fsync": true}, ...]); the shell's prompts and notes are
    around it, so the JSON object is cut out from the first brace to the last.
    """
    start, end = shell_output.find("{"), shell_output.rfind("}")
    if start < 0 or end < start:
        return False
    try:
        conf = json.loads(shell_output[start : end + 1])
    except ValueError:
        return False
    return any(
        loc.get("locationPrefix") == bucket_prefix(bucket) and loc.get("fsync") is True
        for loc in conf.get("locations", [])
    )


def security_toml(
    keys: dict[str, str], ca: str | None = None, cert: str = "", key: str = ""
) -> str:
    """SeaweedFS's security.toml: JWT signing keys, and mutual TLS on every gRPC port when
    a CA is given (the compose deployment has none of its own: deploy/compose)."""
    lines = [
        "[jwt.signing]",
        f'key = "{keys["weed_jwt_volume_write"]}"',
        "expires_after_seconds = 10",
        "[jwt.signing.read]",
        f'key = "{keys["weed_jwt_volume_read"]}"',
        "expires_after_seconds = 60",
        "[jwt.filer_signing]",
        f'key = "{keys["weed_jwt_filer_write"]}"',
        "expires_after_seconds = 10",
        "[jwt.filer_signing.read]",
        f'key = "{keys["weed_jwt_filer_read"]}"',
        "expires_after_seconds = 60",
        "[access]",
        "ui = false",
        "[filer.expose_directory_metadata]",
        "enabled = false",
        # SeaweedFS's [guard] white list takes the address from X-Forwarded-For, so any
        # caller can claim one: it protects nothing here. The HTTP APIs it would guard are
        # off instead (-disableHttp), and the JWT keys guard the volume server.
        "[guard]",
        'white_list = ""',
    ]
    if ca is None:
        return "\n".join(lines) + "\n"
    lines += ["[grpc]", f'ca = "{ca}"']
    for section in (*_GRPC_SERVERS, "client"):
        lines += [f"[grpc.{section}]", f'cert = "{cert}"', f'key = "{key}"']
        if section != "client":
            lines.append(f'allowed_commonNames = "{GRPC_COMMON_NAME}"')
    return "\n".join(lines) + "\n"


def s3_client(endpoint: str, access_key: str, secret_key: str):
    """A boto3 S3 client with path-style addressing and short timeouts."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name="us-east-1",
        config=Config(
            s3={"addressing_style": "path"},
            connect_timeout=3,
            read_timeout=10,
            retries={"max_attempts": 1},
        ),
    )


def require_weed(ctx: StackContext, service: str) -> None:
    """PrerequisiteMissing unless the weed binary and unshare (its private /tmp) exist."""
    weed = ctx.settings.venv_bin / "weed"
    if not weed.exists():
        raise PrerequisiteMissing(service, f"{weed} not found: run make install")
    if not Path(UNSHARE).exists():
        raise PrerequisiteMissing(service, f"{UNSHARE} not found (util-linux)")


def write_private(path: Path, text: str) -> None:
    """Write a file only its owner reads (created 0600 before any content goes in)."""
    path.touch(mode=0o600, exist_ok=True)
    path.write_text(text)


def s3_identities(secrets: dict[str, str]) -> str:
    """The S3 gateway's identities (`-s3.config`): the stack's one key pair, every action."""
    identities = {
        "identities": [
            {
                "name": "imaging-cloud",
                "credentials": [
                    {
                        "accessKey": secrets["s3_access_key"],
                        "secretKey": secrets["s3_secret_key"],
                    }
                ],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    return json.dumps(identities)


def private_tmp_argv(tmp: Path, argv: list[str]) -> list[str]:
    """argv run in a mount namespace of its own where /tmp is `tmp`: SeaweedFS puts
    plaintext local sockets at fixed paths in /tmp (seaweedfs-<component>-grpc-<port>.sock),
    whatever TMPDIR says."""
    return [
        UNSHARE,
        "--mount",
        "--propagation",
        "private",
        "/bin/sh",
        "-c",
        'mount --bind "$0" /tmp && exec "$@"',
        str(tmp),
        *argv,
    ]


def s3_health(client) -> str | None:
    """None when the S3 API answers an authenticated, signed request and the probe object,
    once written (provision_buckets), reads back."""
    try:
        client.list_buckets()
    except (BotoCoreError, ClientError) as exc:
        return f"S3 list_buckets: {type(exc).__name__}"
    try:
        client.get_object(Bucket=PROBE_BUCKET, Key=PROBE_KEY)["Body"].read()
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in ("NoSuchKey", "NoSuchBucket"):
            return f"S3 GetObject of the probe: {exc.response.get('Error', {}).get('Code')}"
    except BotoCoreError as exc:
        return f"S3 GetObject of the probe: {type(exc).__name__}"
    return None


def provision_buckets(client) -> None:
    """The archive's bucket and the probe's (idempotent), and the probe object."""
    for bucket in (S3_BUCKET, PROBE_BUCKET):
        try:
            client.head_bucket(Bucket=bucket)
        except ClientError:
            client.create_bucket(Bucket=bucket)
    client.put_object(Bucket=PROBE_BUCKET, Key=PROBE_KEY, Body=b"readable")


def run_weed_shell(argv: list[str], command: str, *, cwd: Path, name: str) -> str:
    """Run one `weed shell` command; its output (stdout and stderr together)."""
    try:
        result = subprocess.run(
            argv,
            input=command + "\n",
            capture_output=True,
            text=True,
            timeout=SHELL_TIMEOUT_S,
            check=False,
            cwd=cwd,
        )
    except subprocess.TimeoutExpired as exc:
        raise ServiceUnhealthy(name, f"weed shell timed out: {command}") from exc
    return result.stdout + result.stderr


class SeaweedFS(Service):
    name = "seaweedfs"
    ports = SEAWEEDFS_PORTS
    # `weed server` can take more than 15 s to exit after SIGTERM.
    stop_timeout_s = 40.0
    # More `weed server` options, appended (bench.weed_settings tries settings this way).
    extra_args: tuple[str, ...] = ()
    # A stack left running by an older release gets the bucket's fsync rule on `up` too,
    # and its filer entries moved from leveldb2 to postgres2 (seaweedfs_filer.py).
    provision_when_running = True
    # The filer's store; benchmarks set LEVELDB2 with a folder of their own to compare.
    filer_store: str = POSTGRES2
    leveldb_dir: Path | None = None

    @property
    def endpoint(self) -> str:
        return self.ctx.http("weed_s3")

    @property
    def home(self) -> Path:
        return self.ctx.state / "seaweedfs"

    @property
    def config_dir(self) -> Path:
        """security.toml lives here; `weed shell -config_dir=...` uses it too."""
        return self.home / "config"

    def prepare(self) -> None:
        require_weed(self.ctx, self.name)
        for sub in ("", "data", "config", "tmp"):
            (self.home / sub).mkdir(mode=0o700, parents=True, exist_ok=True)
            (self.home / sub).chmod(0o700)
        cert, key = issue_leaf(self.ctx.pki["ca_cert"].parent, "seaweedfs", GRPC_COMMON_NAME)
        write_private(
            self.config_dir / "security.toml",
            security_toml(self.ctx.secrets, str(self.ctx.pki["ca_cert"]), str(cert), str(key)),
        )
        write_private(self.home / "s3.json", s3_identities(self.ctx.secrets))
        legacy = legacy_store(self.data_dir)
        if self.filer_store == POSTGRES2 and legacy is not None:
            # A stack made before postgres2 keeps its leveldb2 store: the automatic move
            # (fs.meta.save, restart, fs.meta.load) lost objects' names in the upgrade test
            # (2 runs of 2), so it is not done; docs/archive.md says how it stands.
            self.write_filer_toml(LEVELDB2, legacy)
        else:
            self.write_filer_toml(self.filer_store, self.leveldb_dir)

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    def write_filer_toml(self, store: str, leveldb_dir: Path | None = None) -> None:
        write_private(
            self.config_dir / "filer.toml",
            filer_toml(
                store,
                password=self.ctx.secrets["db_seaweedfs"],
                port=self.ctx.ports["postgres"],
                leveldb_dir=str(leveldb_dir or self.data_dir / "filerldb2"),
            ),
        )

    def argv(self) -> list[str]:
        # /tmp is the stack's private seaweedfs/tmp/ (private_tmp_argv).
        return private_tmp_argv(self.home / "tmp", self.weed_argv())

    def weed_argv(self) -> list[str]:
        p = self.ctx.ports
        return [
            str(self.ctx.settings.venv_bin / "weed"),
            "-logtostderr",  # into var/log/seaweedfs.log, not /tmp/weed.*
            f"-config_dir={self.config_dir}",
            "server",
            "-disableHttp",  # master and filer: gRPC only; S3 is the one HTTP door
            f"-dir={self.home / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={p['weed_master']}",
            f"-master.port.grpc={p['weed_master_grpc']}",
            "-master.volumeSizeLimitMB=512",
            "-master.telemetry=false",
            f"-volume.port={p['weed_volume']}",
            f"-volume.port.grpc={p['weed_volume_grpc']}",
            "-volume.max=0",
            "-filer",
            f"-filer.port={p['weed_filer']}",
            f"-filer.port.grpc={p['weed_filer_grpc']}",
            "-s3",
            f"-s3.port={p['weed_s3']}",
            f"-s3.port.grpc={p['weed_s3_grpc']}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={self.home / 's3.json'}",
            # Request counters for the benchmarks; read-only, on loopback like the rest.
            f"-metricsPort={p['weed_metrics']}",
            "-metricsIp=127.0.0.1",
            *self.extra_args,
        ]

    def _client(self):
        return s3_client(
            self.endpoint, self.ctx.secrets["s3_access_key"], self.ctx.secrets["s3_secret_key"]
        )

    def health(self) -> str | None:
        """Healthy when the S3 API answers an authenticated, signed request and the probe
        object, once written (after_healthy), reads back."""
        return s3_health(self._client())

    def after_healthy(self) -> None:
        provision_buckets(self._client())
        self.configure_fsync(True)

    def shell_argv(self) -> list[str]:
        """`weed shell` against this stack's master and filer, over mutual-TLS gRPC."""
        p = self.ctx.ports
        return [
            str(self.ctx.settings.venv_bin / "weed"),
            f"-config_dir={self.config_dir}",
            "shell",
            f"-master=127.0.0.1:{p['weed_master']}.{p['weed_master_grpc']}",
            f"-filer=127.0.0.1:{p['weed_filer']}.{p['weed_filer_grpc']}",
        ]

    def shell(self, command: str) -> str:
        """Run one `weed shell` command; its output (stdout and stderr together)."""
        return run_weed_shell(self.shell_argv(), command, cwd=self.home, name=self.name)

    def configure_fsync(self, fsync: bool) -> None:
        """Set the bucket's fsync rule (idempotent: fs.configure replaces the rule for the
        prefix); fsync=False drops it, for benchmarks that measure its cost."""
        output = self.shell(fsync_command(S3_BUCKET, fsync))
        if fsync_rule_applied(output, S3_BUCKET) != fsync:
            last = output.strip().splitlines()[-1:] or ["no output"]
            raise ServiceUnhealthy(
                self.name, f"fs.configure fsync={fsync} not applied: {last[0][:200]}", self.log
            )
