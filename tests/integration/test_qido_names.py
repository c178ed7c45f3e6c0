"""Study search through the gateway with the filters OHIF's study list sends: every QIDO
attribute answers as central does, PatientName matches its pinyin, 汉字 and phonetic
groups, and answers carry the full name in UTF-8 (ISO_IR 192)."""

from __future__ import annotations

import random
import string
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import requests
from dicomweb_client.api import DICOMwebClient

from deploy.samples.studies import SampleStudy, make_study
from deploy.stack.client import StackClient, find_study

from ..support.eventually import eventually
from .fresh import fresh_seed

HANZI = "赵钱孙李周吴郑王冯陈褚卫蒋沈韩杨朱秦尤许何吕施张孔曹严华金魏陶姜"
# Rare characters the sample generator never uses: a two-character family name made of them
# is this run's alone, so "马*" style searches cannot meet another test's patient.
RARE = "亓仉禚訾阙隗缑亢郜璩"
RETRIEVE_URL = "00081190"  # central's own URL in its answer, the gateway's in ours


@dataclass(frozen=True)
class Named:
    study: SampleStudy
    family: str  # pinyin family name, unique to this run
    given: str
    family_hanzi: str
    given_hanzi: str

    @property
    def uid(self) -> str:
        return self.study.exam.study_instance_uid

    @property
    def pn(self) -> str:
        return f"{self.family}^{self.given}={self.family_hanzi}^{self.given_hanzi}"


def _send(stack: StackClient, edge: str, named: Named) -> None:
    def datasets() -> Iterator:
        for ds in named.study.instances():
            ds.PatientName = named.pn
            yield ds

    assert stack.send_to_edge(edge, datasets()).ok


@pytest.fixture(scope="module")
def names(stack: StackClient) -> dict[str, Named]:
    """The same unique name at hospital A and at hospital B (two patients), on central."""
    rng = random.Random(fresh_seed())  # noqa: S311 - sample data
    family = "CS" + "".join(rng.choices(string.ascii_uppercase, k=6))
    given = "".join(rng.choices(string.ascii_uppercase, k=5))
    family_hanzi, given_hanzi = "".join(rng.sample(RARE, 2)), "".join(rng.choices(HANZI, k=2))
    made = {}
    for edge, code in (("A", "H0001"), ("B", "H0002")):
        study = make_study(fresh_seed(), "CT", instances=1, institution_code=code)
        made[edge] = Named(study, family, given, family_hanzi, given_hanzi)
        _send(stack, edge, made[edge])
    with stack.orthanc("CENTRAL_ORTHANC") as central:
        eventually(
            lambda: all(find_study(central, n.uid) for n in made.values()),
            what="both hospitals' studies at central",
            timeout=120,
            interval=0.5,
        )
    return made


def dicomweb(stack: StackClient, token: str) -> DICOMwebClient:
    session = requests.Session()
    session.trust_env = False  # else REQUESTS_CA_BUNDLE overrides verify
    session.verify = stack["CA_CERT"]
    session.headers["Authorization"] = f"Bearer {token}"
    return DICOMwebClient(url=f"{stack['GATEWAY_URL']}/dicom-web", session=session)


def uids(answer: list[dict]) -> list[str]:
    return [s["0020000D"]["Value"][0] for s in answer]


def wait_readable(client: DICOMwebClient, named: Named) -> None:
    eventually(
        lambda: uids(client.search_for_studies(search_filters={"StudyInstanceUID": named.uid})),
        what="the study readable through the gateway",
        timeout=90,
        interval=0.5,
    )


def ohif(**filters: str) -> dict[str, str]:
    """A study-list query as OHIF 3.13 builds it (wildcards around typed text)."""
    shaped = {"limit": "101", "offset": "0", "fuzzymatching": "false"}
    shaped["includefield"] = "00081030,00080060,00080090,00100030"
    shaped.update({k: f"*{v}*" if k != "StudyDate" and k != "ModalitiesInStudy" else v
                   for k, v in filters.items()})  # fmt: skip
    return shaped


def test_name_searches_match_every_group_through_the_gateway(
    stack: StackClient, tokens: dict[str, str], names: dict[str, Named]
) -> None:
    mine, theirs = names["A"], names["B"]
    rad_a = dicomweb(stack, tokens["rad_a"])
    wait_readable(rad_a, mine)
    queries = [
        f"{mine.family_hanzi}*",  # 马*
        mine.family_hanzi + mine.given_hanzi,  # 马华
        f"{mine.family_hanzi}^{mine.given_hanzi}",  # 马^华
        f"{mine.family}*",  # MA*
        f"{mine.family}^{mine.given}".lower(),  # ma^hua
        f"{mine.family}^{mine.given}",  # MA^HUA
        f"{mine.family}^{mine.given}=*",  # MA^HUA=*
        f"*{mine.given[1:4].lower()}*",
        f"={mine.family_hanzi}*",
        mine.pn,
    ]
    for query in queries:
        found = uids(rad_a.search_for_studies(search_filters={"PatientName": query}))
        assert found == [mine.uid], query  # hospital B's patient of the same name stays out
    admin = dicomweb(stack, tokens["admin"])
    found = uids(admin.search_for_studies(search_filters={"PatientName": queries[0]}))
    assert sorted(found) == sorted([mine.uid, theirs.uid])
    for miss in (f"{mine.family}^{mine.given}=李*", f"{mine.family}X*", "钱钱钱钱*"):
        assert uids(rad_a.search_for_studies(search_filters={"PatientName": miss})) == []
    # OHIF's study list: typed text wrapped in wildcards, PatientID sent as its tag
    typed = ohif(PatientName=mine.family_hanzi, StudyDescription="胸部")
    assert uids(rad_a.search_for_studies(search_filters=typed)) == [mine.uid]


def test_answers_carry_the_full_name_in_utf8(
    stack: StackClient, tokens: dict[str, str], names: dict[str, Named]
) -> None:
    mine = names["A"]
    rad_a = dicomweb(stack, tokens["rad_a"])
    wait_readable(rad_a, mine)
    (study,) = rad_a.search_for_studies(search_filters={"PatientName": f"{mine.family_hanzi}*"})
    assert study["00080005"]["Value"] == ["ISO_IR 192"]
    assert study["00100010"]["Value"] == [
        {
            "Alphabetic": f"{mine.family}^{mine.given}",
            "Ideographic": f"{mine.family_hanzi}^{mine.given_hanzi}",
        }
    ]


def test_ohif_study_list_filters_answer_as_central_does(
    stack: StackClient, tokens: dict[str, str], names: dict[str, Named]
) -> None:
    """Each OHIF filter shape that central can answer gives, through the gateway, exactly
    central's studies (all of them for an administrator, the readable ones for staff)."""
    mine = names["A"]
    exam, patient = mine.study.exam, mine.study.patient
    day = exam.exam_datetime.strftime("%Y%m%d")
    shapes = [
        {"00100020": f"*{patient.mrn}*"},
        {"00100020": f"{patient.mrn[:-2]}*"},
        {"PatientID": patient.mrn},
        {"PatientName": f"*{mine.family}*"},
        {"PatientName": f"{mine.family}^{mine.given}=*"},
        {"AccessionNumber": f"*{exam.exam_no}*"},
        {"AccessionNumber": f"{exam.exam_no}", "ModalitiesInStudy": "CT"},
        {"PatientName": f"*{mine.family}*", "StudyDate": f"{day}-{day}"},
        {"PatientName": f"*{mine.family}*", "StudyDate": f"{day}-"},
        {"PatientName": f"*{mine.family}*", "StudyDate": f"-{day}"},
        {"PatientName": f"*{mine.family}*", "StudyDescription": "CT*"},
        {"PatientName": f"*{mine.family}*", "StudyDate": "19700102-19700103"},
    ]
    admin, rad_a = dicomweb(stack, tokens["admin"]), dicomweb(stack, tokens["rad_a"])
    wait_readable(rad_a, mine)
    with stack.orthanc("CENTRAL_ORTHANC") as central:
        for shape in shapes:
            query = {**ohif(), **shape}
            raw = "&".join(f"{k}={v}" for k, v in query.items())  # Orthanc wants raw bytes
            direct = central.get(f"/dicom-web/studies?{raw}")
            assert direct.status_code == 200, shape
            at_central = direct.json()
            via_admin = admin.search_for_studies(search_filters=query)
            assert sorted(uids(via_admin)) == sorted(uids(at_central)), shape
            via_staff = rad_a.search_for_studies(search_filters=query)
            expected = [_bare(s) for s in at_central if uids([s]) == [mine.uid]]
            assert [_bare(s) for s in via_staff if uids([s]) == [mine.uid]] == expected, shape
            assert mine.uid in uids(via_staff) or "19700102" in str(shape), shape
            assert names["B"].uid not in uids(via_staff), shape


def _bare(study: dict) -> dict:
    return {k: v for k, v in study.items() if k != RETRIEVE_URL}
