"""SQLAlchemy models; importing this package registers every table on Base.metadata."""

from .alert import Alert
from .audit import AuditAnchor, AuditEvent
from .base import Base
from .exam import STATES, Exam
from .fleet import (
    FleetAlert,
    FleetGateway,
    FleetRelease,
    FleetRules,
    FleetTemplate,
    FleetUpgrade,
    FleetUpgradeTarget,
)
from .grant import Grant
from .hl7 import Hl7Merge, Hl7Message
from .image_study import ImageStudy
from .institution import Institution
from .notification import Notification
from .patient import Patient
from .person import Person
from .platform_request import PlatformRequest
from .recognition import RecognitionDecision, RecognitionRollup
from .report import Report
from .share_link import ShareLink

__all__ = [
    "STATES",
    "Alert",
    "AuditAnchor",
    "AuditEvent",
    "Base",
    "Exam",
    "FleetAlert",
    "FleetGateway",
    "FleetRelease",
    "FleetRules",
    "FleetTemplate",
    "FleetUpgrade",
    "FleetUpgradeTarget",
    "Grant",
    "Hl7Merge",
    "Hl7Message",
    "ImageStudy",
    "Institution",
    "Notification",
    "Patient",
    "Person",
    "PlatformRequest",
    "RecognitionDecision",
    "RecognitionRollup",
    "Report",
    "ShareLink",
]
