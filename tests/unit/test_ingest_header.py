"""The upload check reads a DICOM file's identifying elements from the first chunks of
the stream, whatever their sizes, and hands on every byte it read; a file that two readers
could read as two different instances is refused."""

from __future__ import annotations

import asyncio
import io
import shutil
import struct
import subprocess
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.filereader import dcmread
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)

from deploy.samples.studies import make_study
from indexer.errors import InvalidRecord
from indexer.services.ingest import Ambiguous, HeaderTooLarge, split_header
from tests.raw_dicom import data_set_start, deflate_bomb, part10, unknown_vr_polyglot


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


# -- the element walk reads each length as DCMTK does (#18, 1 review) ------------------------


def dcmdump_study(data: bytes, tmp_path: Path) -> str:
    """The StudyInstanceUID that DCMTK (Orthanc's reader) finds in `data`."""
    path = tmp_path / "f.dcm"
    path.write_bytes(data)
    out = subprocess.run(
        ["dcmdump", "+P", "0020,000d", str(path)], capture_output=True, text=True, timeout=30
    ).stdout
    return out.split("[", 1)[1].split("]", 1)[0]


def test_an_unknown_vr_that_dcmtk_reads_with_a_long_length_is_refused(tmp_path: Path) -> None:
    ds = next(make_study(9, "CT", instances=1).instances())
    victim = "1.2.3.4.5.6.7.8.9"
    data = unknown_vr_polyglot(ds, victim)
    if shutil.which("dcmdump"):  # the two readers do see two studies in it
        assert dcmdump_study(data, tmp_path) == victim
    assert dcmread(io.BytesIO(data)).StudyInstanceUID == ds.StudyInstanceUID
    with pytest.raises(Ambiguous, match=r"\(0008,0001\) has VR 'ZZ', not standard"):
        asyncio.run(split_header(chunks(data, 4096)))


@pytest.mark.parametrize("vr", [b"ZZ", b"ob", b"\x00\x01", b"O\xff"])
def test_any_vr_outside_the_standard_is_refused(vr: bytes) -> None:
    ds = next(make_study(9, "CT", instances=1).instances())
    data = part10(ds)
    start = data_set_start(data)
    odd = struct.pack("<HH2sH", 0x0008, 0x0001, vr, 4) + b"1234"
    with pytest.raises(Ambiguous, match="not standard"):
        asyncio.run(split_header(chunks(data[:start] + odd + data[start:], 4096)))


def item(**values: str) -> Dataset:
    found = Dataset()
    for name, value in values.items():
        setattr(found, name, value)
    return found


def with_sequences(undefined: bool, syntax: str) -> tuple[bytes, Dataset]:
    """A CT instance with ProcedureCodeSequence and ReferencedImageSequence (before the
    UIDs), an item holding another study's UID and a nested sequence."""
    ds = next(make_study(10, "CT", instances=1).instances())
    ds.ProcedureCodeSequence = [item(CodeValue="CT01", CodingSchemeDesignator="L", CodeMeaning="x")]
    inner = item(StudyInstanceUID=generate_uid(), ReferencedSOPInstanceUID=generate_uid())
    inner.PurposeOfReferenceCodeSequence = [item(CodeValue="121311")]  # nested
    ds.ReferencedImageSequence = [inner, item(ReferencedSOPClassUID="1.2.840.10008.5.1.4.1.1.2")]
    if undefined:
        for sequence in (ds.ProcedureCodeSequence, ds.ReferencedImageSequence):
            for one in sequence:
                one.is_undefined_length_sequence_item = True
        for name in ("ProcedureCodeSequence", "ReferencedImageSequence"):
            ds[name].is_undefined_length = True
        inner["PurposeOfReferenceCodeSequence"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = UID(syntax)
    return part10(ds), ds


@pytest.mark.parametrize("undefined", [True, False], ids=["undefined length", "defined length"])
@pytest.mark.parametrize(
    "syntax",
    [
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        ExplicitVRBigEndian,
        DeflatedExplicitVRLittleEndian,
    ],
)
@pytest.mark.parametrize("size", [7, 4096, 10**7])
def test_sequences_before_the_uids_are_stepped_over_item_by_item(
    undefined: bool, syntax: str, size: int
) -> None:
    data, ds = with_sequences(undefined, syntax)
    found, _ = asyncio.run(split_header(chunks(data, size)))
    assert (found.study, found.series, found.sop) == (
        ds.StudyInstanceUID,
        ds.SeriesInstanceUID,
        ds.SOPInstanceUID,
    )  # not the study UID inside the item


def test_an_item_longer_than_its_sequence_is_refused() -> None:
    data, ds = with_sequences(False, ExplicitVRLittleEndian)
    code = ds.ProcedureCodeSequence[0]
    at = data.index(b"\x08\x00\x32\x10SQ")  # ProcedureCodeSequence, defined length
    (length,) = struct.unpack_from("<I", data, at + 8)
    lying = data[: at + 8] + struct.pack("<I", length - 2) + data[at + 12 :]
    assert code.CodeValue
    with pytest.raises(Ambiguous, match="do not match their lengths"):
        asyncio.run(split_header(chunks(lying, 4096)))


def test_a_deflate_bomb_is_refused_at_the_limit_without_inflating_it() -> None:
    bomb = deflate_bomb(next(make_study(12, "CT", instances=1).instances()), 256)
    assert len(bomb) < 400_000
    tracemalloc.start()
    try:
        with pytest.raises(HeaderTooLarge, match="first 4 MB") as info:
            asyncio.run(split_header(chunks(bomb, 65536)))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.value.status == 400
    assert peak < 32 * 1024 * 1024, peak
