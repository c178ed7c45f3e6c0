"""Synthetic patients with Chinese names, valid national ID numbers and phone numbers."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np

from indexer.services import national_id

# (hanzi, pinyin) pairs; common surnames and given-name characters.
SURNAMES = (
    ("王", "WANG"),
    ("李", "LI"),
    ("张", "ZHANG"),
    ("刘", "LIU"),
    ("陈", "CHEN"),
    ("杨", "YANG"),
    ("赵", "ZHAO"),
    ("黄", "HUANG"),
    ("周", "ZHOU"),
    ("吴", "WU"),
    ("徐", "XU"),
    ("孙", "SUN"),
    ("马", "MA"),
    ("朱", "ZHU"),
    ("胡", "HU"),
    ("郭", "GUO"),
    ("何", "HE"),
    ("高", "GAO"),
    ("林", "LIN"),
    ("罗", "LUO"),
)
GIVEN = (
    ("伟", "WEI"),
    ("芳", "FANG"),
    ("娜", "NA"),
    ("敏", "MIN"),
    ("静", "JING"),
    ("丽", "LI"),
    ("强", "QIANG"),
    ("磊", "LEI"),
    ("军", "JUN"),
    ("洋", "YANG"),
    ("勇", "YONG"),
    ("艳", "YAN"),
    ("杰", "JIE"),
    ("娟", "JUAN"),
    ("涛", "TAO"),
    ("明", "MING"),
    ("超", "CHAO"),
    ("秀", "XIU"),
    ("霞", "XIA"),
    ("平", "PING"),
    ("刚", "GANG"),
    ("桂", "GUI"),
    ("英", "YING"),
    ("华", "HUA"),
    ("建", "JIAN"),
)
# Administrative region codes of Liaoning (first six digits of the ID number).
REGIONS = (
    "210102",
    "210103",
    "210202",
    "210203",
    "210302",
    "210402",
    "210502",
    "210602",
    "210702",
    "210802",
    "210902",
    "211002",
    "211102",
    "211202",
    "211302",
    "211402",
)
COMPLAINTS = (
    "咳嗽两周",
    "头痛三天",
    "胸痛一天",
    "腹痛伴发热",
    "外伤后腰痛",
    "体检",
    "右膝疼痛",
    "头晕乏力",
    "气短一月",
    "左上腹不适",
)


@dataclass(frozen=True)
class Patient:
    mrn: str
    name_hanzi: str
    name_pinyin: str  # DICOM alphabetic form, FAMILY^GIVEN
    national_id: str
    phone: str
    sex: str  # M / F
    birth_date: dt.date
    chief_complaint: str

    @property
    def dicom_name(self) -> str:
        """PN with alphabetic and ideographic groups, e.g. WANG^WEI=王^伟."""
        return f"{self.name_pinyin}={self.name_hanzi[0]}^{self.name_hanzi[1:]}"

    def age_on(self, day: dt.date) -> int:
        years = day.year - self.birth_date.year
        return years - ((day.month, day.day) < (self.birth_date.month, self.birth_date.day))


def make_patient(rng: np.random.Generator, mrn: str, today: dt.date) -> Patient:
    """One synthetic patient; all randomness from rng."""
    surname = SURNAMES[rng.integers(len(SURNAMES))]
    given = [GIVEN[i] for i in rng.integers(len(GIVEN), size=int(rng.integers(1, 3)))]
    born = today - dt.timedelta(days=int(rng.integers(18 * 365, 90 * 365)))
    sex = "M" if rng.random() < 0.5 else "F"
    sequence = int(rng.integers(0, 500)) * 2 + (1 if sex == "M" else 0)
    nid = national_id.make(REGIONS[rng.integers(len(REGIONS))], born, sequence)
    phone = (
        "1"
        + str(rng.choice(["3", "5", "7", "8", "9"]))
        + "".join(str(d) for d in rng.integers(0, 10, size=9))
    )
    return Patient(
        mrn=mrn,
        name_hanzi=surname[0] + "".join(g[0] for g in given),
        name_pinyin=f"{surname[1]}^{''.join(g[1] for g in given)}",
        national_id=nid,
        phone=phone,
        sex=sex,
        birth_date=born,
        chief_complaint=COMPLAINTS[rng.integers(len(COMPLAINTS))],
    )
