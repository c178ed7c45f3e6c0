"""Central's push requests and state reports, validated by pydantic (imgcloud.pushes)."""

import pytest
from imgcloud.pushes import PushRejected, PushReport, check_transition, validate_request

GOOD = {"study_instance_uid": "1.2.3", "from_institution": "H0001", "to_institution": "H0002"}


def test_a_valid_request_is_normalised() -> None:
    assert validate_request(GOOD | {"requested_by": "x" * 300}) == GOOD | {
        "deliver_to": None,
        "requested_by": "x" * 128,
    }


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"study_instance_uid": "1.2.x"}, "study_instance_uid: must be a DICOM UID"),
        ({"study_instance_uid": 12}, "study_instance_uid: must be a DICOM UID"),
        ({"from_institution": "h1"}, "from_institution: must be an institution code"),
        ({"to_institution": None}, "to_institution: must be an institution code"),
        ({"to_institution": "H0001"}, "to_institution: must differ from from_institution"),
        ({"deliver_to": "way too long an AE title"}, "deliver_to: must be an AE title"),
    ],
)
def test_each_bad_field_is_named(change: dict, message: str) -> None:
    with pytest.raises(PushRejected, match=message) as refused:
        validate_request(GOOD | change)
    assert refused.value.status == 422


def test_a_body_that_is_not_an_object_is_a_bad_request() -> None:
    with pytest.raises(PushRejected, match="JSON object") as refused:
        validate_request(["not", "an", "object"])
    assert refused.value.status == 400


@pytest.mark.parametrize("instances", [-1, True, "3", 1.5])
def test_a_report_counts_instances_with_a_whole_number(instances: object) -> None:
    with pytest.raises(ValueError, match="must be a count"):
        PushReport.model_validate({"instances": instances})
    assert PushReport.model_validate({"instances": 3, "detail": "d" * 600}).detail == "d" * 500


@pytest.mark.parametrize(
    ("current", "proposed", "status"),
    [("pending", "delivered", 409), ("delivered", "claimed", 409), ("claimed", "gone", 422)],
)
def test_transitions_outside_the_state_machine_are_refused(
    current: str, proposed: str, status: int
) -> None:
    with pytest.raises(PushRejected) as refused:
        check_transition(current, proposed)
    assert refused.value.status == status
    assert check_transition("failed", "claimed") == "claimed"
