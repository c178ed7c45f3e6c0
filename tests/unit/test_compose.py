"""docker-compose.yml cannot run here (no Docker engine); check what can be checked."""

import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
EXPECTED = {
    "postgres",
    "postgres-init",
    "seaweedfs",
    "seaweedfs-fsync",
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
    "hl7",
    "postgres-exporter",
    "nginx-exporter",
    "prometheus",
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


def test_seaweedfs_keeps_its_filer_entries_in_postgresql(tmp_path: Path) -> None:
    """postgres2 on the compose PostgreSQL (its own role and database), not leveldb2's
    unsynced writes; the password reaches SeaweedFS only from the environment."""
    from deploy.compose.seaweedfs_security import write

    services = load()["services"]
    weed = services["seaweedfs"]
    write(tmp_path / "weed")
    filer = tmp_path / "weed" / "filer.toml"
    assert filer.stat().st_mode & 0o777 == 0o600
    conf = tomllib.loads(filer.read_text())
    assert list(conf) == ["postgres2"]
    store = conf["postgres2"]
    assert store["enabled"] is True
    assert (store["hostname"], store["port"]) == ("postgres", 5432)
    assert store["username"] == store["database"] == "seaweedfs"
    assert "password" not in store
    password = "${DB_SEAWEEDFS_PASSWORD:?set DB_SEAWEEDFS_PASSWORD}"
    assert weed["environment"]["WEED_POSTGRES2_PASSWORD"] == password
    assert weed["depends_on"]["postgres-init"] == {"condition": "service_completed_successfully"}
    postgres = services["postgres"]
    assert postgres["environment"]["DB_SEAWEEDFS_PASSWORD"] == password
    init = [v.split(":")[0] for v in postgres["volumes"] if "docker-entrypoint-initdb.d" in v]
    sql = "".join((ROOT / path).read_text() for path in init)
    # the password from the environment, quoted by psql, never pasted into the SQL
    assert "\\getenv seaweedfs DB_SEAWEEDFS_PASSWORD" in sql
    assert "ALTER ROLE seaweedfs LOGIN PASSWORD :'seaweedfs';" in sql
    assert "${DB_" not in sql
    assert "CREATE DATABASE seaweedfs OWNER seaweedfs" in sql


def init_sql() -> str:
    postgres = load()["services"]["postgres"]
    init = [v.split(":")[0] for v in postgres["volumes"] if "docker-entrypoint-initdb.d" in v]
    return "".join((ROOT / path).read_text() for path in init)


def test_the_init_scripts_run_again_at_every_up_before_anything_uses_the_database() -> None:
    """PostgreSQL runs docker-entrypoint-initdb.d on an empty volume only; postgres-init runs
    the same files at every up, and every other service that uses PostgreSQL waits for it
    (a volume made by an earlier release gets its new roles and grants)."""
    services = load()["services"]
    first = [v.split(":")[0] for v in services["postgres"]["volumes"] if "initdb.d" in v]
    again = services["postgres-init"]
    mounted = {v.split(":")[1]: v.split(":")[0] for v in again["volumes"]}
    command = again["command"][0]
    order = [m.group(1) for m in re.finditer(r"sh (/init/\S+)", command)]
    assert [mounted[path] for path in order] == first
    assert again["environment"]["PGHOST"] == "postgres"
    assert set(again["environment"]) >= set(services["postgres"]["environment"]) - {
        "POSTGRES_PASSWORD"
    }
    assert again["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    users = [
        name
        for name, svc in services.items()
        if name not in {"postgres", "postgres-init"}
        and "postgres" in str(svc.get("environment", "")) + str(svc.get("command", ""))
    ]
    assert users, "no service found that uses PostgreSQL"
    for name in users:
        needs = services[name].get("depends_on", {})
        assert "postgres" not in needs, name
        assert needs.get("postgres-init") == {"condition": "service_completed_successfully"}, name


def test_the_init_scripts_leave_each_database_to_its_own_role() -> None:
    """The same databases, owners and grants as the native stack's provisioning: PUBLIC
    loses CONNECT and TEMPORARY, the owner alone gets them (tests/integration/
    test_postgres_privileges.py runs these scripts against a real PostgreSQL 15)."""
    from deploy.stack.services.postgres import DATABASES, private_database

    sql = init_sql()
    for database, (role, _secret) in DATABASES.items():
        assert f"SELECT 'CREATE DATABASE {database} OWNER {role}' WHERE NOT EXISTS" in sql
        for statement in private_database(database, role):
            text = statement.as_string().replace('"', "")  # plain names need no quotes
            assert text + ";" in sql, (database, text)
    created = re.findall(r"CREATE DATABASE (\w+)", sql)
    assert sorted(created) == sorted(DATABASES)
    # Passwords only through \getenv and :'name' (a password with a quote stays a literal).
    assert re.findall(r"PASSWORD (\S+);", sql) == [
        ":'central'",
        ":'indexer'",
        ":'keycloak'",
        ":'monitoring'",
        ":'seaweedfs'",
    ]


def test_the_bucket_fsync_rule_is_set_before_any_central_node_starts() -> None:
    services = load()["services"]
    fsync = services["seaweedfs-fsync"]
    assert fsync["image"] == services["seaweedfs"]["image"]
    script = " ".join(fsync["command"])
    rule = 'echo "fs.configure -locationPrefix=/buckets/imaging-archive/ -fsync -apply"'
    assert rule in script
    assert "weed shell -master=seaweedfs:9333 -filer=seaweedfs:8888" in script
    # fails unless the printed filer.conf has the rule on (a shell that cannot reach the
    # filer prints errors and exits 0)
    assert "grep -q '\"fsync\": *true'" in script
    assert any(v.endswith(":/etc/seaweedfs:ro") for v in fsync["volumes"])  # security.toml
    assert fsync["depends_on"]["seaweedfs"] == {"condition": "service_healthy"}
    assert "test" in services["seaweedfs"]["healthcheck"]
    for name in ("central", "central-2"):
        needs = services[name]["depends_on"]
        assert needs["seaweedfs-fsync"] == {"condition": "service_completed_successfully"}


def test_each_service_sees_only_its_own_secret_folder() -> None:
    """KEYRING_DIR/<service> per service: no edge reads central's master keys, no Orthanc
    the indexer's PII key, and each edge has a key ring of its own."""
    mounted = {}
    for name, service in load()["services"].items():
        for volume in service.get("volumes", []):
            if volume.endswith(":/run/secrets:ro"):
                mounted[name] = volume.removesuffix(":/run/secrets:ro")
    assert set(mounted) == {
        "indexer",
        "central",
        "central-2",
        "edge-a",
        "edge-b",
        "hl7",
        "prometheus",
    }
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
