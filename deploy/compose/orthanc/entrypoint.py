"""Entry point of the compose Orthanc image: the mounted static configuration merged with
the service's ORTHANC__* variables, written where only Orthanc's user reads it, then exec
Orthanc. It does for compose what the launcher does natively (static file + what the
stack decides at run time), with the variable names docker-compose.yml already uses:
`ORTHANC__POSTGRESQL__PASSWORD` sets `PostgreSQL.Password`. A segment names the key the
static file already has when it matches case-insensitively without underscores, else its
words in PascalCase (`DICOM_AET` is `DicomAet`). Values starting with `{` or `[` are JSON,
`true`/`false` are booleans, whole numbers integers (never for a *PASSWORD* name).
Runs on the image's python3 (the one Orthanc's Python plugin embeds), standard library only.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

PREFIX = "ORTHANC__"
STATIC = Path("/etc/orthanc/orthanc.json")
MERGED = Path("/run/imgcloud-orthanc/orthanc.json")
ORTHANC = "/usr/sbin/Orthanc"
# Orthanc's own spellings that PascalCase does not give.
IRREGULAR = {"POSTGRESQL": "PostgreSQL", "HTTPS_CA_CERTIFICATES": "HttpsCACertificates"}


class ConfigError(ValueError):
    """An ORTHANC__* variable that cannot become configuration (the message names it)."""


def key_for(segment: str, existing: Mapping[str, Any]) -> str:
    """The configuration key an upper-case variable segment names."""
    bare = segment.replace("_", "").lower()
    for key in existing:
        if key.lower() == bare:
            return key
    return IRREGULAR.get(segment) or "".join(w.capitalize() for w in segment.split("_") if w)


def value_of(name: str, raw: str) -> Any:
    if raw[:1] in ("{", "["):
        try:
            return json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{name}: not valid JSON ({exc.msg} at {exc.pos})") from None
    if raw in ("true", "false"):
        return raw == "true"
    if re.fullmatch(r"-?[0-9]+", raw) and "PASSWORD" not in name:
        return int(raw)
    return raw


def merged_config(static: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """`static` with every ORTHANC__* variable of `environ` set in it (a new dict)."""
    config = json.loads(json.dumps(static))
    for name in sorted(environ):
        if not name.startswith(PREFIX):
            continue
        segments = name[len(PREFIX) :].split("__")
        if not all(segments):
            raise ConfigError(f"{name}: empty segment in the variable name")
        node = config
        for segment in segments[:-1]:
            key = key_for(segment, node)
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{name}: {key} is not a section of the configuration")
            node = child
        node[key_for(segments[-1], node)] = value_of(name, environ[name])
    return config


def main() -> None:
    try:
        static = json.loads(STATIC.read_text())
        config = merged_config(static, os.environ)
    except (OSError, json.JSONDecodeError, ConfigError) as exc:
        sys.exit(f"[orthanc-entrypoint] FAILED: {exc}")
    MERGED.parent.mkdir(mode=0o700, exist_ok=True)
    fd = os.open(MERGED, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(config, out, indent=2)
    # Secrets are in the file now: Orthanc does not need them in its environment too.
    env = {k: v for k, v in os.environ.items() if not k.startswith(PREFIX)}
    os.execve(ORTHANC, [ORTHANC, *sys.argv[1:], str(MERGED)], env)  # noqa: S606 - Orthanc itself


if __name__ == "__main__":
    main()
