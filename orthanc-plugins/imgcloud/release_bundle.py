"""An edge software release as one signed file (#15): build, verify, unpack.

    bundle.tar
      manifest.json   {"release": "2026.12.1", "sequence": 1765170000123, "config_schema": 1,
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
does not exist; its files are read-only (0400, directories 0500: the tree is the edge
uid's own, and the stack keeps every directory private).

`sequence` (review M3) is the release's number, strictly increasing from build to build
and covered by the signature: an edge refuses a release numbered below the highest it
ran healthy, so an older signed release cannot be ordered or replayed onto it. A manifest
without one (a bundle built before sequences) is refused.

`verify_release_dir` (review M4) checks an unpacked release at rest, at every boot,
before its code is imported: the signature of its manifest, and that payload/ holds
exactly the manifest's files (no link, no `__pycache__`, nothing more or less), each
with its signed SHA-256. Pure Python (`cryptography`, `tarfile`): the indexer imports it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import stat
import tarfile
import tempfile
import time
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
MAX_MANIFEST_BYTES = 4 * 1024 * 1024
MAX_SEQUENCE = 2**53  # exact in any JSON reader
FILE_MODE, DIR_MODE = 0o400, 0o500  # an unpacked release: read-only, private


class BundleRefused(PluginError):
    """The bundle is not a release signed by the configured key; nothing of it was used."""


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    release: str = Field(pattern=RELEASE)
    sequence: int = Field(ge=1, le=MAX_SEQUENCE)  # strictly increasing per build (M3)
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


def clock_sequence() -> int:
    """A release number from the clock: milliseconds since the epoch (deploy.release
    build also keeps it above the last one it built)."""
    return time.time_ns() // 1_000_000


def build_bundle(
    src_dir: Path,
    release: str,
    private_key: Ed25519PrivateKey,
    *,
    sequence: int | None = None,
    config_schema: int = CONFIG_SCHEMA,
    requirements: Iterable[str] = (),
) -> bytes:
    """The signed bundle of the code under src_dir (e.g. orthanc-plugins/); `sequence`
    defaults to `clock_sequence()`."""
    files = source_files(Path(src_dir))
    manifest = Manifest(
        release=release,
        sequence=clock_sequence() if sequence is None else sequence,
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


def verified_manifest(
    manifest_bytes: bytes, signature: bytes, public_key: Ed25519PublicKey
) -> Manifest:
    """The manifest, once its signature verifies over its exact bytes (not a
    re-serialisation) and its content is valid; BundleRefused otherwise."""
    try:
        public_key.verify(signature, manifest_bytes)
    except InvalidSignature:
        raise BundleRefused(
            "the manifest's signature does not verify with the release key"
        ) from None
    try:  # signed by the platform, and still checked: the names become paths on disk
        fields = json.loads(manifest_bytes)
        if isinstance(fields, dict) and "sequence" not in fields:
            raise BundleRefused(
                "signed manifest has no release sequence (built before sequences): rebuild it"
            )
        manifest = Manifest.model_validate(fields)
    except (ValueError, ValidationError) as exc:
        count = exc.error_count() if isinstance(exc, ValidationError) else 1
        raise BundleRefused(f"signed manifest invalid: {count} problem(s)") from None
    for name, digest in manifest.files.items():
        _payload_name(f"{PAYLOAD}/{name}")
        if not re.match(SHA256, digest):
            raise BundleRefused(f"manifest: {name!r} has no SHA-256")
    return manifest


def _compare(manifest: Manifest, digests: dict[str, str]) -> None:
    """The payload's files (name -> SHA-256) are exactly the manifest's."""
    if set(digests) != set(manifest.files):
        extra = sorted(set(digests) - set(manifest.files))[:3]
        missing = sorted(set(manifest.files) - set(digests))[:3]
        raise BundleRefused(f"payload differs from the manifest: extra {extra}, missing {missing}")
    for name, digest in digests.items():
        if digest != manifest.files[name]:
            raise BundleRefused(f"payload file {name!r} does not match its signed hash")


def verify_bundle(data: bytes, public_key: Ed25519PublicKey) -> Manifest:
    """The signed manifest of a bundle whose every file matches it; BundleRefused
    otherwise. Reads memory only: nothing is written, nothing imported."""
    manifest_bytes, signature, payload = _read_members(data)
    manifest = verified_manifest(manifest_bytes, signature, public_key)
    _compare(manifest, {name: sha256_hex(content) for name, content in payload.items()})
    return manifest


def unpack_verified(data: bytes, public_key: Ed25519PublicKey, dest_dir: Path) -> Manifest:
    """Verify, then write the release to dest_dir: payload/ with the code, and the
    manifest and its signature beside it (the running code finds its release there).
    dest_dir must not exist yet; it appears whole (a rename) or not at all, read-only."""
    manifest = verify_bundle(data, public_key)
    manifest_bytes, signature, payload = _read_members(data)  # the same, already verified
    dest_dir = Path(dest_dir)
    if dest_dir.exists():
        raise BundleRefused(f"{dest_dir} exists already")
    dest_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest_dir.name}.", dir=dest_dir.parent))
    try:
        for name, content in payload.items():
            _write_read_only(staging / PAYLOAD / name, content)
        _write_read_only(staging / MANIFEST, manifest_bytes)
        _write_read_only(staging / SIGNATURE, signature)
        for folder, _, _ in sorted(os.walk(staging / PAYLOAD), reverse=True):
            os.chmod(folder, DIR_MODE)  # deepest first; the release folder after the rename
        os.replace(staging, dest_dir)
        os.chmod(dest_dir, DIR_MODE)
    except BaseException:
        remove_release(staging)
        raise
    return manifest


def _write_read_only(target: Path, content: bytes) -> None:
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    with os.fdopen(fd, "wb") as out:
        out.write(content)
        out.flush()
        os.fsync(out.fileno())


def remove_release(path: Path) -> None:
    """Delete an unpacked release (read-only: its folders are made writable first)."""
    if not os.path.lexists(path):
        return
    for folder, _, _ in os.walk(path):
        os.chmod(folder, 0o700)
    shutil.rmtree(path, ignore_errors=True)


# -- at rest ---------------------------------------------------------------------------
def _read_regular(path: Path, limit: int) -> bytes:
    """A regular file's bytes (not through a link), at most `limit`."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as source:
        if not stat.S_ISREG(os.fstat(source.fileno()).st_mode):
            raise BundleRefused(f"{path.name}: not a regular file")
        data = source.read(limit + 1)
    if len(data) > limit:
        raise BundleRefused(f"{path.name}: above {limit} bytes")
    return data


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with os.fdopen(fd, "rb") as source:
        for block in iter(lambda: source.read(1 << 16), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_release_dir(release_dir: Path, public_key: Ed25519PublicKey) -> Manifest:
    """The manifest of an unpacked release whose payload/ is still exactly what was signed
    (review M4); BundleRefused naming the first difference otherwise. Nothing in the
    folder is trusted: only the public key. Reads only; a few hundred KB hashed."""
    release_dir = Path(release_dir)
    try:
        manifest_bytes = _read_regular(release_dir / MANIFEST, MAX_MANIFEST_BYTES)
        signature = _read_regular(release_dir / SIGNATURE, 1024)
        manifest = verified_manifest(manifest_bytes, signature, public_key)
        if manifest.release != release_dir.name:
            raise BundleRefused(f"the folder holds release {manifest.release}")
        root = release_dir / PAYLOAD
        if not stat.S_ISDIR(os.lstat(root).st_mode):
            raise BundleRefused(f"{PAYLOAD}: not a folder")
        digests: dict[str, str] = {}
        for folder, dirs, files in os.walk(root, onerror=_raise):
            for name in [*dirs, *files]:
                path = Path(folder) / name
                mode = os.lstat(path).st_mode
                relative = path.relative_to(root).as_posix()
                if name in dirs and stat.S_ISDIR(mode):
                    continue
                if not stat.S_ISREG(mode):
                    raise BundleRefused(f"payload {relative!r}: not a regular file")
                digests[relative] = _hash_file(path)
                if len(digests) > MAX_MEMBERS:
                    raise BundleRefused(f"payload: above {MAX_MEMBERS} files")
    except OSError as exc:
        raise BundleRefused(f"cannot be read: {type(exc).__name__}") from None
    _compare(manifest, digests)
    return manifest


def _raise(error: OSError) -> None:
    raise error
