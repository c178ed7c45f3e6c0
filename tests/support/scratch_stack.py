"""A scratch stack state directory under var/, and single services started in it, for the
integration tests that need one real service (PostgreSQL, SeaweedFS) rather than a stack."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from deploy.stack.context import StackContext
from deploy.stack.launcher import load_context, start_groups
from deploy.stack.processes import stop
from deploy.stack.services.base import Service
from deploy.stack.settings import REPO_ROOT, StackSettings


@contextmanager
def scratch_state(prefix: str) -> Iterator[Path]:
    """A fresh state directory under var/ (removed afterwards)."""
    base = REPO_ROOT / "var"
    base.mkdir(exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    path.chmod(0o755)  # PostgreSQL runs as its own user and must reach its data directory
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def scratch_context(state: Path) -> StackContext:
    return load_context(StackSettings.from_env(str(state)))


def start(svc: Service, *, then_provision: bool = True) -> None:
    """Start it as `up` does; with then_provision=False its after-start step (PostgreSQL's
    roles, databases and grants, say) is left to the test."""
    svc.prepare()
    svc.start()
    svc.wait_healthy(svc.ctx.settings.start_timeout_s)
    if then_provision:
        svc.after_healthy()


def stop_service(svc: Service) -> bool:
    """Stop it (True if it stopped in time)."""
    return stop(svc.ctx.settings.run_dir, svc.name, sig=svc.stop_signal, timeout_s=60)


def start_all(svcs: list[Service], timeout_s: float) -> None:
    """Start services as `up` does: group by group, the nodes of a group together, then
    each checked healthy and provisioned."""
    for group in start_groups(svcs):
        for svc in group:
            svc.prepare()
            svc.start()
        for svc in group:
            svc.wait_healthy(timeout_s)
            svc.after_healthy()
