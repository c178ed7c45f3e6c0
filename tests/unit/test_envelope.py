import math
import os
from collections import Counter
from pathlib import Path

import pytest
from imgcloud.errors import IntegrityError, KeyRingError
from imgcloud.storage.envelope import Algorithm, key_id_of, open_sealed, rewrap, seal
from imgcloud.storage.keyring import KeyRing, write_key_ring

KEY = "ab/cd/abcd1234-0000-0000-0000-000000000000.1"


def entropy(data: bytes) -> float:
    counts = Counter(data)
    return -sum(c / len(data) * math.log2(c / len(data)) for c in counts.values())


@pytest.fixture
def ring() -> KeyRing:
    return KeyRing.generate("k1")


@pytest.mark.parametrize("algorithm", list(Algorithm))
def test_round_trip(ring: KeyRing, algorithm: Algorithm) -> None:
    data = b"DICM" + os.urandom(1000) + "王^伟".encode()
    blob = seal(data, object_key=KEY, attachment_type=1, ring=ring, algorithm=algorithm)
    assert open_sealed(blob, object_key=KEY, attachment_type=1, ring=ring) == data


def test_empty_payload_round_trips(ring: KeyRing) -> None:
    blob = seal(b"", object_key=KEY, attachment_type=1, ring=ring)
    assert open_sealed(blob, object_key=KEY, attachment_type=1, ring=ring) == b""


def test_ciphertext_hides_content(ring: KeyRing) -> None:
    data = b"\0" * 128 + b"DICM" + b"WANG^WEI 1.2.840.113619.2.55" * 2000
    blob = seal(data, object_key=KEY, attachment_type=1, ring=ring)
    assert b"DICM" not in blob and b"WANG" not in blob and b"1.2.840" not in blob
    assert entropy(blob) > 7.9


def test_two_seals_of_the_same_data_differ(ring: KeyRing) -> None:
    a = seal(b"x" * 100, object_key=KEY, attachment_type=1, ring=ring)
    b = seal(b"x" * 100, object_key=KEY, attachment_type=1, ring=ring)
    assert a != b


@pytest.mark.parametrize("algorithm", list(Algorithm))
def test_any_flipped_byte_is_detected(ring: KeyRing, algorithm: Algorithm) -> None:
    blob = seal(os.urandom(300), object_key=KEY, attachment_type=1, ring=ring, algorithm=algorithm)
    for position in range(len(blob)):
        tampered = bytearray(blob)
        tampered[position] ^= 0x01
        with pytest.raises(IntegrityError):
            open_sealed(bytes(tampered), object_key=KEY, attachment_type=1, ring=ring)


def test_truncation_is_detected(ring: KeyRing) -> None:
    blob = seal(os.urandom(300), object_key=KEY, attachment_type=1, ring=ring)
    for length in (0, 3, 10, 40, len(blob) - 1):
        with pytest.raises(IntegrityError):
            open_sealed(blob[:length], object_key=KEY, attachment_type=1, ring=ring)


def test_renamed_or_retyped_object_fails(ring: KeyRing) -> None:
    blob = seal(b"payload", object_key=KEY, attachment_type=1, ring=ring)
    with pytest.raises(IntegrityError, match="unwrap"):
        open_sealed(blob, object_key=KEY + "x", attachment_type=1, ring=ring)
    with pytest.raises(IntegrityError, match="authentication"):
        open_sealed(blob, object_key=KEY, attachment_type=2, ring=ring)


def test_wrong_or_missing_master_key(ring: KeyRing) -> None:
    blob = seal(b"payload", object_key=KEY, attachment_type=1, ring=ring)
    with pytest.raises(IntegrityError, match="'k1', which is not in the key ring"):
        open_sealed(blob, object_key=KEY, attachment_type=1, ring=KeyRing.generate("k9"))
    impostor = KeyRing.generate("k1")  # same id, other key material
    with pytest.raises(IntegrityError, match="does not unwrap"):
        open_sealed(blob, object_key=KEY, attachment_type=1, ring=impostor)


def test_errors_carry_the_object_key_but_no_content(ring: KeyRing) -> None:
    secret = b"PATIENT-NAME-ZHANG-SAN"
    blob = seal(secret, object_key=KEY, attachment_type=1, ring=ring)
    with pytest.raises(IntegrityError) as info:
        open_sealed(blob[:-1], object_key=KEY, attachment_type=1, ring=ring)
    assert KEY in str(info.value) and "ZHANG" not in str(info.value)


def test_rotation_and_rewrap(ring: KeyRing) -> None:
    old = seal(b"old", object_key=KEY, attachment_type=1, ring=ring)
    ring2 = ring.with_key("k2").promoted("k2")
    new = seal(b"new", object_key=KEY, attachment_type=1, ring=ring2)
    assert (key_id_of(old, KEY), key_id_of(new, KEY)) == ("k1", "k2")
    assert open_sealed(old, object_key=KEY, attachment_type=1, ring=ring2) == b"old"
    moved = rewrap(old, object_key=KEY, ring=ring2)
    assert moved is not None and key_id_of(moved, KEY) == "k2"
    assert rewrap(moved, object_key=KEY, ring=ring2) is None  # already on the newest key
    retired = ring2.without("k1")
    assert open_sealed(moved, object_key=KEY, attachment_type=1, ring=retired) == b"old"
    with pytest.raises(IntegrityError):
        open_sealed(old, object_key=KEY, attachment_type=1, ring=retired)


def test_key_ring_file_round_trip_and_permissions(tmp_path: Path, ring: KeyRing) -> None:
    path = tmp_path / "ring.json"
    write_key_ring(ring.with_key("k2").promoted("k2"), path)
    assert path.stat().st_mode & 0o777 == 0o600
    loaded = KeyRing.from_file(path, "ImagingCloud.Storage.KeyRingFile")
    assert loaded.current_id == "k2" and loaded.key_ids == ("k1", "k2")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "not valid JSON"),
        ('{"current": "k1", "keys": {}}', "'keys' is empty"),
        ('{"current": "k2", "keys": {"k1": "AAAA"}}', "current key 'k2' is not in"),
        ('{"current": "k1", "keys": {"k1": "AAAA"}}', "is 3 bytes, must be 32"),
        ('{"current": "k1", "keys": {"k1": "***"}}', "not valid base64"),
    ],
)
def test_bad_key_rings_are_refused_with_a_reason(text: str, message: str) -> None:
    with pytest.raises(KeyRingError, match=message):
        KeyRing.from_json(text)


def test_unreadable_key_ring_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(KeyRingError, match=r"ImagingCloud\.Storage\.KeyRingFile: cannot read"):
        KeyRing.from_file(tmp_path / "missing.json", "ImagingCloud.Storage.KeyRingFile")


def test_key_material_never_in_repr(ring: KeyRing) -> None:
    assert ring.current.hex() not in repr(ring)
    assert "_keys" not in repr(ring)
