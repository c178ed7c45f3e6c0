"""Pure logic of the indexer: personal-data sealing, the exam state machine, the platform
adapters (the HTTP one against httpx's mock transport: a unit test of our client only)."""

import json

import httpx
import pytest
from pydantic import ValidationError

from indexer.errors import IndexerError, PlatformUnavailable
from indexer.schemas import PatientIn, PersonSearch
from indexer.security.pii import PiiCipher
from indexer.services.lifecycle import next_state
from indexer.services.platform import BuiltInPlatform, HttpPlatform
from indexer.services.registry import mask


@pytest.mark.parametrize("algorithm", ["aes-256-gcm", "sm4-gcm"])
def test_pii_round_trip_bound_to_its_column(tmp_path, algorithm: str) -> None:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps(PiiCipher.generate_document(algorithm)))
    cipher = PiiCipher.from_file(path)
    blob = cipher.encrypt("11010519491231002X", "persons.national_id")
    assert b"11010519491231002X" not in blob
    assert cipher.decrypt(blob, "persons.national_id") == "11010519491231002X"
    with pytest.raises(Exception):  # noqa: B017 - cryptography's InvalidTag
        cipher.decrypt(blob, "patients.phone")  # moved to another column: refused
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(Exception):  # noqa: B017
        cipher.decrypt(tampered, "persons.national_id")
    assert cipher.encrypt("x", "c") != cipher.encrypt("x", "c")  # fresh nonce each time


def test_blind_index_is_keyed_deterministic_and_domain_separated(tmp_path) -> None:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps(PiiCipher.generate_document()))
    a = PiiCipher.from_file(path)
    assert a.blind_index("13800138000", "phone") == a.blind_index("13800138000", "phone")
    assert a.blind_index("13800138000", "phone") != a.blind_index("13800138000", "national_id")
    other = tmp_path / "other.json"
    other.write_text(json.dumps(PiiCipher.generate_document()))
    assert PiiCipher.from_file(other).blind_index("1", "phone") != a.blind_index("1", "phone")


def test_bad_key_file_is_refused_with_the_setting_named(tmp_path) -> None:
    path = tmp_path / "keys.json"
    path.write_text('{"key_id": "k1", "encryption_key": "AAAA", "blind_index_key": "AAAA"}')
    with pytest.raises(IndexerError, match="INDEXER_PII_KEY_FILE"):
        PiiCipher.from_file(path)
    with pytest.raises(IndexerError, match="INDEXER_PII_KEY_FILE"):
        PiiCipher.from_file(tmp_path / "missing.json")


def test_state_machine_only_moves_forward() -> None:
    assert next_state("registered", "images-arriving") == "images-arriving"
    assert next_state("images-arriving", "images-complete") == "images-complete"
    assert next_state("images-complete", "report") == "reported"
    assert next_state("reported", "report-revision") == "report-revised"
    assert next_state("reported", "images-arriving") == "reported"  # late images
    assert next_state("registered", "report") == "reported"


def test_patient_validation_names_the_rule_and_hides_the_value() -> None:
    with pytest.raises(ValidationError) as caught:
        PatientIn(name="x", sex="F", national_id="110105194912310021")
    text = str(caught.value.errors()[0]["msg"])
    assert "check character" in text and "110105194912310021" not in text
    patient = PatientIn(name="x", sex="F", national_id="110105491231002", phone="138-0013-8000")
    assert patient.national_id == "11010519491231002X" and patient.phone == "13800138000"
    with pytest.raises(ValidationError, match="does not match the birth date"):
        PatientIn(name="x", sex="F", national_id="11010519491231002X", birth_date="1950-01-01")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="date_from"):
        PersonSearch(
            national_id="11010519491231002X",
            purpose="p1",
            date_from="2026-02-01",  # type: ignore[arg-type]
            date_to="2026-01-01",  # type: ignore[arg-type]
        )


def test_masking() -> None:
    assert mask("11010519491231002X", 6, 4) == "110105********002X"
    assert mask("13800138000", 3, 4) == "138****8000"
    assert mask(None, 3, 4) is None


def test_builtin_platform_ids_are_stable_and_distinct() -> None:
    platform = BuiltInPlatform(b"k" * 32)
    one = platform.issue(
        [("H0001", "11010519491231002X", "E1"), ("H0001", "11010519491231002X", "E2")]
    )
    again = platform.issue([("H0001", "11010519491231002X", "E1")])
    assert one[0] == again[0] and one[0] != one[1] and one[0].startswith("MI")
    assert "11010519491231002X" not in one[0]


def test_http_platform_contract_and_failures() -> None:
    seen = []

    def answer(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        seen.append((request.url.path, body, request.headers.get("authorization")))
        return httpx.Response(200, json={"master_index_ids": ["MI-1"] * len(body["requests"])})

    platform = HttpPlatform(
        "http://platform.invalid/api", 5, token=lambda: "t0k", transport=httpx.MockTransport(answer)
    )
    assert platform.issue([("H0001", "n", "E1")]) == ["MI-1"]
    path, body, auth = seen[0]
    assert path == "/api/master-index/batch" and auth == "Bearer t0k"
    assert body == {
        "requests": [{"institution_code": "H0001", "national_id": "n", "exam_no": "E1"}]
    }
    for failing in (
        lambda _r: httpx.Response(503),
        lambda _r: httpx.Response(200, json={"master_index_ids": []}),
        lambda _r: httpx.Response(200, content=b"not json"),
    ):
        broken = HttpPlatform("http://p.invalid", 5, transport=httpx.MockTransport(failing))
        with pytest.raises(PlatformUnavailable):
            broken.issue([("H0001", "n", "E1")])
