"""The alert rules (deploy/prometheus/alerts.yml) and the stack's Prometheus configuration
(deploy/stack/services/prometheus.py), checked with the real promtool: `check config` on a
rendered prometheus.yml, `check rules`, and the rules' unit tests (rules_test.yml)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from deploy.stack.context import StackContext
from deploy.stack.ports import port_names
from deploy.stack.secrets_store import SECRET_NAMES
from deploy.stack.services.prometheus import (
    RULES,
    monitoring_password,
    prometheus_config,
    scrape_jobs,
)
from deploy.stack.settings import REPO_ROOT, StackSettings

PROMTOOL = Path("/usr/bin/promtool")
pytestmark = pytest.mark.skipif(not PROMTOOL.exists(), reason="promtool not installed")


def promtool(*args: str, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PROMTOOL), *args], capture_output=True, text=True, timeout=60, cwd=cwd, check=False
    )


def context(tmp_path: Path, **settings: object) -> StackContext:
    stack = StackSettings(state_dir=tmp_path, cache_dir=tmp_path, **settings)  # type: ignore[arg-type]
    names = port_names(stack.central_nodes, stack.indexer_nodes, ha=stack.ha)
    return StackContext(
        settings=stack,
        ports={name: 20000 + i for i, name in enumerate(names)},
        secrets={name: f"secret-{name}" for name in SECRET_NAMES},
        pki={},
    )


def rendered(tmp_path: Path, ctx: StackContext, nginx: bool = True) -> Path:
    files = {}
    for name in ("central", "central-2", "edge-a", "edge-b"):
        files[name] = tmp_path / f"{name}.password"
        files[name].write_text("x")
    rules = tmp_path / "alerts.yml"
    rules.write_text((REPO_ROOT / RULES).read_text())
    path = tmp_path / "prometheus.yml"
    path.write_text(prometheus_config(scrape_jobs(ctx, files, nginx=nginx), [str(rules)], 15))
    return path


def test_rules_are_valid() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 12 rules found" in result.stdout


def test_rules_unit_tests_pass() -> None:
    result = promtool("test", "rules", "rules_test.yml", cwd=REPO_ROOT / "deploy/prometheus")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_rendered_config_is_valid_and_scrapes_every_service(tmp_path: Path) -> None:
    ctx = context(tmp_path, central_nodes=2, indexer_nodes=2)
    path = rendered(tmp_path, ctx)
    result = promtool("check", "config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    jobs = {job["job_name"]: job for job in yaml.safe_load(path.read_text())["scrape_configs"]}
    assert set(jobs) == {
        "prometheus",
        "indexer",
        "indexer-fleet",
        "orthanc-central",
        "orthanc-edge-a",
        "orthanc-edge-b",
        "seaweedfs",
        "keycloak",
        "postgres",
        "nginx",
    }
    instances = [c["labels"]["instance"] for c in jobs["indexer"]["static_configs"]]
    assert instances == ["indexer", "indexer-2"]
    central = jobs["orthanc-central"]
    assert [c["targets"] for c in central["static_configs"]] == [
        [f"127.0.0.1:{ctx.ports['central_http']}"],
        [f"127.0.0.1:{ctx.ports['central_2_http']}"],
    ]
    # credentials by file only: no password of any Orthanc in prometheus.yml
    text = path.read_text()
    for name in ("central_orthanc", "edge_a_orthanc", "edge_b_orthanc"):
        assert ctx.secrets[name] not in text
    assert central["basic_auth"] == {
        "username": "central-admin",
        "password_file": str(tmp_path / "central.password"),
    }
    # every target on loopback
    for job in jobs.values():
        for config in job["static_configs"]:
            assert all(t.startswith("127.0.0.1:") for t in config["targets"])


def test_without_a_status_port_there_is_no_nginx_job(tmp_path: Path) -> None:
    path = rendered(tmp_path, context(tmp_path), nginx=False)
    jobs = [job["job_name"] for job in yaml.safe_load(path.read_text())["scrape_configs"]]
    assert "nginx" not in jobs and "postgres" in jobs


def test_monitoring_password_is_derived_unless_given() -> None:
    secrets = {"postgres_superuser": "s3cret"}
    derived = monitoring_password(secrets)
    assert len(derived) == 32 and "s3cret" not in derived
    assert derived == monitoring_password(dict(secrets))
    assert monitoring_password({"postgres_superuser": "other"}) != derived
    assert monitoring_password(secrets | {"db_monitoring": "given"}) == "given"


def test_the_redundant_topology_scrapes_every_seaweedfs_node(tmp_path: Path) -> None:
    ctx = context(tmp_path, topology="ha", central_nodes=2, indexer_nodes=2)
    path = rendered(tmp_path, ctx)
    result = promtool("check", "config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    jobs = {job["job_name"]: job for job in yaml.safe_load(path.read_text())["scrape_configs"]}
    weed = {c["labels"]["instance"]: c["targets"] for c in jobs["seaweedfs"]["static_configs"]}
    assert sorted(weed) == sorted(
        [f"seaweedfs-master-{n}" for n in (1, 2, 3)]
        + [f"seaweedfs-volume-{n}" for n in (1, 2, 3)]
        + ["seaweedfs-filer-1", "seaweedfs-filer-2", "seaweedfs-s3-1", "seaweedfs-s3-2"]
    )
    assert weed["seaweedfs-s3-2"] == [f"127.0.0.1:{ctx.ports['weed_s3_node_2_metrics']}"]
    assert len({t for targets in weed.values() for t in targets}) == 10  # a port each
