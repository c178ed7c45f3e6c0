"""Object names for attachments.

`<prefix><u0u1>/<u2u3>/<uuid>.<content type>`: Orthanc's attachment UUIDs are random, so
the two leading hex pairs spread objects evenly over 65,536 prefixes. S3 implementations
partition their index by key prefix (AWS, Ceph RGW bucket-index shards, SeaweedFS filer
directories), so a bucket with billions of objects keeps its write and list rates.
Orthanc 1.10.1 offers no per-attachment custom data, so the name must derive from the UUID.
"""

from __future__ import annotations

import re

_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_KEY = re.compile(
    r"^(?P<p>.*?)(?P<a>[0-9a-f]{2})/(?P<b>[0-9a-f]{2})/"
    r"(?P<uuid>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\.(?P<t>\d+)$"
)


def object_key(prefix: str, attachment_uuid: str, content_type: int) -> str:
    """The object name of one attachment."""
    uuid = attachment_uuid.lower()
    if not _UUID.match(uuid):
        raise ValueError("attachment UUID is not a canonical UUID")
    return f"{prefix}{uuid[0:2]}/{uuid[2:4]}/{uuid}.{int(content_type)}"


def parse_object_key(prefix: str, key: str) -> tuple[str, int] | None:
    """(attachment uuid, content type) for one of our object names, else None."""
    if not key.startswith(prefix):
        return None
    match = _KEY.match(key[len(prefix) :])
    if (
        not match
        or match["p"]
        or match["uuid"][0:2] != match["a"]
        or match["uuid"][2:4] != match["b"]
    ):
        return None
    return match["uuid"], int(match["t"])
