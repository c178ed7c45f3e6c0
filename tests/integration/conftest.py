"""Fixtures shared by the integration tests (the stack itself is in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from deploy.stack.client import StackClient

A, B = "H0001", "H0002"


@pytest.fixture(scope="module")
def gw(stack: StackClient) -> Iterator[dict[str, httpx.Client]]:
    """An HTTP client through the gateway per hospital, with its gateway account's token."""
    with (
        stack.gateway(stack.gateway_account_token(A)) as a,
        stack.gateway(stack.gateway_account_token(B)) as b,
    ):
        yield {A: a, B: b}
