import datetime as dt
import json
from pathlib import Path

import pytest
from imgcloud.edge_rules import EdgeRules, RulesRejected, RulesStore, TimeWindow


def at(hour: int, minute: int = 0) -> dt.datetime:
    return dt.datetime(2026, 11, 27, hour, minute)


def test_defaults_before_any_document(tmp_path: Path) -> None:
    store = RulesStore(tmp_path / "rules.json", "jpeg-lossless")
    assert store.current.version == 0 and store.current.compression == "jpeg-lossless"
    assert store.current.may_forward(at(3))


def test_windows_including_one_across_midnight() -> None:
    rules = EdgeRules(
        version=1,
        forward_windows=[
            TimeWindow(start=dt.time(20), end=dt.time(6)),
            TimeWindow(start=dt.time(12), end=dt.time(13)),
        ],
    )
    assert rules.may_forward(at(23)) and rules.may_forward(at(5, 59))
    assert rules.may_forward(at(12, 30))
    assert not rules.may_forward(at(6)) and not rules.may_forward(at(9))


def test_switched_off_never_forwards() -> None:
    assert not EdgeRules(version=1, forwarding_enabled=False).may_forward(at(12))


def test_replace_validates_persists_and_survives_a_restart(tmp_path: Path) -> None:
    store = RulesStore(tmp_path / "rules.json")
    store.replace(
        json.dumps(
            {
                "version": 2,
                "compression": "keep",
                "forward_windows": [{"start": "22:00", "end": "05:00"}],
            }
        )
    )
    reopened = RulesStore(tmp_path / "rules.json")
    assert reopened.current.version == 2 and reopened.current.compression == "keep"
    assert reopened.current.compression_policy.plan("1.2.840.10008.1.2.1") is None


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ('{"version": 5, "compression": "zip"}', "compression"),
        ('{"version": 5, "bandwidth": 10}', "bandwidth: Extra inputs are not permitted"),
        (
            '{"version": 5, "forward_windows": [{"start": "25:00", "end": "01:00"}]}',
            "forward_windows.0.start",
        ),
        ('{"compression": "keep"}', "version: Field required"),
        ("not json", "Invalid JSON"),
        ('{"version": 1}', r"not newer than the rules in force \(version 1\)"),
        # a window with a UTC offset would make every forwarding round raise (review M1)
        (
            '{"version": 2, "forward_windows": [{"start": "20:00:00+08:00", "end": "06:00"}]}',
            "without a UTC offset",
        ),
        ('{"version": 3000000000}', "less than or equal to 2147483647"),
    ],
)
def test_invalid_documents_are_refused_and_the_last_good_stays(
    tmp_path: Path, document: str, message: str
) -> None:
    store = RulesStore(tmp_path / "rules.json")
    store.replace('{"version": 1, "compression": "jpeg-lossless"}')
    with pytest.raises(RulesRejected, match=message):
        store.replace(document)
    assert store.current.version == 1 and store.current.compression == "jpeg-lossless"
    assert RulesStore(tmp_path / "rules.json").current.version == 1


def test_pulls_bandwidth_and_push_target_are_validated(tmp_path: Path) -> None:
    store = RulesStore(tmp_path / "rules.json", known_modalities={"HOSP_PACS"})
    rules = store.replace(
        json.dumps(
            {
                "version": 1,
                "bandwidth_limit_mbps": 50,
                "pacs_pulls": [
                    {
                        "name": "recent",
                        "source_aet": "HOSP_PACS",
                        "every_minutes": 10,
                        "modalities": ["CT", "MR", "DX"],
                        "days_back": 1,
                    }
                ],
                "deliver_pushes_to": "HOSP_PACS",
            }
        )
    )
    assert rules.bandwidth_limit_mbps == 50 and rules.pacs_pulls[0].every_minutes == 10
    with pytest.raises(RulesRejected, match=r"not configured on this edge.*OTHER_PACS"):
        store.replace(json.dumps({"version": 2, "deliver_pushes_to": "OTHER_PACS"}))
    with pytest.raises(RulesRejected, match="bandwidth_limit_mbps"):
        store.replace(json.dumps({"version": 2, "bandwidth_limit_mbps": 0}))
    with pytest.raises(RulesRejected, match="each pull needs its own name"):
        pull = {"name": "a", "source_aet": "HOSP_PACS", "every_minutes": 5}
        store.replace(json.dumps({"version": 2, "pacs_pulls": [pull, pull]}))
    with pytest.raises(RulesRejected, match=r"pacs_pulls\.0\.modalities\.0"):
        pull = {"name": "a", "source_aet": "HOSP_PACS", "every_minutes": 5, "modalities": ["ct"]}
        store.replace(json.dumps({"version": 2, "pacs_pulls": [pull]}))
    assert store.current.version == 1  # the last good document stays in force
