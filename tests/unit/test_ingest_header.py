"""The upload check reads a DICOM file's identifying elements from the first chunks of
the stream, whatever their sizes, and hands on every byte it read; a file that two readers
could read as two different instances is refused."""

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
        return found.study, prefix + rest

    found, whole = asyncio.run(run())
    assert found == uid and whole == data


@pytest.mark.parametrize("body", [b"not dicom at all" * 100, b"", b"\0" * 128 + b"DICM"])
def test_anything_else_is_refused(body: bytes) -> None:
    with pytest.raises(InvalidRecord):
        asyncio.run(split_header(chunks(body, 1000)))


def test_a_chunk_that_ends_inside_the_uid_does_not_pass_a_cut_uid() -> None:
    """An uploader who pauses mid-UID must not get a shortened UID checked instead."""
    ds = next(make_study(6, "CT", instances=1).instances())
    ds.add_new(0x00190010, "LO", "PADDING")  # a private element before group 0020
    ds.add_new(0x00191000, "OB", b"\0" * 3000)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data, uid = buffer.getvalue(), str(ds.StudyInstanceUID)
    cut = data.index(uid.encode()) + 10

    async def chunked() -> AsyncIterator[bytes]:
        yield data[:cut]
        yield data[cut:]

    found, _ = asyncio.run(split_header(chunked()))
    assert cut > 2048 and found.study == uid


def test_a_zip_lookalike_is_refused() -> None:
    data, _uid = dicom_file()
    polyglot = b"PK\x03\x04" + data[4:]  # Orthanc would unpack it as an archive
    with pytest.raises(InvalidRecord, match="archive"):
        asyncio.run(split_header(chunks(polyglot, 4096)))


def test_a_deflated_file_gets_a_clear_refusal_not_a_crash() -> None:
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = next(make_study(8, "CT", instances=1).instances())
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    broken = buffer.getvalue()[:-200] + b"\xff" * 200  # a deflate stream that fails
    try:
        found, _ = asyncio.run(split_header(chunks(broken, 4096)))
    except InvalidRecord:
        return  # refused with a 422
    assert found.study == str(ds.StudyInstanceUID)  # or read: the UID came before the damage
