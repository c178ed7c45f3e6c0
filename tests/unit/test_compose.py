"""docker-compose.yml cannot run here (no Docker engine); check what can be checked."""

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
EXPECTED = {
    "postgres",
    "seaweedfs",
    "keycloak",
    "keycloak-provision",
    "tools",
    "indexer",
    "central-migrate",
    "central",
    "central-2",
    "edge-a",
    "edge-b",
    "edge-a-dicom-tls",
    "edge-b-dicom-tls",
    "viewer",
    "gateway",
}


def load() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_names_every_service_of_the_stack() -> None:
    assert set(load()["services"]) == EXPECTED


def test_every_mounted_repo_file_exists() -> None:
    for name, service in load()["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
        build = service.get("build")
        if build:
            assert (ROOT / build["context"] / build["dockerfile"]).exists()


def test_secrets_come_only_from_required_environment_variables() -> None:
    text = COMPOSE.read_text()
    for key in ("PASSWORD", "SECRET", "BASIC_AUTH"):
        for line in text.splitlines():
            if re.search(rf"{key}[A-Z_]*:\s", line) and "${" not in line:
                raise AssertionError(f"secret without ${{VAR:?}}: {line.strip()}")
    # Every variable reference is required (:?), so compose refuses to start without it.
    references = re.findall(r"\$\{([A-Z0-9_]+)([^}]*)\}", text)
    assert references
    assert all(rest.startswith(":?") for _name, rest in references), references


def test_images_are_pinned() -> None:
    for name, service in load()["services"].items():
        image = service.get("image", "")
        if image and not image.startswith("imaging-cloud/"):
            assert re.search(r":[\w.]+$", image) and not image.endswith(":latest"), name


def test_seaweedfs_runs_with_its_security_config_and_no_http_admin_api(tmp_path: Path) -> None:
    from deploy.compose.seaweedfs_security import write

    weed = load()["services"]["seaweedfs"]
    assert "-disableHttp" in weed["command"].split()
    assert any(v.endswith(":/etc/seaweedfs:ro") for v in weed["volumes"])
    path = write(tmp_path / "weed")
    assert path.stat().st_mode & 0o777 == 0o600
    text = path.read_text()
    for section in (
        "jwt.signing",
        "jwt.signing.read",
        "jwt.filer_signing",
        "jwt.filer_signing.read",
    ):
        keys = re.findall(rf'^\[{re.escape(section)}\]\nkey = "([^"]+)"', text, re.M)
        assert len(keys) == 1 and len(keys[0]) >= 40, section


def test_each_service_sees_only_its_own_secret_folder() -> None:
    """KEYRING_DIR/<service> per service: no edge reads central's master keys, no Orthanc
    the indexer's PII key, and each edge has a key ring of its own."""
    mounted = {}
    for name, service in load()["services"].items():
        for volume in service.get("volumes", []):
            if volume.endswith(":/run/secrets:ro"):
                mounted[name] = volume.removesuffix(":/run/secrets:ro")
    assert set(mounted) == {"indexer", "central", "central-2", "edge-a", "edge-b"}
    for name, source in mounted.items():
        assert source == f"${{KEYRING_DIR:?set KEYRING_DIR}}/{name}", name


def test_every_central_node_waits_for_the_plugin_table_migration() -> None:
    services = load()["services"]
    migrate = services["central-migrate"]
    assert "central-orthanc/migrations/alembic.ini" in migrate["command"]
    for name in ("central", "central-2"):
        needs = services[name]["depends_on"]["central-migrate"]
        assert needs == {"condition": "service_completed_successfully"}, name
    tools = (ROOT / "deploy/compose/Dockerfile.tools").read_text()
    assert "COPY central-orthanc/migrations" in tools
