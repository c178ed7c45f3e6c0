"""The exam state machine: registered -> images-arriving -> images-complete -> reported
(-> report-revised). States only move forward; images arriving after a report fill in the
image information without moving the exam back."""

from __future__ import annotations

ORDER = ("registered", "images-arriving", "images-complete", "reported", "report-revised")
EVENT_STATE = {
    "images-arriving": "images-arriving",
    "images-complete": "images-complete",
    "report": "reported",
    "report-revision": "report-revised",
}
TIME_COLUMN = {
    "registered": "registered_at",
    "images-arriving": "images_arriving_at",
    "images-complete": "images_complete_at",
    "reported": "reported_at",
    "report-revised": "report_revised_at",
}


def next_state(current: str, event: str) -> str:
    """The state after an event (never earlier than the current one)."""
    target = EVENT_STATE[event]
    return target if ORDER.index(target) > ORDER.index(current) else current
