"""What the edge records about each study on arrival, for the indexer (A2).

The tags that link images to an exam (institution, accession no., Study Instance UID,
modality, body part, date and time) are kept readable; the patient's personal data (name,
patient ID, sex, birth date) is sealed with the edge's key ring before it touches disk, so
the records file holds none of it in clear. Records wait in an outbox until the indexer
has them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .sqlite_store import SealedStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS study_records (
    study_instance_uid  TEXT PRIMARY KEY,
    orthanc_study_id    TEXT NOT NULL,
    public              TEXT NOT NULL,   -- JSON: linking tags, no personal data
    sealed              BLOB NOT NULL,   -- personal data, envelope-encrypted
    state               TEXT NOT NULL,   -- pending | sent | refused (by the indexer)
    recorded_at         REAL NOT NULL,
    sent_at             REAL
);
"""
PERSONAL = {
    "patient_name": ("PatientMainDicomTags", "PatientName"),
    "patient_id": ("PatientMainDicomTags", "PatientID"),
    "patient_sex": ("PatientMainDicomTags", "PatientSex"),
    "patient_birth_date": ("PatientMainDicomTags", "PatientBirthDate"),
}
LINKING = {
    "study_instance_uid": "StudyInstanceUID",
    "accession_number": "AccessionNumber",
    "study_date": "StudyDate",
    "study_time": "StudyTime",
    "study_description": "StudyDescription",
    "institution_name": "InstitutionName",
}


@dataclass(frozen=True)
class StudyRecord:
    public: dict[str, Any]
    personal: dict[str, str]


def build_record(
    institution: str, study: dict[str, Any], series: list[dict[str, Any]]
) -> StudyRecord:
    """From Orthanc's /studies/{id} and /studies/{id}/series answers."""
    tags = study.get("MainDicomTags", {})
    public: dict[str, Any] = {"institution": institution}
    for field, keyword in LINKING.items():
        public[field] = tags.get(keyword, "")
    public["modalities"] = sorted({s["MainDicomTags"].get("Modality", "") for s in series} - {""})
    public["body_parts"] = sorted(
        {s["MainDicomTags"].get("BodyPartExamined", "") for s in series} - {""}
    )
    public["series_count"] = len(series)
    public["instance_count"] = sum(len(s.get("Instances", [])) for s in series)
    public["complete"] = bool(study.get("IsStable", False))  # no instance for StableAge
    personal = {
        field: study.get(level, {}).get(key, "") for field, (level, key) in PERSONAL.items()
    }
    return StudyRecord(public, personal)


class RecordStore(SealedStore):
    """The records file (SQLite, WAL): one row per study, personal data sealed."""

    migrations = (SCHEMA,)  # 1: as the records file was first written (A2)

    def save(self, orthanc_study_id: str, record: StudyRecord) -> None:
        """Insert or refresh (more series may have arrived); a refresh is pending again."""
        uid = record.public["study_instance_uid"]
        sealed = self.seal(json.dumps(record.personal, ensure_ascii=False).encode(), uid)
        self.run(
            """INSERT INTO study_records (study_instance_uid, orthanc_study_id, public,
                   sealed, state, recorded_at) VALUES (?, ?, ?, ?, 'pending', ?)
               ON CONFLICT (study_instance_uid) DO UPDATE SET public = excluded.public,
                   sealed = excluded.sealed, state = 'pending',
                   recorded_at = excluded.recorded_at""",
            (uid, orthanc_study_id, json.dumps(record.public), sealed, self.clock()),
        )

    def get(self, orthanc_study_id: str) -> dict[str, Any] | None:
        """The record with its personal data opened (for the hospital's own API)."""
        row = self.one(
            "SELECT study_instance_uid, public, sealed, state, recorded_at FROM study_records "
            "WHERE orthanc_study_id = ?",
            (orthanc_study_id,),
        )
        if row is None:
            return None
        uid, public, sealed, state, recorded_at = row
        personal = json.loads(self.unseal(sealed, uid))
        return json.loads(public) | {
            "patient": personal,
            "state": state,
            "recorded_at": recorded_at,
        }

    def pending(self, limit: int = 100) -> list[str]:
        rows = self.all(
            "SELECT orthanc_study_id FROM study_records WHERE state = 'pending' "
            "ORDER BY recorded_at LIMIT ?",
            (limit,),
        )
        return [r[0] for r in rows]

    def pending_public(self, limit: int = 100) -> list[tuple[str, dict[str, Any], float]]:
        """(study UID, linking tags, recorded_at) of records not yet sent: no personal data."""
        rows = self.all(
            "SELECT study_instance_uid, public, recorded_at FROM study_records "
            "WHERE state = 'pending' ORDER BY recorded_at LIMIT ?",
            (limit,),
        )
        return [(uid, json.loads(public), at) for uid, public, at in rows]

    def mark_sent(self, study_instance_uid: str, recorded_at: float | None = None) -> None:
        """Sent; with `recorded_at`, only if the record was not refreshed since."""
        self.run(
            "UPDATE study_records SET state = 'sent', sent_at = ? WHERE study_instance_uid = ? "
            "AND (? IS NULL OR recorded_at = ?)",
            (self.clock(), study_instance_uid, recorded_at, recorded_at),
        )

    def mark_refused(self, study_instance_uid: str, recorded_at: float | None = None) -> None:
        """The indexer will not take this record as it is; a refresh makes it pending again."""
        self.run(
            "UPDATE study_records SET state = 'refused' WHERE study_instance_uid = ? "
            "AND (? IS NULL OR recorded_at = ?)",
            (study_instance_uid, recorded_at, recorded_at),
        )
