"""Personal data at rest: national ID and phone numbers (and names) are encrypted with
AES-256-GCM or SM4-GCM, and found through a keyed blind index (HMAC-SHA256), so the
database never holds them in clear and equality lookups still work.

Ciphertext layout: version (1) | algorithm (1) | key id length (1) | key id | nonce (12) |
ciphertext+tag. The column name is bound as associated data, so a value cannot be moved
to another column unnoticed.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import IndexerError

VERSION = 1
AES_256_GCM, SM4_GCM = 1, 2
ALGORITHMS = {"aes-256-gcm": AES_256_GCM, "sm4-gcm": SM4_GCM}
# 复姓: two-character family names, for names written without a ^ between family and given
COMPOUND_SURNAMES = frozenset(
    "欧阳 司马 上官 诸葛 东方 皇甫 尉迟 公孙 慕容 长孙 宇文 司徒 令狐 夏侯 轩辕 端木 西门 "
    "南宫 独孤 申屠 澹台 百里 呼延 万俟 闻人 赫连 太史 钟离 宗政 濮阳 淳于 单于".split()
)
_NAME_NOISE = re.compile(r"[\s·•・.\-]+")


class KeyFileError(IndexerError):
    """The personal-data key file is missing or invalid (the service does not start)."""


def _sm4_gcm(key: bytes):  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    class _Sm4Gcm:
        def encrypt(self, nonce: bytes, data: bytes, aad: bytes) -> bytes:
            encryptor = Cipher(algorithms.SM4(key), modes.GCM(nonce)).encryptor()
            encryptor.authenticate_additional_data(aad)
            return encryptor.update(data) + encryptor.finalize() + encryptor.tag

        def decrypt(self, nonce: bytes, sealed: bytes, aad: bytes) -> bytes:
            decryptor = Cipher(algorithms.SM4(key), modes.GCM(nonce, sealed[-16:])).decryptor()
            decryptor.authenticate_additional_data(aad)
            return decryptor.update(sealed[:-16]) + decryptor.finalize()

    return _Sm4Gcm()


@dataclass(frozen=True)
class PiiCipher:
    key_id: str
    algorithm: int
    encryption_key: bytes
    blind_index_key: bytes

    @classmethod
    def from_file(cls, path: Path) -> PiiCipher:
        try:
            doc = json.loads(path.read_text())
            algorithm = ALGORITHMS[doc.get("algorithm", "aes-256-gcm")]
            key = base64.b64decode(doc["encryption_key"])
            blind = base64.b64decode(doc["blind_index_key"])
            key_id = str(doc["key_id"])
        except (OSError, ValueError, KeyError) as exc:
            raise KeyFileError(
                f"INDEXER_PII_KEY_FILE: cannot use {path}: {type(exc).__name__}"
            ) from None
        if len(key) != (32 if algorithm == AES_256_GCM else 16) or len(blind) < 32:
            raise KeyFileError("INDEXER_PII_KEY_FILE: key lengths do not fit the algorithm")
        if not 0 < len(key_id.encode()) < 64:
            raise KeyFileError("INDEXER_PII_KEY_FILE: key_id must be 1-63 bytes")
        return cls(key_id, algorithm, key, blind)

    @staticmethod
    def generate_document(algorithm: str = "aes-256-gcm", key_id: str = "k1") -> dict[str, str]:
        size = 32 if ALGORITHMS[algorithm] == AES_256_GCM else 16
        return {
            "key_id": key_id,
            "algorithm": algorithm,
            "encryption_key": base64.b64encode(os.urandom(size)).decode(),
            "blind_index_key": base64.b64encode(os.urandom(32)).decode(),
        }

    def _aead(self):  # type: ignore[no-untyped-def]
        if self.algorithm == AES_256_GCM:
            return AESGCM(self.encryption_key)
        return _sm4_gcm(self.encryption_key)

    def encrypt(self, value: str, column: str) -> bytes:
        nonce = os.urandom(12)
        key_id = self.key_id.encode()
        header = bytes([VERSION, self.algorithm, len(key_id)]) + key_id
        sealed = self._aead().encrypt(nonce, value.encode(), column.encode() + header)
        return header + nonce + sealed

    def decrypt(self, blob: bytes, column: str) -> str:
        if len(blob) < 4 or blob[0] != VERSION:
            raise IndexerError("unknown personal-data ciphertext version")
        key_len = blob[2]
        header = blob[: 3 + key_len]
        if header[3:].decode() != self.key_id or blob[1] != self.algorithm:
            raise IndexerError("personal data sealed under another key or algorithm")
        nonce, sealed = blob[3 + key_len : 15 + key_len], blob[15 + key_len :]
        return self._aead().decrypt(nonce, sealed, column.encode() + header).decode()

    def blind_index(self, value: str, kind: str) -> bytes:
        """Deterministic keyed digest for equality search (kind separates the domains)."""
        return hmac.new(self.blind_index_key, f"{kind}:{value}".encode(), hashlib.sha256).digest()


def name_parts(name: str) -> tuple[str, str]:
    """(normalised full name, family name) for the name blind index.

    A DICOM PN (`MA^HUA=马^华`) counts by its 汉字 group when it has one; the ^ between
    family and given name tells the family name, otherwise it is the first character (two
    for a 复姓). NFKC, case folded, spaces and middle dots dropped: 马华, 马 华 and 马^华
    give the same digest.
    """
    groups = [g for g in unicodedata.normalize("NFKC", name).split("=") if g.strip("^ ")]
    chosen = groups[1] if len(groups) > 1 else (groups[0] if groups else "")
    components = [_NAME_NOISE.sub("", c).casefold() for c in chosen.split("^")]
    full = "".join(components)
    if len(components) > 1 and components[0]:
        family = components[0]
    else:
        family = full[:2] if full[:2] in COMPOUND_SURNAMES else full[:1]
    return full, family


def name_digests(cipher: PiiCipher, name: str, birth_date: dt.date) -> dict[str, bytes]:
    """Blind-index digests of a person's name, each bound to the birth date: a name alone
    cannot be looked up, and the index shows only which patients share name and birth
    date. Kinds: 'name' (the full name), 'family' (the family name)."""
    full, family = name_parts(name)
    if not full:
        return {}
    born = birth_date.isoformat()
    return {
        "name": cipher.blind_index(f"{full}|{born}", "person_name"),
        "family": cipher.blind_index(f"{family}|{born}", "family_name"),
    }
