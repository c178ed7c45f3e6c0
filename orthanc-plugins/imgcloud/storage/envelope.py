"""Envelope encryption of one stored object.

Every object gets a fresh random data key. The payload is sealed with AES-256-GCM (or
SM4-GCM, GB/T 39786 deployments) under that key; the data key is wrapped with AES-256-GCM
(or SM4-GCM) under a key derived from a master key of the key ring. Layout, version 1:

    magic "ICE" | version u8 | algorithm u8 | key-id length u8 | key id (ASCII)
    | wrap nonce (12) | wrapped-key length u8 | wrapped data key (+16-byte tag)
    | payload nonce (12) | payload ciphertext | payload tag (16)

Associated data binds each part to its place: the wrapped key to (key id, object key), the
payload to (version, algorithm, object key, attachment type). A swapped or renamed object,
an edited header or a truncated body fails to open. The payload's associated data leaves
out the key id and the wrapped key, so `rewrap` can move an object to a new master key by
rewriting only its header.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from enum import IntEnum

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import IntegrityError
from .keyring import KeyRing

MAGIC = b"ICE"
VERSION = 1
NONCE_BYTES = 12
TAG_BYTES = 16


class Algorithm(IntEnum):
    AES_256_GCM = 1
    SM4_GCM = 2

    @classmethod
    def from_name(cls, name: str) -> Algorithm:
        names = {"aes-256-gcm": cls.AES_256_GCM, "sm4-gcm": cls.SM4_GCM}
        try:
            return names[name.lower()]
        except KeyError:
            raise ValueError(f"algorithm must be one of {', '.join(names)}") from None

    @property
    def data_key_bytes(self) -> int:
        return 32 if self is Algorithm.AES_256_GCM else 16


def _gcm_seal(alg: Algorithm, key: bytes, nonce: bytes, data: bytes, aad: bytes) -> bytes:
    if alg is Algorithm.AES_256_GCM:
        return AESGCM(key).encrypt(nonce, data, aad)
    enc = Cipher(algorithms.SM4(key), modes.GCM(nonce)).encryptor()
    enc.authenticate_additional_data(aad)
    return enc.update(data) + enc.finalize() + enc.tag


def _gcm_open(alg: Algorithm, key: bytes, nonce: bytes, sealed: bytes, aad: bytes) -> bytes:
    if len(sealed) < TAG_BYTES:
        raise InvalidTag
    if alg is Algorithm.AES_256_GCM:
        return AESGCM(key).decrypt(nonce, sealed, aad)
    body, tag = sealed[:-TAG_BYTES], sealed[-TAG_BYTES:]
    dec = Cipher(algorithms.SM4(key), modes.GCM(nonce, tag)).decryptor()
    dec.authenticate_additional_data(aad)
    return dec.update(body) + dec.finalize()


def _wrapping_key(alg: Algorithm, master: bytes) -> bytes:
    """A per-algorithm key-encryption key derived from a master key (HKDF-SHA256 / -SM3)."""
    if alg is Algorithm.AES_256_GCM:
        return HKDF(hashes.SHA256(), 32, None, b"imgcloud/v1/wrap/aes-256-gcm").derive(master)
    return HKDF(hashes.SM3(), 16, None, b"imgcloud/v1/wrap/sm4-gcm").derive(master)


@dataclass(frozen=True)
class Header:
    algorithm: Algorithm
    key_id: str
    wrap_nonce: bytes
    wrapped_key: bytes
    length: int  # bytes of the header in the object

    def encode(self) -> bytes:
        kid = self.key_id.encode("ascii")
        return (
            MAGIC
            + struct.pack("BBB", VERSION, self.algorithm, len(kid))
            + kid
            + self.wrap_nonce
            + struct.pack("B", len(self.wrapped_key))
            + self.wrapped_key
        )


def parse_header(blob: bytes, object_key: str) -> Header:
    """Read the header of a sealed object; IntegrityError if it is not one of ours."""
    try:
        if blob[:3] != MAGIC:
            raise IntegrityError(f"object {object_key}: not a sealed object (bad magic)")
        version, alg, kid_len = struct.unpack_from("BBB", blob, 3)
        if version != VERSION:
            raise IntegrityError(f"object {object_key}: unknown format version {version}")
        algorithm = Algorithm(alg)
        pos = 6
        key_id = blob[pos : pos + kid_len].decode("ascii")
        pos += kid_len
        wrap_nonce = blob[pos : pos + NONCE_BYTES]
        pos += NONCE_BYTES
        (wrapped_len,) = struct.unpack_from("B", blob, pos)
        pos += 1
        wrapped = blob[pos : pos + wrapped_len]
        pos += wrapped_len
    except (struct.error, ValueError, UnicodeDecodeError):
        raise IntegrityError(f"object {object_key}: truncated or malformed header") from None
    if len(wrap_nonce) != NONCE_BYTES or len(wrapped) != wrapped_len:
        raise IntegrityError(f"object {object_key}: truncated header")
    return Header(algorithm, key_id, wrap_nonce, wrapped, pos)


def _payload_aad(alg: Algorithm, object_key: str, attachment_type: int) -> bytes:
    return struct.pack("BBB", VERSION, alg, 0) + f"{object_key}|{attachment_type}".encode()


def _wrap_aad(key_id: str, object_key: str) -> bytes:
    return f"{key_id}|{object_key}".encode()


def seal(
    data: bytes,
    *,
    object_key: str,
    attachment_type: int,
    ring: KeyRing,
    algorithm: Algorithm = Algorithm.AES_256_GCM,
) -> bytes:
    """Encrypt one object under a fresh data key wrapped by the ring's current key."""
    data_key = os.urandom(algorithm.data_key_bytes)
    wrap_nonce = os.urandom(NONCE_BYTES)
    wrapped = _gcm_seal(
        algorithm,
        _wrapping_key(algorithm, ring.current),
        wrap_nonce,
        data_key,
        _wrap_aad(ring.current_id, object_key),
    )
    header = Header(algorithm, ring.current_id, wrap_nonce, wrapped, 0).encode()
    nonce = os.urandom(NONCE_BYTES)
    body = _gcm_seal(
        algorithm, data_key, nonce, data, _payload_aad(algorithm, object_key, attachment_type)
    )
    return header + nonce + body


def _unwrap(header: Header, ring: KeyRing, object_key: str) -> bytes:
    master = ring.get(header.key_id)
    if master is None:
        raise IntegrityError(
            f"object {object_key}: sealed under master key '{header.key_id}', "
            "which is not in the key ring"
        )
    try:
        return _gcm_open(
            header.algorithm,
            _wrapping_key(header.algorithm, master),
            header.wrap_nonce,
            header.wrapped_key,
            _wrap_aad(header.key_id, object_key),
        )
    except InvalidTag:
        raise IntegrityError(
            f"object {object_key}: data key does not unwrap (wrong key, or tampered header)"
        ) from None


def open_sealed(blob: bytes, *, object_key: str, attachment_type: int, ring: KeyRing) -> bytes:
    """Decrypt and authenticate an object; IntegrityError on any mismatch, never wrong bytes."""
    header = parse_header(blob, object_key)
    data_key = _unwrap(header, ring, object_key)
    nonce = blob[header.length : header.length + NONCE_BYTES]
    sealed = blob[header.length + NONCE_BYTES :]
    if len(nonce) != NONCE_BYTES:
        raise IntegrityError(f"object {object_key}: truncated body")
    try:
        return _gcm_open(
            header.algorithm,
            data_key,
            nonce,
            sealed,
            _payload_aad(header.algorithm, object_key, attachment_type),
        )
    except InvalidTag:
        raise IntegrityError(
            f"object {object_key}: payload fails authentication (tampered, truncated, "
            "or stored under another name)"
        ) from None


def rewrap(blob: bytes, *, object_key: str, ring: KeyRing) -> bytes | None:
    """The object re-headed under the ring's current key, or None if it is already there."""
    header = parse_header(blob, object_key)
    if header.key_id == ring.current_id:
        return None
    data_key = _unwrap(header, ring, object_key)
    wrap_nonce = os.urandom(NONCE_BYTES)
    wrapped = _gcm_seal(
        header.algorithm,
        _wrapping_key(header.algorithm, ring.current),
        wrap_nonce,
        data_key,
        _wrap_aad(ring.current_id, object_key),
    )
    new_header = Header(header.algorithm, ring.current_id, wrap_nonce, wrapped, 0).encode()
    return new_header + blob[header.length :]


def key_id_of(blob: bytes, object_key: str) -> str:
    return parse_header(blob, object_key).key_id
