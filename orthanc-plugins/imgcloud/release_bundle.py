"""An edge software release as one signed file (#15): build, verify, unpack.

    bundle.tar
      manifest.json   {"release": "2026.12.1", "config_schema": 1,
                       "files": {"imgcloud/edge_app.py": "<sha256 hex>", ...},
                       "requirements": ["httpx==0.28.1", ...]}
      manifest.sig    Ed25519 signature over the exact bytes of manifest.json
      payload/...     the plugin code, each file named in `files` and no other

What is trusted, and why: only the Ed25519 public key configured on the edge (and at
central). Everything in the bundle is attacker-controlled until `verify_bundle` has
1. bounded the bundle's size and its member count,
2. checked every member's name and type (regular files and directories only, no link, no
   absolute or `..` path, no duplicate, nothing outside manifest.json, manifest.sig and
   payload/),
3. verified the signature over the manifest bytes as they are in the file (not a
   re-serialisation), and only then parsed the manifest,
4. hashed every payload file in memory and compared the set of names and the hashes with
   the signed manifest.
All of this happens on the bytes in memory: nothing is written to disk before it passes.
`unpack_verified` then writes the payload into a temporary sibling of the destination
and renames it into place, so a destination either holds a whole verified release or
does not exist. Pure Python (`cryptography`, `tarfile`): the indexer imports it too.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tarfile
import tempfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import PluginError

MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
PAYLOAD = "payload"
CONFIG_SCHEMA = 1  # the configuration this code reads (plugin_settings); bump on a break
MAX_BUNDLE_BYTES = 64 * 1024 * 1024
MAX_MEMBERS = 5000
# a release names a directory on the edge: a safe, short name, never `.` or `..`
RELEASE = r"^[0-9A-Za-z][0-9A-Za-z._+-]{0,63}$"
SHA256 = r"^[0-9a-f]{64}$"
SKIPPED = ("__pycache__", ".pyc", ".pyo", ".mypy_cache", ".pytest_cache")


class BundleRefused(PluginError):
    """The bundle is not a release signed by the configured key; nothing of it was used."""


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    release: str = Field(pattern=RELEASE)
    config_schema: int = Field(ge=1)
    files: dict[str, str] = Field(min_length=1)
    requirements: list[str] = Field(default_factory=list, max_length=200)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- keys --------------------------------------------------------------------------------
def generate_private_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def public_key_pem(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_private_key(pem: bytes) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise BundleRefused("the release key is not an Ed25519 private key")
    return key


def load_public_key(pem: bytes) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError as exc:
        raise BundleRefused(f"the release public key cannot be read: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise BundleRefused("the release public key is not an Ed25519 key")
    return key


# -- build -------------------------------------------------------------------------------
def source_files(src_dir: Path) -> dict[str, bytes]:
    """Every file under src_dir (relative POSIX path -> bytes), caches left out."""
    found: dict[str, bytes] = {}
    for path in sorted(src_dir.rglob("*")):
        relative = path.relative_to(src_dir).as_posix()
        if any(part in SKIPPED or part.endswith(SKIPPED) for part in relative.split("/")):
            continue
        if path.is_symlink():
            raise BundleRefused(f"{relative}: a symbolic link cannot go into a release")
        if path.is_file():
            found[relative] = path.read_bytes()
    return found


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0  # reproducible: same code, same bytes
    tar.addfile(info, io.BytesIO(data))


def build_bundle(
    src_dir: Path,
    release: str,
    private_key: Ed25519PrivateKey,
    *,
    config_schema: int = CONFIG_SCHEMA,
    requirements: Iterable[str] = (),
) -> bytes:
    """The signed bundle of the code under src_dir (e.g. orthanc-plugins/)."""
    files = source_files(Path(src_dir))
    manifest = Manifest(
        release=release,
        config_schema=config_schema,
        files={name: sha256_hex(data) for name, data in files.items()},
        requirements=list(requirements),
    )
    manifest_bytes = json.dumps(manifest.model_dump(), indent=1, sort_keys=True).encode()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _add(tar, MANIFEST, manifest_bytes)
        _add(tar, SIGNATURE, private_key.sign(manifest_bytes))
        for name, data in files.items():
            _add(tar, f"{PAYLOAD}/{name}", data)
    return out.getvalue()


# -- verify ------------------------------------------------------------------------------
def _payload_name(name: str) -> str | None:
    """The payload-relative path of a member name, None for the two manifest files;
    BundleRefused for any name that is not plainly inside the bundle."""
    if name in (MANIFEST, SIGNATURE):
        return None
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or "\\" in name or "\x00" in name:
        raise BundleRefused(f"member {name!r}: not a plain relative path")
    if path.parts[:1] != (PAYLOAD,) or len(path.parts) < 2:
        raise BundleRefused(f"member {name!r}: outside payload/")
    return PurePosixPath(*path.parts[1:]).as_posix()


def _read_members(data: bytes) -> tuple[bytes, bytes, dict[str, bytes]]:
    """manifest bytes, signature, payload files: read from memory, every member checked."""
    if len(data) > MAX_BUNDLE_BYTES:
        raise BundleRefused(f"bundle of {len(data)} bytes: above {MAX_BUNDLE_BYTES}")
    manifest = signature = None
    payload: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            members = tar.getmembers()
            if len(members) > MAX_MEMBERS:
                raise BundleRefused(f"{len(members)} members: above {MAX_MEMBERS}")
            # what the members claim to hold, before any is read: a sparse member's content
            # is expanded to its stated size, so a tiny bundle could claim gigabytes
            claimed = sum(m.size for m in members)
            if claimed > MAX_BUNDLE_BYTES:
                raise BundleRefused(f"members of {claimed} bytes: above {MAX_BUNDLE_BYTES}")
            for member in members:
                relative = _payload_name(member.name)
                if member.isdir() and relative is not None:
                    continue
                if member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):  # no sparse files
                    raise BundleRefused(f"member {member.name!r}: not a regular file")
                extracted = tar.extractfile(member)
                content = extracted.read() if extracted is not None else b""
                if relative is None:
                    if (manifest if member.name == MANIFEST else signature) is not None:
                        raise BundleRefused(f"member {member.name!r} twice")
                    if member.name == MANIFEST:
                        manifest = content
                    else:
                        signature = content
                elif relative in payload:
                    raise BundleRefused(f"member {member.name!r} twice")
                else:
                    payload[relative] = content
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise BundleRefused(f"not a release bundle (tar): {type(exc).__name__}") from None
    if manifest is None or signature is None:
        raise BundleRefused("unsigned: manifest.json and manifest.sig are both required")
    return manifest, signature, payload


def verify_bundle(data: bytes, public_key: Ed25519PublicKey) -> Manifest:
    """The signed manifest of a bundle whose every file matches it; BundleRefused
    otherwise. Reads memory only: nothing is written, nothing imported."""
    manifest_bytes, signature, payload = _read_members(data)
    try:
        public_key.verify(signature, manifest_bytes)
    except InvalidSignature:
        raise BundleRefused(
            "the manifest's signature does not verify with the release key"
        ) from None
    try:  # signed by the platform, and still checked: the names become paths on disk
        manifest = Manifest.model_validate_json(manifest_bytes)
    except ValidationError as exc:
        raise BundleRefused(f"signed manifest invalid: {exc.error_count()} problem(s)") from None
    for name, digest in manifest.files.items():
        _payload_name(f"{PAYLOAD}/{name}")
        if not re.match(SHA256, digest):
            raise BundleRefused(f"manifest: {name!r} has no SHA-256")
    if set(payload) != set(manifest.files):
        extra = sorted(set(payload) - set(manifest.files))[:3]
        missing = sorted(set(manifest.files) - set(payload))[:3]
        raise BundleRefused(f"payload differs from the manifest: extra {extra}, missing {missing}")
    for name, content in payload.items():
        if sha256_hex(content) != manifest.files[name]:
            raise BundleRefused(f"payload file {name!r} does not match its signed hash")
    return manifest


def unpack_verified(data: bytes, public_key: Ed25519PublicKey, dest_dir: Path) -> Manifest:
    """Verify, then write the release to dest_dir: payload/ with the code, and the
    manifest and its signature beside it (the running code finds its release there).
    dest_dir must not exist yet; it appears whole (a rename) or not at all."""
    manifest = verify_bundle(data, public_key)
    manifest_bytes, signature, payload = _read_members(data)  # the same, already verified
    dest_dir = Path(dest_dir)
    if dest_dir.exists():
        raise BundleRefused(f"{dest_dir} exists already")
    dest_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest_dir.name}.", dir=dest_dir.parent))
    try:
        for name, content in payload.items():
            target = staging / PAYLOAD / name
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as out:
                out.write(content)
                out.flush()
                os.fsync(out.fileno())
        (staging / MANIFEST).write_bytes(manifest_bytes)
        (staging / SIGNATURE).write_bytes(signature)
        staging.chmod(0o700)  # mkdtemp's own mode; the stack keeps every directory private
        os.replace(staging, dest_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest
