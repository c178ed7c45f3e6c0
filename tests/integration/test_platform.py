"""Every Orthanc of the stack runs Debian 13's Orthanc 1.12 and its plugins, whichever way
this host provides them (installed on Debian 13, or the Debian 13 root on Debian 12): each
reports the pinned versions, and the root holds exactly those packages."""

from __future__ import annotations

import subprocess

import httpx
import pytest

from deploy.stack.client import StackClient
from deploy.stack.sandbox import debian_major, platform_for
from deploy.stack.settings import StackSettings

ORTHANCS = ("CENTRAL_ORTHANC", "EDGE_A", "EDGE_B")


def credentials(stack: StackClient, prefix: str) -> tuple[str, tuple[str, str]]:
    url = stack[f"{prefix}_URL"]
    return url, (stack[f"{prefix}_USER"], stack[f"{prefix}_PASSWORD"])


@pytest.mark.parametrize("orthanc", ORTHANCS)
def test_every_orthanc_reports_the_pinned_versions(
    stack: StackClient, stack_settings: StackSettings, orthanc: str
) -> None:
    url, auth = credentials(stack, orthanc)
    versions = stack_settings.versions
    system = httpx.get(f"{url}/system", auth=auth, timeout=10).json()
    assert system["Version"] == versions["ORTHANC_EXPECTED"]
    loaded = httpx.get(f"{url}/plugins", auth=auth, timeout=10).json()
    for pair in versions["ORTHANC_PLUGINS_EXPECTED"].split():
        plugin, version = pair.split("=")
        if plugin == "postgresql-index" and orthanc != "CENTRAL_ORTHANC":
            continue  # the edges keep Orthanc's own SQLite index
        assert plugin in loaded, f"{orthanc}: {plugin} not loaded"
        answer = httpx.get(f"{url}/plugins/{plugin}", auth=auth, timeout=10).json()
        assert answer["Version"] == version, f"{orthanc}: {plugin} {answer['Version']}"


def test_the_debian_13_root_holds_the_pinned_orthanc(stack_settings: StackSettings) -> None:
    platform = platform_for(stack_settings)
    if debian_major() >= 13:
        assert platform.root is None  # the host's own packages
        return
    assert platform.root is not None
    packages = platform.versions()
    upstream = packages["orthanc"].split("+")[0]
    assert upstream == stack_settings.versions["ORTHANC_EXPECTED"]
    assert packages["orthanc-python"].startswith("5.0")


def test_nothing_of_the_root_is_mounted_on_the_host(stack_settings: StackSettings) -> None:
    """Each Orthanc's mounts live in its own namespace: the host sees none of them."""
    platform = platform_for(stack_settings)
    if platform.root is None:
        pytest.skip("a Debian 13 host runs Orthanc without a root")
    mounts = subprocess.run(["findmnt", "-rn", "-o", "TARGET"], capture_output=True, text=True,
                            timeout=10, check=True).stdout  # fmt: skip
    assert str(platform.root) not in mounts
