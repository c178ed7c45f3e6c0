"""SQLAlchemy models; importing this package registers every table on Base.metadata."""

from .audit import AuditAnchor, AuditEvent
from .base import Base
from .exam import STATES, Exam
from .grant import Grant
from .image_study import ImageStudy
from .institution import Institution
from .patient import Patient
from .person import Person
from .platform_request import PlatformRequest
from .report import Report

__all__ = [
    "STATES",
    "AuditAnchor",
    "AuditEvent",
    "Base",
    "Exam",
    "Grant",
    "ImageStudy",
    "Institution",
    "Patient",
    "Person",
    "PlatformRequest",
    "Report",
]
