"""Property-based tests of the indexer API from its own OpenAPI description (Schemathesis):
whatever a caller sends through the HTTPS gateway with a genuine Keycloak token, the answer
is never a 5xx and conforms to the description.

No route is left out. Writes name a generated institution code (the admin registers such
institutions) or a study under one, so other tests' records are not touched, and the same
requests every run keep that junk bounded. The exception, acknowledging an alert by its id
alone, can only reach alerts that exist before this module runs; the one test that makes
an alert acknowledges it itself.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.core.result import Ok

from deploy.stack.client import StackClient
from indexer.services import national_id

# Per operation, caller and mode: about 4000 requests, 60-90 s on two cores.
MAX_EXAMPLES = 40
# Who calls what (None: every operation). A platform admin passes every role check, so the
# handlers run all the way through; a hospital radiologist exercises the 403 paths and the
# per-institution ones (QIDO, 互认); the auditor reads the audit trail, which no other may.
CALLERS: dict[str, set[str] | None] = {"admin": None, "rad_a": None, "auditor": {"audit"}}
CHECKS = {
    # The routes document 200 and 422 only; their 401/403/404/409 answers (the IndexerError
    # handlers) are not declared per route, so every refusal would fail this check.
    "status_code_conformance": {"enabled": False},
    # Schema-valid is not always valid: GB 11643 check characters, a birth date that must
    # match the ID number, a grant to another institution. Those rules answer 422 by design.
    "positive_data_acceptance": {"enabled": False},
    # Pydantic's lax mode takes a number for a date-time (a Unix timestamp) and "yes" for a
    # boolean: harmless, but this check counts each as invalid input accepted.
    "negative_data_rejection": {"enabled": False},
}
NATIONAL_IDS = st.builds(
    national_id.make,
    st.just("110105"),
    st.dates(dt.date(1900, 1, 1), dt.date(2020, 12, 31)),
    st.integers(0, 999),
)


@pytest.fixture(scope="module")
def api_schema(stack: StackClient) -> schemathesis.BaseSchema:
    """The indexer's OpenAPI description as the gateway serves it; requests go there too."""
    config = schemathesis.Config.from_dict(
        {
            "base-url": stack["GATEWAY_URL"],
            "tls-verify": stack["CA_CERT"],
            "request-timeout": 30,
            "checks": CHECKS,
        }
    )
    return schemathesis.openapi.from_url(
        f"{stack['GATEWAY_URL']}/api/openapi.json",
        config=config,
        verify=stack["CA_CERT"],
        timeout=30,
    )


@pytest.fixture(scope="module")
def session(stack: StackClient) -> Iterator[requests.Session]:
    """One TLS session for the whole run (a handshake per request would dominate)."""
    with requests.Session() as client:
        client.verify = stack["CA_CERT"]
        yield client


def negatable(operation: schemathesis.APIOperation) -> bool:
    """Whether negative mode has anything to make invalid but the (fixed) token."""
    others = [p for p in operation.iter_parameters() if p.name.lower() != "authorization"]
    return bool(others) or len(operation.body) > 0


def with_valid_national_id(case: schemathesis.Case, number: str) -> schemathesis.Case:
    """A schema-valid ID number almost never passes GB 11643, and then nothing after that
    check runs (the person lookup would never reach its SQL): give the body a real one."""
    if isinstance(case.body, dict) and isinstance(case.body.get("national_id"), str):
        case.body = {**case.body, "national_id": number}
    return case


def cases(
    operation: schemathesis.APIOperation, mode: GenerationMode, headers: dict[str, str]
) -> st.SearchStrategy[schemathesis.Case]:
    generated = operation.as_strategy(mode, headers=headers)
    if mode is GenerationMode.NEGATIVE:
        return generated
    return st.tuples(generated, NATIONAL_IDS).map(lambda pair: with_valid_national_id(*pair))


# `schemathesis.pytest.from_fixture` (needed: the schema comes from a stack that a fixture
# may start) breaks on pytest 9.2, which renamed the node attribute it rewrites. The
# documented `as_strategy` + Hypothesis route runs the same fuzzing, an operation per subtest;
# `derandomize` makes every run send the same requests, so CI failures replay locally.
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
@pytest.mark.parametrize("caller", CALLERS)
def test_no_request_gets_a_server_error(
    api_schema: schemathesis.BaseSchema,
    session: requests.Session,
    tokens: dict[str, str],
    subtests: pytest.Subtests,
    caller: str,
    mode: GenerationMode,
) -> None:
    results = list(api_schema.get_all_operations())
    operations = [result.ok() for result in results if isinstance(result, Ok)]
    assert len(operations) == len(results), "operations the OpenAPI description gets wrong"
    assert len(operations) >= 15, "the indexer's OpenAPI description lost its routes"
    # Every route declares an optional Authorization header: fixed here, so every request
    # carries the genuine token (forged ones are test_token_forgery's business).
    auth = {"authorization": f"Bearer {tokens[caller]}"}
    tags = CALLERS[caller]
    for operation in operations:
        if tags is not None and not tags & set(operation.tags or ()):
            continue
        if mode is GenerationMode.NEGATIVE and not negatable(operation):
            continue
        with subtests.test(operation.label):

            @settings(
                max_examples=MAX_EXAMPLES,
                derandomize=True,
                database=None,
                deadline=None,
                phases=[Phase.explicit, Phase.generate, Phase.shrink],
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
            )
            @given(case=cases(operation, mode, auth))
            def fuzz(case: schemathesis.Case) -> None:
                case.call_and_validate(session=session)

            fuzz()
