"""A missing, short or unreadable master key ring stops Orthanc at start, naming the setting."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from deploy.stack.ports import pick_free
from deploy.stack.sandbox import PLUGIN_DIR, orthanc_command
from deploy.stack.settings import REPO_ROOT, StackSettings


def start_orthanc_with_ring(tmp_path: Path, ring_text: str | None) -> tuple[int, str]:
    ring = tmp_path / "keyring.json"
    if ring_text is not None:
        ring.write_text(ring_text)
    creds = tmp_path / "s3.json"
    creds.write_text(json.dumps({"AccessKey": "a", "SecretKey": "b"}))
    static = json.loads((REPO_ROOT / "central-orthanc/orthanc.json").read_text())
    # central parses its PostgreSQL section first (no connection yet: the plugin is not
    # loaded, and nothing listens on port 9); the key ring is read before any connection
    static["PostgreSQL"].update({"EnableIndex": True, "Host": "127.0.0.1", "Port": 9})
    static["HttpPort"] = pick_free(1, [])[0]
    static["StorageDirectory"] = static["IndexDirectory"] = str(tmp_path / "storage")
    static["Plugins"] = [str(PLUGIN_DIR / "libOrthancPython.so")]
    static["PythonScript"] = str(REPO_ROOT / "orthanc-plugins/central_plugin.py")
    static["ImagingCloud"]["Storage"].update(
        {
            "KeyRingFile": str(ring),
            "S3": {"Bucket": "b", "Endpoint": "http://127.0.0.1:9", "CredentialsFile": str(creds)},
        }
    )
    config = tmp_path / "orthanc.json"
    config.write_text(json.dumps(static))
    settings = StackSettings.from_env()
    argv, env = orthanc_command(settings, config, [tmp_path])
    result = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", **env},
        check=False,
    )
    return result.returncode, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("ring_text", "reason"),
    [
        (None, "cannot read key ring file"),
        ('{"current": "k1", "keys": {"k1": "c2hvcnQ="}}', "is 5 bytes, must be 32"),
        ("{not json", "not valid JSON"),
    ],
)
def test_bad_key_ring_stops_orthanc_with_one_clear_line(
    tmp_path: Path, ring_text: str | None, reason: str
) -> None:
    code, log = start_orthanc_with_ring(tmp_path, ring_text)
    assert code != 0
    lines = [line for line in log.splitlines() if "invalid configuration" in line]
    assert len(lines) == 1, log
    assert "ImagingCloud.Storage.KeyRingFile" in lines[0] and reason in lines[0]
    assert "c2hvcnQ=" not in log  # key material never logged
