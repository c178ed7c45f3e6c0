"""SQLAlchemy models; importing this package registers every table on Base.metadata."""

from .base import Base
from .institution import Institution

__all__ = ["Base", "Institution"]
