"""The compose DICOM TLS sidecars check the PACS's certificate subject before nginx starts
(deploy/compose/05-check-pacs-subject.sh): compose puts it into nginx's configuration as
text, so a subject that could change that configuration stops the container (W2)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.unit.test_dicom_tls_sidecar import compose_value

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "deploy/compose/05-check-pacs-subject.sh"
GOOD = "CN=pacs01.hospital-a.local,OU=Radiology,O=Hospital A"


def map_line(subject: str, address: str = "127.0.0.2") -> str:
    return f'"~^\\Q{subject}\\E\\z" {address};\n'


def check(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The script as the nginx image's entrypoint runs it: executable, its own shell."""
    return subprocess.run(
        [str(SCRIPT)],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )


@pytest.mark.parametrize("subject", [GOOD, "CN=HOSP_PACS", "CN=pacs,DC=hospital-a,DC=local"])
def test_a_subject_the_plugin_accepts_starts_nginx(subject: str) -> None:
    result = check({"PACS_SUBJECT": subject, "TLS_PEERS": map_line(subject)})
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "subject",
    [
        "",
        'CN=a" 127.0.0.9; "~.',  # a second map line: any certificate let in
        "CN=a\\E.*",  # out of \Q...\E: a pattern
        "CN=a;}",
        "CN=$ssl_client_s_dn",
        "CN=a\nb",
        "CN=医院",
        "CN=a\tb",
    ],
)
def test_a_subject_that_could_change_nginxs_configuration_stops_the_container(
    subject: str,
) -> None:
    result = check({"PACS_SUBJECT": subject, "TLS_PEERS": map_line(subject)})
    assert result.returncode != 0
    assert "PACS_SUBJECT" in result.stderr and "nginx not started" in result.stderr
    if subject:
        assert subject not in result.stderr  # the subject itself is not logged


@pytest.mark.parametrize(
    "peers",
    [
        "",
        map_line("CN=other"),
        map_line(GOOD) + map_line("CN=other", "127.0.0.9"),
        map_line(GOOD, "127.0.0.2; default 127.0.0.9"),
        map_line(GOOD).replace("\\z", "$"),
    ],
)
def test_map_lines_other_than_the_subjects_own_stop_the_container(peers: str) -> None:
    result = check({"PACS_SUBJECT": GOOD, "TLS_PEERS": peers})
    assert result.returncode != 0
    assert "TLS_PEERS" in result.stderr


def test_a_missing_subject_stops_the_container() -> None:
    assert check({"TLS_PEERS": map_line(GOOD)}).returncode != 0


def test_both_sidecars_run_the_check_before_the_template_is_filled() -> None:
    """Mounted executable where the nginx image's entrypoint runs scripts in order, before
    its 20-envsubst-on-templates.sh; the subject checked is the one in TLS_PEERS."""
    assert os.access(SCRIPT, os.X_OK)
    services = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())["services"]
    for name, letter in (("edge-a-dicom-tls", "A"), ("edge-b-dicom-tls", "B")):
        service = services[name]
        assert service["command"][0] == "nginx"  # the entrypoint runs the scripts for nginx
        source = "./deploy/compose/05-check-pacs-subject.sh:"
        (mount,) = [v for v in service["volumes"] if v.startswith(source)]
        target = mount.removeprefix(source).removesuffix(":ro")
        assert target.startswith("/docker-entrypoint.d/"), name
        assert target.rsplit("/", 1)[1] < "20-envsubst-on-templates.sh", name
        env = service["environment"]
        values = {f"HOSPITAL_{letter}_PACS_SUBJECT": GOOD}
        subject = compose_value(env["PACS_SUBJECT"], values)
        peers = compose_value(env["TLS_PEERS"], values)
        assert subject == GOOD
        assert check({"PACS_SUBJECT": subject, "TLS_PEERS": peers}).returncode == 0
