"""SeaweedFS: the S3 object store (master, volume, filer and S3 gateway in one process)."""

from __future__ import annotations

import json

import boto3
from botocore.client import Config
from botocore.exceptions import BotoCoreError, ClientError

from ..context import S3_BUCKET
from ..errors import PrerequisiteMissing
from .base import Service


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


class SeaweedFS(Service):
    name = "seaweedfs"
    ports = (
        "weed_master",
        "weed_master_grpc",
        "weed_volume",
        "weed_volume_grpc",
        "weed_filer",
        "weed_filer_grpc",
        "weed_s3",
        "weed_s3_grpc",
    )
    # `weed server` can take more than 15 s to exit after SIGTERM.
    stop_timeout_s = 40.0

    @property
    def endpoint(self) -> str:
        return self.ctx.http("weed_s3")

    def prepare(self) -> None:
        weed = self.ctx.settings.venv_bin / "weed"
        if not weed.exists():
            raise PrerequisiteMissing(self.name, f"{weed} not found: run make install")
        (self.ctx.state / "seaweedfs" / "data").mkdir(parents=True, exist_ok=True)
        identities = {
            "identities": [
                {
                    "name": "imaging-cloud",
                    "credentials": [
                        {
                            "accessKey": self.ctx.secrets["s3_access_key"],
                            "secretKey": self.ctx.secrets["s3_secret_key"],
                        }
                    ],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        config = self.ctx.state / "seaweedfs" / "s3.json"
        config.touch(mode=0o600, exist_ok=True)
        config.write_text(json.dumps(identities))

    def argv(self) -> list[str]:
        p = self.ctx.ports
        return [
            str(self.ctx.settings.venv_bin / "weed"),
            "server",
            f"-dir={self.ctx.state / 'seaweedfs' / 'data'}",
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
            f"-s3.config={self.ctx.state / 'seaweedfs' / 's3.json'}",
        ]

    def _client(self):
        return s3_client(
            self.endpoint, self.ctx.secrets["s3_access_key"], self.ctx.secrets["s3_secret_key"]
        )

    def health(self) -> str | None:
        """Healthy when the S3 API answers an authenticated, signed request."""
        try:
            self._client().list_buckets()
        except (BotoCoreError, ClientError) as exc:
            return f"S3 list_buckets: {type(exc).__name__}"
        return None

    def after_healthy(self) -> None:
        client = self._client()
        try:
            client.head_bucket(Bucket=S3_BUCKET)
        except ClientError:
            client.create_bucket(Bucket=S3_BUCKET)
