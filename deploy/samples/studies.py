"""Whole synthetic exams: patient, exam record, report and the DICOM instances."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)

from . import images
from .people import Patient, make_patient

CHINA_TZ = dt.timezone(dt.timedelta(hours=8))
MODALITIES = ("CT", "MR", "DX")


@dataclass(frozen=True)
class ModalityProfile:
    sop_class: str
    body_part: str
    exam_type: str
    method: str
    device: str
    department: str
    rows: int
    default_count: int


PROFILES = {
    "CT": ModalityProfile(
        CTImageStorage, "CHEST", "CT胸部平扫", "平扫", "SIM-CT 64", "呼吸内科", 512, 150
    ),
    "MR": ModalityProfile(
        MRImageStorage, "HEAD", "MR头颅平扫", "T1WI", "SIM-MR 1.5T", "神经内科", 256, 24
    ),
    "DX": ModalityProfile(
        DigitalXRayImageStorageForPresentation,
        "CHEST",
        "DR胸部正位",
        "正位",
        "SIM-DR",
        "急诊科",
        1024,
        1,
    ),
}
REPORTS = {
    "CT": (
        "双肺纹理清晰，未见明确实变影及结节影。纵隔居中，心影大小形态正常。",
        "胸部CT平扫未见明显异常。",
    ),
    "MR": (
        "脑实质信号均匀，灰白质分界清楚，脑室系统未见扩张，中线结构居中。",
        "头颅MR平扫未见明显异常。",
    ),
    "DX": (
        "双肺野清晰，肺纹理走行自然，心影不大，双膈面光整，肋膈角锐利。",
        "胸部正位片未见明显异常。",
    ),
}


@dataclass(frozen=True)
class Exam:
    institution_code: str
    institution_name: str
    exam_no: str  # accession number
    exam_uid: str
    modality: str
    body_part: str
    exam_type: str
    method: str
    device: str
    requesting_department: str
    exam_datetime: dt.datetime
    study_instance_uid: str
    series_instance_uid: str
    instance_count: int


@dataclass(frozen=True)
class Report:
    findings: str
    impression: str
    author: str
    reviewer: str
    approved_at: dt.datetime


@dataclass
class SampleStudy:
    """One exam of one patient; `instances()` generates its DICOM datasets on demand."""

    patient: Patient
    exam: Exam
    report: Report
    seed: int
    _sop_uids: list[str] = field(default_factory=list)

    @property
    def sop_instance_uids(self) -> list[str]:
        return list(self._sop_uids)

    def instances(self) -> Iterator[Dataset]:
        rng = np.random.default_rng([self.seed, 2])
        for index, sop_uid in enumerate(self._sop_uids):
            yield self._dataset(rng, index, sop_uid)

    def _dataset(self, rng: np.random.Generator, index: int, sop_uid: str) -> Dataset:
        exam, patient = self.exam, self.patient
        profile = PROFILES[exam.modality]
        count = exam.instance_count
        z = index / max(1, count - 1)
        if exam.modality == "CT":
            pixels = images.ct_slice(rng, z, profile.rows)
        elif exam.modality == "MR":
            pixels = images.mr_slice(rng, z, profile.rows)
        else:
            pixels = images.dx_image(rng, profile.rows)

        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = UID(profile.sop_class)
        meta.MediaStorageSOPInstanceUID = UID(sop_uid)
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 192"
        ds.SOPClassUID = profile.sop_class
        ds.SOPInstanceUID = sop_uid
        when = exam.exam_datetime
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = when.strftime("%Y%m%d")
        ds.StudyTime = ds.SeriesTime = when.strftime("%H%M%S")
        ds.ContentTime = (when + dt.timedelta(seconds=index)).strftime("%H%M%S")
        ds.AccessionNumber = exam.exam_no
        ds.Modality = exam.modality
        ds.Manufacturer = "Imaging Cloud Simulator"
        ds.ManufacturerModelName = exam.device
        ds.InstitutionName = exam.institution_name
        ds.StationName = f"{exam.institution_code}-{exam.modality}01"
        ds.StudyDescription = exam.exam_type
        ds.SeriesDescription = exam.method
        ds.RequestingService = exam.requesting_department
        ds.PatientName = patient.dicom_name
        ds.PatientID = patient.mrn
        ds.IssuerOfPatientID = exam.institution_code
        ds.PatientBirthDate = patient.birth_date.strftime("%Y%m%d")
        ds.PatientSex = patient.sex
        ds.PatientAge = f"{patient.age_on(when.date()):03d}Y"
        ds.BodyPartExamined = exam.body_part
        ds.StudyInstanceUID = exam.study_instance_uid
        ds.SeriesInstanceUID = exam.series_instance_uid
        ds.StudyID = exam.exam_no[-8:]
        ds.SeriesNumber = 1
        ds.InstanceNumber = index + 1
        ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[exam.study_instance_uid, "for"])
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = pixels.shape
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        if exam.modality in ("CT", "MR"):
            thickness = 2.0 if exam.modality == "CT" else 5.0
            spacing = 0.7 if exam.modality == "CT" else 0.9
            ds.SliceThickness = thickness
            ds.PixelSpacing = [spacing, spacing]
            ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
            ds.ImagePositionPatient = [
                -spacing * pixels.shape[1] / 2,
                -spacing * pixels.shape[0] / 2,
                -index * thickness,
            ]
            ds.SliceLocation = -index * thickness
        if exam.modality == "CT":
            ds.RescaleIntercept = -1024
            ds.RescaleSlope = 1
            ds.RescaleType = "HU"
            ds.WindowCenter = [40, -600]
            ds.WindowWidth = [400, 1500]
            ds.KVP = 120
            ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        elif exam.modality == "MR":
            ds.WindowCenter = 900
            ds.WindowWidth = 1600
            ds.MagneticFieldStrength = 1.5
            ds.ImageType = ["ORIGINAL", "PRIMARY", "M"]
        else:
            ds.WindowCenter = 2200
            ds.WindowWidth = 3000
            ds.ImagerPixelSpacing = [0.15, 0.15]
            ds.PixelSpacing = [0.15, 0.15]
            ds.PresentationIntentType = "FOR PRESENTATION"
            ds.ImageType = ["ORIGINAL", "PRIMARY"]
            ds.ViewPosition = "PA"
        ds.PixelData = pixels.tobytes()
        return ds


def make_study(
    seed: int,
    modality: str = "CT",
    *,
    instances: int | None = None,
    institution_code: str = "H0001",
    institution_name: str = "Demo Hospital A",
    today: dt.date | None = None,
) -> SampleStudy:
    """A deterministic exam for a seed: same seed, same patient, UIDs and pixels."""
    if modality not in PROFILES:
        raise ValueError(f"modality must be one of {', '.join(PROFILES)}")
    profile = PROFILES[modality]
    count = instances if instances is not None else profile.default_count
    if count < 1:
        raise ValueError("instances must be at least 1")
    rng = np.random.default_rng([seed, 1])
    day = today or dt.date(2026, 11, 2)
    patient = make_patient(rng, mrn=f"MRN{seed:08d}", today=day)
    when = dt.datetime.combine(day, dt.time(8, 0), tzinfo=CHINA_TZ) + dt.timedelta(
        minutes=int(rng.integers(0, 600))
    )
    entropy = [str(seed), modality, institution_code]
    study_uid = generate_uid(entropy_srcs=[*entropy, "study"])
    exam = Exam(
        institution_code=institution_code,
        institution_name=institution_name,
        exam_no=f"{institution_code}{day:%y%m}{seed % 10**7:07d}",  # SH: 16 chars
        exam_uid=str(uuid.UUID(bytes=rng.bytes(16), version=4)),
        modality=modality,
        body_part=profile.body_part,
        exam_type=profile.exam_type,
        method=profile.method,
        device=profile.device,
        requesting_department=profile.department,
        exam_datetime=when,
        study_instance_uid=study_uid,
        series_instance_uid=generate_uid(entropy_srcs=[*entropy, "series"]),
        instance_count=count,
    )
    findings, impression = REPORTS[modality]
    report = Report(
        findings=findings,
        impression=impression,
        author="李医生",
        reviewer="张主任",
        approved_at=when + dt.timedelta(hours=2),
    )
    study = SampleStudy(patient=patient, exam=exam, report=report, seed=seed)
    study._sop_uids.extend(
        generate_uid(entropy_srcs=[*entropy, "sop", str(i)]) for i in range(count)
    )
    return study
