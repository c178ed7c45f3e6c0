"""python -m indexer.hl7 serve: the MLLP listener (settings: HL7_* and INDEXER_*)."""

from __future__ import annotations

import argparse
import logging

from ..api.deps import get_pii
from ..config import get_settings
from ..db import session_factory
from .config import get_hl7_settings
from .handlers import Intake
from .listener import run


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m indexer.hl7")
    parser.add_argument("command", choices=["serve"])
    parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = get_hl7_settings()
    gateway = get_settings().gateway_url
    run(lambda: Intake(session_factory(), get_pii(), settings, gateway), settings)


if __name__ == "__main__":
    main()
