"""A study's master index ID, once the indexer has assigned it (asynchronously, after the
exam and its images have met)."""

from __future__ import annotations

import httpx

from deploy.samples.studies import SampleStudy

from .eventually import eventually


def master_index_id(api: httpx.Client, institution_code: str, exam_no: str) -> str:
    """The master index ID of an exam, read with `api` (a client that may read the exam)."""
    path = f"/api/v1/institutions/{institution_code}/exams/{exam_no}"

    def assigned() -> str | None:
        answer = api.get(path)
        assert answer.status_code == 200, f"{answer.status_code} {answer.text[:200]}"
        found = answer.json()["master_index_id"]
        return str(found) if found else None

    return eventually(assigned, what=f"exam {exam_no}: a master index ID", timeout=30)


def master_index_of(api: httpx.Client, study: SampleStudy, code: str | None = None) -> str:
    """The master index ID of a sample study's exam (at its own institution by default)."""
    return master_index_id(api, code or study.exam.institution_code, study.exam.exam_no)
