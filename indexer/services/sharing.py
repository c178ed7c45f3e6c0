"""Patient share links (云胶片): the secret, its stored hash, and the QR code image."""

from __future__ import annotations

import base64
import hashlib
import io
import secrets

import segno

COOKIE = "imgcloud_share"  # the link's secret, for the gateway's checks (HttpOnly)
MODE_COOKIE = "imgcloud_share_mode"  # tells the viewer's config to skip the login (no secret)


def new_secret() -> str:
    return secrets.token_urlsafe(32)  # 256 bits


def digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def plausible(secret: str) -> bool:
    """The shape of a secret we issue: anything else is refused before a database query."""
    return 40 <= len(secret) <= 64 and all(c.isalnum() or c in "-_" for c in secret)


def qr_png(url: str) -> bytes:
    buffer = io.BytesIO()
    segno.make(url, error="m").save(buffer, kind="png", scale=6, border=4)
    return buffer.getvalue()


def qr_data_uri(url: str) -> str:
    return "data:image/png;base64," + base64.b64encode(qr_png(url)).decode()
