"""Master keys that wrap the per-object data keys.

A key ring file is JSON: {"current": "k2", "keys": {"k1": "<base64 32 bytes>", "k2": ...}}.
New objects are sealed under `current`; every listed key stays readable. Retiring a key is
removing it from the file once `rewrap` has moved every object off it.
Key material never appears in logs, reprs or error messages.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import KeyRingError

MASTER_KEY_BYTES = 32
_KEY_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


@dataclass(frozen=True)
class KeyRing:
    current_id: str
    _keys: Mapping[str, bytes] = field(repr=False)

    def __post_init__(self) -> None:
        if self.current_id not in self._keys:
            raise KeyRingError(f"key ring: current key '{self.current_id}' is not in 'keys'")
        for key_id, key in self._keys.items():
            if not _KEY_ID.match(key_id):
                raise KeyRingError(f"key ring: key id {key_id!r} must match {_KEY_ID.pattern}")
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
            return cls(current_id=str(doc.get("current", "")), _keys=keys)
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
                "current": self.current_id,
                "keys": {k: base64.b64encode(v).decode() for k, v in self._keys.items()},
            },
            indent=1,
        )

    def rotated(self, new_id: str) -> KeyRing:
        """A key ring with a fresh random key `new_id` as current (old keys kept)."""
        if new_id in self._keys:
            raise KeyRingError(f"key ring: key id '{new_id}' exists already")
        return KeyRing(new_id, {**self._keys, new_id: secrets.token_bytes(MASTER_KEY_BYTES)})

    def without(self, key_id: str) -> KeyRing:
        """The key ring with `key_id` retired (it must not be the current key)."""
        if key_id == self.current_id:
            raise KeyRingError("key ring: the current key cannot be retired")
        return KeyRing(self.current_id, {k: v for k, v in self._keys.items() if k != key_id})

    @classmethod
    def generate(cls, key_id: str = "k1") -> KeyRing:
        return cls(key_id, {key_id: secrets.token_bytes(MASTER_KEY_BYTES)})


def write_key_ring(ring: KeyRing, path: Path) -> None:
    """Write a key ring file readable by its owner only (atomically). A ring root replaces
    (rotation, retirement) keeps its owner: the Orthanc's service uid must still read it."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    if os.geteuid() == 0 and path.exists():
        before = path.stat()
        os.fchown(fd, before.st_uid, before.st_gid)
    with os.fdopen(fd, "w") as out:
        out.write(ring.to_json())
    os.replace(tmp, path)
