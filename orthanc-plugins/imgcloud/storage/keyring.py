"""Master keys that wrap the per-object data keys.

A key ring file is JSON:
    {"version": 3, "current": "k2", "keys": {"k1": "<base64 32 bytes>", "k2": ...}}
New objects are sealed under `current`; every listed key stays readable. `version` counts
the ring's changes (a file without it, as earlier releases wrote, reads as version 0).

Rotation has two phases, because several nodes each hold their own copy of the ring: a
new key is first added (not current) on every node, and made current only once every node
has loaded it; otherwise a node that switched first seals objects the others cannot read.
Retiring a key is removing it once `rewrap` has moved every object off it.
Key material never appears in logs, reprs or error messages.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import hmac
import json
import os
import re
import secrets
import stat
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import KeyRingError

MASTER_KEY_BYTES = 32
_KEY_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_KCV_MESSAGE = b"imgcloud key check value"


def key_check_value(material: bytes) -> str:
    """A key's check value: the first 8 bytes (hex) of HMAC-SHA256(key, a fixed message).
    Two nodes that show the same id and the same check value hold the same bytes; the
    value tells nothing useful about the key itself."""
    return hmac.new(material, _KCV_MESSAGE, "sha256").digest()[:8].hex()


@dataclass(frozen=True)
class KeyRing:
    current_id: str
    _keys: Mapping[str, bytes] = field(repr=False)
    version: int = 0

    def __post_init__(self) -> None:
        if self.current_id not in self._keys:
            raise KeyRingError(f"key ring: current key '{self.current_id}' is not in 'keys'")
        if isinstance(self.version, bool) or not isinstance(self.version, int):
            raise KeyRingError("key ring: 'version' must be a whole number")
        if self.version < 0:
            raise KeyRingError("key ring: 'version' must not be negative")
        for key_id, key in self._keys.items():
            check_key_id(key_id)
            if len(key) != MASTER_KEY_BYTES:
                raise KeyRingError(
                    f"key ring: key '{key_id}' is {len(key)} bytes, must be {MASTER_KEY_BYTES}"
                )

    @property
    def current(self) -> bytes:
        return self._keys[self.current_id]

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(self._keys)

    def get(self, key_id: str) -> bytes | None:
        return self._keys.get(key_id)

    def check_value(self, key_id: str) -> str | None:
        """The key check value of `key_id` (None if it is not in the ring)."""
        key = self._keys.get(key_id)
        return None if key is None else key_check_value(key)

    def summary(self) -> dict[str, Any]:
        """What a status answer may show: the version, the key ids and each key's check
        value (so that nodes can be compared by bytes, not ids), never material."""
        return {
            "version": self.version,
            "current": self.current_id,
            "keys": list(self._keys),
            "kcv": {key_id: key_check_value(key) for key_id, key in self._keys.items()},
        }

    def disagreement(self, other: KeyRing, pending: str | None = None) -> str | None:
        """Why `other` (another node's ring) cannot serve beside this one, or None: they
        must hold the same key ids with the same bytes and the same current key. `pending`,
        a key a rotation is adding, may be missing from one of them or current on one."""
        mine, theirs = set(self._keys) - {pending}, set(other._keys) - {pending}
        if mine != theirs:
            only = sorted(mine ^ theirs)
            return f"holds other key ids (differing: {', '.join(only)})"
        for key_id in sorted(set(self._keys) & set(other._keys)):
            if not hmac.compare_digest(self._keys[key_id], other._keys[key_id]):
                return f"holds other bytes under key id '{key_id}'"
        if self.current_id != other.current_id and pending not in (
            self.current_id,
            other.current_id,
        ):
            return f"has current key '{other.current_id}', not '{self.current_id}'"
        return None

    @classmethod
    def from_json(cls, text: str, source: str = "key ring") -> KeyRing:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise KeyRingError(f"{source}: not valid JSON (line {exc.lineno})") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("keys"), dict):
            raise KeyRingError(f"{source}: must be an object with 'current' and 'keys'")
        keys: dict[str, bytes] = {}
        for key_id, encoded in doc["keys"].items():
            try:
                keys[str(key_id)] = base64.b64decode(str(encoded), validate=True)
            except (binascii.Error, ValueError):
                raise KeyRingError(f"{source}: key '{key_id}' is not valid base64") from None
        if not keys:
            raise KeyRingError(f"{source}: 'keys' is empty")
        try:
            return cls(
                current_id=str(doc.get("current", "")),
                _keys=keys,
                version=doc.get("version", 0),
            )
        except KeyRingError as exc:
            detail = str(exc).removeprefix("key ring: ")
            raise KeyRingError(f"{source}: {detail}") from None

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], setting: str) -> KeyRing:
        """Load a key ring; errors name the setting that points at it."""
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise KeyRingError(
                f"{setting}: cannot read key ring file {path}: {exc.strerror}"
            ) from None
        return cls.from_json(text, source=f"{setting} ({path})")

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": self.version,
                "current": self.current_id,
                "keys": {k: base64.b64encode(v).decode() for k, v in self._keys.items()},
            },
            indent=1,
        )

    def holds(self, key_id: str, material: bytes) -> bool:
        """True if `key_id` is in the ring with exactly this material (constant time)."""
        present = self._keys.get(key_id)
        return present is not None and hmac.compare_digest(present, material)

    def with_key(self, key_id: str, material: bytes | None = None) -> KeyRing:
        """Phase 1 of a rotation: the ring with `key_id` added, not current. `material` is
        the key every node must share (None: a fresh random key, for a single node)."""
        check_key_id(key_id)
        if key_id in self._keys:
            raise KeyRingError(f"key ring: key '{key_id}' is in the ring already")
        key = secrets.token_bytes(MASTER_KEY_BYTES) if material is None else bytes(material)
        if len(key) != MASTER_KEY_BYTES:
            raise KeyRingError(f"key ring: a master key must be {MASTER_KEY_BYTES} bytes")
        return KeyRing(self.current_id, {**self._keys, key_id: key}, self.version + 1)

    def promoted(self, key_id: str) -> KeyRing:
        """Phase 2 of a rotation: the ring with `key_id`, already in it, current. Unchanged
        (same version) if it is current already."""
        if key_id not in self._keys:
            raise KeyRingError(
                f"key ring: key '{key_id}' is not in the ring; add it on every node first"
            )
        if key_id == self.current_id:
            return self
        return KeyRing(key_id, dict(self._keys), self.version + 1)

    def without(self, key_id: str) -> KeyRing:
        """The key ring with `key_id` retired (it must not be the current key)."""
        if key_id not in self._keys:
            raise KeyRingError(f"key ring: key '{key_id}' is not in the ring")
        if key_id == self.current_id:
            raise KeyRingError("key ring: the current key cannot be retired")
        return KeyRing(
            self.current_id,
            {k: v for k, v in self._keys.items() if k != key_id},
            self.version + 1,
        )

    @classmethod
    def generate(cls, key_id: str = "k1") -> KeyRing:
        """A new ring of one fresh key (version 1: its first change is its creation)."""
        return cls(key_id, {key_id: secrets.token_bytes(MASTER_KEY_BYTES)}, 1)


def check_key_id(key_id: str) -> None:
    if not _KEY_ID.match(key_id):
        raise KeyRingError(f"key ring: key id {key_id!r} must match {_KEY_ID.pattern}")


def write_key_ring(ring: KeyRing, path: Path, owner: tuple[int, int] | None = None) -> None:
    """Write a key ring file readable by its owner only, atomically: a fresh temporary file
    (exclusive, 0600) beside it, synced, renamed over it, and the folder synced. A ring
    root replaces (a key added, promoted, retired) keeps its owner, unless `owner` (uid,
    gid) is given: the Orthanc's service uid must still read it. A ring path that is a
    symbolic link is refused (root would write wherever it points)."""
    try:
        before = os.lstat(path)
    except FileNotFoundError:
        before = None
    if before is not None and not stat.S_ISREG(before.st_mode):
        raise KeyRingError(f"key ring {path}: not a regular file (a symbolic link?); refused")
    if owner is None and before is not None:
        owner = (before.st_uid, before.st_gid)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as out:
            os.fchmod(out.fileno(), 0o600)
            if owner is not None and os.geteuid() == 0:
                os.fchown(out.fileno(), *owner)
            out.write(ring.to_json())
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


@contextmanager
def changing_key_ring(path: Path) -> Iterator[None]:
    """One change of a ring at a time (an operator and the stack's rotate-key, say): the lock
    file stays beside the ring; a crashed writer's lock goes with its process. A lock path
    that is a symbolic link or no regular file is refused."""
    lock = path.with_suffix(path.suffix + ".lock")
    try:
        fd = os.open(
            lock, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o600
        )
    except OSError as exc:
        raise KeyRingError(f"key ring lock {lock}: cannot open: {exc.strerror}") from None
    try:
        held = os.fstat(fd)
        if not stat.S_ISREG(held.st_mode):
            raise KeyRingError(f"key ring lock {lock}: not a regular file; refused")
        _owned_as_ring(fd, held, path)
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _owned_as_ring(fd: int, held: os.stat_result, ring: Path) -> None:
    """Root's lock file takes the ring's owner, as a ring root rewrites does: the key folder
    holds the service uid's files only (docs/security.md's table of files at rest)."""
    if os.geteuid() != 0:
        return
    try:
        owner = os.lstat(ring)
    except OSError:
        return
    if stat.S_ISREG(owner.st_mode) and (held.st_uid, held.st_gid) != (owner.st_uid, owner.st_gid):
        os.fchown(fd, owner.st_uid, owner.st_gid)


def update_key_ring(
    path: Path, change: Callable[[KeyRing], KeyRing], setting: str = "KeyRingFile"
) -> tuple[KeyRing, KeyRing]:
    """Read, change and write back a ring file under a lock; (before, after). A change that
    returns the same ring writes nothing."""
    with changing_key_ring(path):
        before = KeyRing.from_file(path, setting)
        after = change(before)
        if after is not before:
            write_key_ring(after, path)
    return before, after


# -- the file that carries one new key to every node ----------------------------------------
# {"key_id": "k2", "key": "<base64>"}: the id travels with the material, so the key meant as
# k2 cannot be added as k3, and the file is refused unless its owner alone may read it.


def create_key_file(path: Path, key_id: str) -> bytes:
    """A fresh key for `key_id`, written to a new file (0600); an existing file is never
    overwritten (it may be the copy another node was given)."""
    check_key_id(key_id)
    material = secrets.token_bytes(MASTER_KEY_BYTES)
    doc = json.dumps({"key_id": key_id, "key": base64.b64encode(material).decode()})
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise KeyRingError(f"key file {path}: exists already") from None
    except OSError as exc:
        raise KeyRingError(f"key file {path}: cannot create: {exc.strerror}") from None
    with os.fdopen(fd, "w") as out:
        out.write(doc + "\n")
        out.flush()
        os.fsync(out.fileno())
    return material


def read_key_file(path: Path, key_id: str) -> bytes:
    """The key a key file carries for `key_id`; errors never show its content."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise KeyRingError(f"key file {path}: cannot read: {exc.strerror}") from None
    with os.fdopen(fd) as source:
        _check_key_file(path, os.fstat(source.fileno()))
        text = source.read()
    try:
        doc = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise KeyRingError(f"key file {path}: not valid JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("key"), str):
        raise KeyRingError(f"key file {path}: must be an object with 'key_id' and 'key'")
    if doc.get("key_id") != key_id:
        raise KeyRingError(f"key file {path}: holds another key than '{key_id}'")
    try:
        material = base64.b64decode(doc["key"], validate=True)
    except (binascii.Error, ValueError):
        raise KeyRingError(f"key file {path}: 'key' is not valid base64") from None
    if len(material) != MASTER_KEY_BYTES:
        raise KeyRingError(f"key file {path}: 'key' must be {MASTER_KEY_BYTES} bytes")
    return material


def _check_key_file(path: Path, info: os.stat_result) -> None:
    # Someone who could create the path before us (in /tmp, say) would plant a key they
    # know: it must be a regular file of ours (or root's), one link, ours alone to read.
    if not stat.S_ISREG(info.st_mode):
        raise KeyRingError(f"key file {path}: not a regular file; refused")
    if info.st_uid not in (os.geteuid(), 0):
        raise KeyRingError(
            f"key file {path}: owned by uid {info.st_uid}, not by this user or root; refused "
            "(treat the key as exposed)"
        )
    if info.st_nlink != 1:
        raise KeyRingError(f"key file {path}: has {info.st_nlink} hard links; refused")
    if stat.S_IMODE(info.st_mode) & 0o077:
        raise KeyRingError(
            f"key file {path}: others than its owner may read it; chmod 600 it "
            "(and treat the key as exposed if others did)"
        )
