import zlib

import numpy as np
import pytest

from deploy.samples.studies import make_study
from indexer.services import national_id


def test_same_seed_same_study() -> None:
    a, b = make_study(5, "CT", instances=3), make_study(5, "CT", instances=3)
    assert a.patient == b.patient
    assert a.exam == b.exam
    assert a.sop_instance_uids == b.sop_instance_uids
    for x, y in zip(a.instances(), b.instances(), strict=True):
        assert x.PixelData == y.PixelData


def test_different_seeds_differ() -> None:
    a, b = make_study(5, "CT", instances=2), make_study(6, "CT", instances=2)
    assert a.exam.study_instance_uid != b.exam.study_instance_uid
    assert a.patient.national_id != b.patient.national_id


def test_patients_have_valid_national_ids_matching_sex_and_birth_date() -> None:
    for seed in range(50):
        p = make_study(seed, "DX").patient
        assert national_id.normalize(p.national_id) == p.national_id
        assert national_id.sex(p.national_id) == p.sex
        assert national_id.birth_date(p.national_id) == p.birth_date
        assert len(p.phone) == 11 and p.phone.startswith("1")
        assert all("\u4e00" <= ch <= "\u9fff" for ch in p.name_hanzi)


@pytest.mark.parametrize(("modality", "rows"), [("CT", 512), ("MR", 256), ("DX", 1024)])
def test_images_have_structure_and_noise(modality: str, rows: int) -> None:
    study = make_study(11, modality, instances=3)
    ds = next(study.instances())
    assert (ds.Rows, ds.Columns) == (rows, rows)
    assert ds.BitsAllocated == 16 and ds.BitsStored == 12
    assert ds.AccessionNumber == study.exam.exam_no and len(ds.AccessionNumber) <= 16
    pixels = np.frombuffer(ds.PixelData, dtype=np.uint16)
    assert pixels.max() < 4096
    # Realistic: compressible like real images (not random), not trivially (not constant).
    ratio = len(ds.PixelData) / len(zlib.compress(ds.PixelData, 6))
    assert 1.5 < ratio < 10, ratio
    assert len(np.unique(pixels)) > 100


def test_ct_series_is_geometrically_consistent() -> None:
    study = make_study(3, "CT", instances=4)
    positions = [float(ds.ImagePositionPatient[2]) for ds in study.instances()]
    assert positions == sorted(positions, reverse=True)
    assert len({ds.SeriesInstanceUID for ds in study.instances()}) == 1


def test_invalid_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="modality"):
        make_study(1, "PET")
    with pytest.raises(ValueError, match="instances"):
        make_study(1, "CT", instances=0)
