import io

import pytest
from imgcloud.compression import (
    CompressionPolicy,
    compress,
    has_pixel_data,
    transfer_syntax_of,
)
from imgcloud.errors import ConfigurationError
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate
from pydicom.uid import UID

from deploy.samples.studies import make_study

JPEG_LS = "1.2.840.10008.1.2.4.80"


def encoded(ds: Dataset, syntax: str | None = None) -> bytes:
    if syntax:
        ds.file_meta.TransferSyntaxUID = UID(syntax)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


@pytest.fixture
def ct() -> Dataset:
    return next(make_study(21, "CT", instances=1).instances())


def test_default_policy_is_jpeg_ls_and_applies_to_uncompressed_only() -> None:
    policy = CompressionPolicy.from_name("jpeg-ls-lossless")
    assert policy.plan("1.2.840.10008.1.2.1") == JPEG_LS
    assert policy.plan("1.2.840.10008.1.2") == JPEG_LS
    for already in (
        "1.2.840.10008.1.2.4.50",
        "1.2.840.10008.1.2.4.51",  # lossy JPEG
        "1.2.840.10008.1.2.4.81",
        "1.2.840.10008.1.2.4.91",  # lossy JPEG-LS/J2K
        "1.2.840.10008.1.2.4.70",
        "1.2.840.10008.1.2.5",
        JPEG_LS,
    ):
        assert policy.plan(already) is None, already


def test_keep_policy_never_transcodes() -> None:
    assert CompressionPolicy.from_name("keep").plan("1.2.840.10008.1.2.1") is None


def test_unknown_policy_names_the_setting() -> None:
    with pytest.raises(ConfigurationError, match=r"ImagingCloud\.Compression"):
        CompressionPolicy.from_name("zip")


def test_compress_calls_the_transcoder_with_the_target(ct: Dataset) -> None:
    calls: list[str] = []

    def fake(dicom: bytes, syntax: str) -> bytes:
        calls.append(syntax)
        return dicom[: len(dicom) // 3]

    raw = encoded(ct)
    out = compress(raw, CompressionPolicy.from_name("jpeg-ls-lossless"), fake)
    assert calls == [JPEG_LS] and out is not None and len(out) < len(raw)


def test_lossy_input_is_never_recompressed(ct: Dataset) -> None:
    ct.PixelData = encapsulate([b"\xff\xd8 lossy JPEG frame \xff\xd9"])
    ct["PixelData"].VR = "OB"
    ct.BitsAllocated, ct.BitsStored, ct.HighBit = 8, 8, 7
    raw = encoded(ct, "1.2.840.10008.1.2.4.50")

    def must_not_run(dicom: bytes, syntax: str) -> bytes:
        raise AssertionError("a lossy instance was transcoded")

    assert compress(raw, CompressionPolicy.from_name("jpeg-ls-lossless"), must_not_run) is None


def test_transcoder_failure_keeps_the_original(ct: Dataset) -> None:
    def broken(dicom: bytes, syntax: str) -> bytes:
        raise RuntimeError("codec refuses 32-bit data")

    assert compress(encoded(ct), CompressionPolicy.from_name("jpeg-ls-lossless"), broken) is None


def test_a_larger_result_is_not_used(ct: Dataset) -> None:
    out = compress(
        encoded(ct),
        CompressionPolicy.from_name("jpeg-ls-lossless"),
        lambda dicom, syntax: dicom + b"\0" * 10,
    )
    assert out is None


def test_helpers(ct: Dataset) -> None:
    raw = encoded(ct)
    assert transfer_syntax_of(raw) == "1.2.840.10008.1.2.1"
    assert transfer_syntax_of(b"not dicom at all") is None
    assert has_pixel_data(raw)
    del ct.PixelData
    assert not has_pixel_data(encoded(ct))
