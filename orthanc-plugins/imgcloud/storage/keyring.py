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
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import KeyRingError

MASTER_KEY_BYTES = 32
_KEY_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


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

    def summary(self) -> dict[str, Any]:
        """What a status answer may show: the version and the key ids, never material."""
        return {"version": self.version, "current": self.current_id, "keys": list(self._keys)}

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


def write_key_ring(ring: KeyRing, path: Path) -> None:
    """Write a key ring file readable by its owner only (atomically). A ring root replaces
    (a key added, promoted, retired) keeps its owner: the Orthanc's service uid must still
    read it."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    if os.geteuid() == 0 and path.exists():
        before = path.stat()
        os.fchown(fd, before.st_uid, before.st_gid)
    with os.fdopen(fd, "w") as out:
        out.write(ring.to_json())
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


@contextmanager
def _changing(path: Path) -> Iterator[None]:
    # One change of a ring at a time (an operator and the stack's rotate-key, say): the lock
    # file stays beside the ring; a crashed writer's lock goes with its process.
    lock = path.with_suffix(path.suffix + ".lock")
    fd = os.open(lock, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def update_key_ring(
    path: Path, change: Callable[[KeyRing], KeyRing], setting: str = "KeyRingFile"
) -> tuple[KeyRing, KeyRing]:
    """Read, change and write back a ring file under a lock; (before, after). A change that
    returns the same ring writes nothing."""
    with _changing(path):
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
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise KeyRingError(f"key file {path}: cannot read: {exc.strerror}") from None
    with os.fdopen(fd) as source:
        if stat.S_IMODE(os.fstat(source.fileno()).st_mode) & 0o077:
            raise KeyRingError(
                f"key file {path}: others than its owner may read it; chmod 600 it "
                "(and treat the key as exposed if others did)"
            )
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
