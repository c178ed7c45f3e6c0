"""Markers follow the directory (tests/unit -> unit, tests/integration -> integration, ...),
and the stack the integration and e2e tests run against.

By default a session starts its own stack in a fresh state directory on free ports and
stops it at the end. STACK_ENV=/path/to/stack.env reuses a running stack instead.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.stack.client import StackClient
from deploy.stack.launcher import down, load_context, up
from deploy.stack.settings import REPO_ROOT, StackSettings

HERE = Path(__file__).parent


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "runs_last: runs after every other test of the session (e.g. log checks)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        kind = Path(str(item.fspath)).relative_to(HERE).parts[0]
        if kind in ("unit", "integration", "e2e"):
            item.add_marker(getattr(pytest.mark, kind))
    # Checks of what the whole session left behind (every log) go after everything else.
    items.sort(key=lambda item: item.get_closest_marker("runs_last") is not None)


@pytest.fixture(scope="session")
def stack() -> Iterator[StackClient]:
    reuse = os.environ.get("STACK_ENV")
    if reuse:
        yield StackClient.from_file(Path(reuse))
        return
    base = REPO_ROOT / "var"
    base.mkdir(exist_ok=True)
    state = Path(tempfile.mkdtemp(prefix="test-stack-", dir=base))
    state.chmod(0o755)  # PostgreSQL runs as its own user and must reach its data directory
    settings = StackSettings.from_env(str(state))
    ctx = load_context(settings)
    try:
        up(ctx, say=lambda msg: print(msg, flush=True))
        yield StackClient.from_file(settings.stack_env)
    finally:
        down(ctx, say=lambda _msg: None)
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(scope="session")
def stack_settings(stack: StackClient) -> StackSettings:
    return StackSettings.from_env(stack["STACK_DIR"])


@pytest.fixture(scope="module")
def tokens(stack: StackClient) -> dict[str, str]:
    """Demo users' access tokens (module scope: they live 5 minutes)."""

    def token(user: str, password: str) -> str:
        return str(stack.password_token(user, password)["access_token"])

    return {
        "admin": token(stack["DEMO_ADMIN_USER"], stack["DEMO_ADMIN_PASSWORD"]),
        "rad_a": token(stack["DEMO_RADIOLOGIST_A_USER"], stack["DEMO_RADIOLOGIST_A_PASSWORD"]),
        "rad_b": token(stack["DEMO_RADIOLOGIST_B_USER"], stack["DEMO_RADIOLOGIST_B_PASSWORD"]),
        "auditor": token(stack["DEMO_AUDITOR_USER"], stack["DEMO_AUDITOR_PASSWORD"]),
        "hadmin_a": token(
            stack["DEMO_HOSPITAL_ADMIN_A_USER"], stack["DEMO_HOSPITAL_ADMIN_A_PASSWORD"]
        ),
        "clin_b": token(stack["DEMO_CLINICIAN_B_USER"], stack["DEMO_CLINICIAN_B_PASSWORD"]),
        "regulator": token(stack["DEMO_REGULATOR_USER"], stack["DEMO_REGULATOR_PASSWORD"]),
    }
