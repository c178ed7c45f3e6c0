"""Audit hardening (#18, review of 9 and 10): recorded filters are always valid JSON within
the column, the export reads any stored value, the forwarded client address counts only
with the gateway's secret, and a share link's search never leaves its study."""

from __future__ import annotations

import asyncio
import json
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote

from pydantic import SecretStr
from starlette.requests import Request

from indexer.api import audit_middleware
from indexer.api.routes.audit import stored_filters
from indexer.services import qido
from indexer.services.audit import WIDTHS, event

SECRET = "s3cret-of-the-gateway"
LIES = {"x-real-ip": "203.0.113.7", "x-original-remote": "203.0.113.8",
        "x-forwarded-for": "203.0.113.9"}  # fmt: skip


def hostile_query(keys: int) -> str:
    """Keys and values that JSON escapes to several times their length."""
    return "&".join(
        f"{quote(chr(34) * 30 + chr(1) * 30)}{i:02d}={quote(chr(34) * 32 + chr(1) * 32)}"
        for i in range(keys)
    )


def test_hostile_filters_are_valid_json_within_the_column_and_marked_truncated() -> None:
    width = WIDTHS["filters"]
    assert width is not None
    for keys in (1, 24, 25, 200):
        text = audit_middleware.filters_of(hostile_query(keys))
        assert text is not None and len(text) <= width
        recorded = event(None, "dicomweb.read", None, None, 403, filters=text)["filters"]
        parsed = json.loads(recorded)
        assert isinstance(parsed, dict)
        if keys >= 24:
            assert parsed["(truncated)"] >= keys - 24 + 1
        assert all(len(k) <= 64 for k in parsed)


def test_a_client_cannot_fake_the_truncation_marker() -> None:
    parsed = json.loads(audit_middleware.filters_of("(truncated)=0&a=1") or "")
    assert "(truncated)" not in parsed and parsed["a"] == "1"


def test_an_over_long_filters_text_is_replaced_not_cut() -> None:
    text = json.dumps({"k": "x" * 5000})
    assert json.loads(event(None, "a", None, None, 200, filters=text)["filters"]) == {
        "(truncated)": "all"
    }


def test_the_export_reads_any_stored_filters() -> None:
    assert stored_filters(None) is None
    assert stored_filters('{"a":"1"}') == {"a": "1"}
    cut = '{"a":"\\"\\u00'
    assert stored_filters(cut) == {"(unparsed)": cut}
    assert stored_filters("[1]") == {"(unparsed)": "[1]"}


def request(headers: dict[str, str], peer: str = "127.0.0.2") -> Request:
    app = SimpleNamespace(
        state=SimpleNamespace(settings=SimpleNamespace(gateway_forward_secret=SecretStr(SECRET)))
    )
    scope = {
        "type": "http",
        "app": app,
        "client": (peer, 40000),
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }
    return Request(scope)


def test_forwarded_addresses_count_only_with_the_gateways_secret() -> None:
    assert audit_middleware.client_address(request(LIES)) == "127.0.0.2"
    wrong = {**LIES, "X-Gateway-Secret": SECRET + "x"}
    assert audit_middleware.client_address(request(wrong)) == "127.0.0.2"
    right = {**LIES, "X-Gateway-Secret": SECRET}
    assert audit_middleware.client_address(request(right)) == "203.0.113.7"
    garbage = {"X-Real-IP": "not an address", "X-Gateway-Secret": SECRET}
    assert audit_middleware.client_address(request(garbage)) == "127.0.0.2"


class FakeCentral:
    def __init__(self, answer: list[dict[str, Any]]) -> None:
        self.answer = answer

    async def studies(self, params: Any) -> list[dict[str, Any]]:
        return self.answer


def study(uid: str) -> dict[str, Any]:
    return {qido.STUDY_UID_TAG: {"vr": "UI", "Value": [uid]}}


def test_a_share_links_search_keeps_only_its_study() -> None:
    central = FakeCentral([study("1.2.3"), study("1.2.4"), {}])
    found = asyncio.run(qido.search_one(central, "1.2.3", [("0020000D", "1.2.4")]))  # type: ignore[arg-type]
    assert [qido.study_uid(s) for s in found] == ["1.2.3"]
