"""What an edge asks central to confirm: the SHA-256 it sent for each SOP instance."""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import BaseModel, ConfigDict, StrictBool, StringConstraints

Sha256 = Annotated[str, StringConstraints(min_length=64, max_length=64)]


class VerifyRequest(BaseModel):
    """{"instances": {SOP Instance UID: SHA-256}[, "discard": false]}."""

    SHAPE: ClassVar[str] = (
        'body must be {"instances": {"<SOP UID>": "<sha256 hex>"}, "discard": bool}'
    )
    model_config = ConfigDict(extra="forbid")
    instances: dict[str, Sha256]
    discard: StrictBool = True
