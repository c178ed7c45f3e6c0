"""The upload check reads a DICOM file's StudyInstanceUID from the first chunks of the
stream, whatever their sizes, and hands on every byte it read."""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator

import pytest

from deploy.samples.studies import make_study
from indexer.errors import InvalidRecord
from indexer.services.ingest import split_header


def dicom_file() -> tuple[bytes, str]:
    study = make_study(5, "CT", instances=1)
    buffer = io.BytesIO()
    next(study.instances()).save_as(buffer, enforce_file_format=True)
    return buffer.getvalue(), study.exam.study_instance_uid


async def chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


@pytest.mark.parametrize("size", [7, 500, 4096, 65536, 10**7])
def test_the_uid_is_found_and_no_byte_is_lost(size: int) -> None:
    data, uid = dicom_file()

    async def run() -> tuple[str, bytes]:
        stream = chunks(data, size)
        found, prefix = await split_header(stream)
        rest = b"".join([chunk async for chunk in stream])
        return found, prefix + rest

    found, whole = asyncio.run(run())
    assert found == uid and whole == data


@pytest.mark.parametrize("body", [b"not dicom at all" * 100, b"", b"\0" * 128 + b"DICM"])
def test_anything_else_is_refused(body: bytes) -> None:
    with pytest.raises(InvalidRecord):
        asyncio.run(split_header(chunks(body, 1000)))
