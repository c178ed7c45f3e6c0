import sqlite3
from pathlib import Path

from imgcloud.storage.envelope import open_sealed, seal
from imgcloud.storage.keyring import KeyRing
from imgcloud.study_records import RecordStore, build_record

STUDY = {
    "MainDicomTags": {
        "StudyInstanceUID": "1.2.840.99.1",
        "AccessionNumber": "H000126110200042",
        "StudyDate": "20261102",
        "StudyTime": "083000",
        "InstitutionName": "Demo Hospital A",
    },
    "PatientMainDicomTags": {
        "PatientName": "王^小明",
        "PatientID": "MRN00000042",
        "PatientSex": "M",
        "PatientBirthDate": "19800101",
    },
}
SERIES = [
    {"MainDicomTags": {"Modality": "CT", "BodyPartExamined": "CHEST"}, "Instances": ["a", "b"]},
    {"MainDicomTags": {"Modality": "CT", "BodyPartExamined": "ABDOMEN"}, "Instances": ["c"]},
]


def test_record_keeps_linking_tags_and_separates_personal_data() -> None:
    record = build_record("H0001", STUDY, SERIES)
    assert record.public["institution"] == "H0001"
    assert record.public["accession_number"] == "H000126110200042"
    assert record.public["modalities"] == ["CT"]
    assert record.public["body_parts"] == ["ABDOMEN", "CHEST"]
    assert (record.public["series_count"], record.public["instance_count"]) == (2, 3)
    assert record.personal["patient_name"] == "王^小明"
    assert "王" not in str(record.public) and "MRN00000042" not in str(record.public)


def test_store_seals_personal_data_on_disk(tmp_path: Path) -> None:
    ring = KeyRing.generate("k1")

    def sealer(data: bytes, uid: str) -> bytes:
        return seal(data, object_key=f"study-record/{uid}", attachment_type=0, ring=ring)

    def unsealer(blob: bytes, uid: str) -> bytes:
        return open_sealed(blob, object_key=f"study-record/{uid}", attachment_type=0, ring=ring)

    store = RecordStore(tmp_path / "records.sqlite", sealer, unsealer)
    store.save("orthanc-study-1", build_record("H0001", STUDY, SERIES))
    got = store.get("orthanc-study-1")
    assert got is not None
    assert got["patient"]["patient_id"] == "MRN00000042" and got["state"] == "pending"
    assert store.pending() == ["orthanc-study-1"]
    store.mark_sent("1.2.840.99.1")
    assert store.pending() == []
    store.close()
    raw = b"".join(
        p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("records.sqlite")
    )
    assert b"MRN00000042" not in raw and "王".encode() not in raw and b"19800101" not in raw
    assert b"H000126110200042" in raw  # the linking tags stay readable
    with sqlite3.connect(tmp_path / "records.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM study_records").fetchone()[0] == 1
