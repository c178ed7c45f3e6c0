"""Archive maintenance commands, run beside the serving Orthanc.

    python -m imgcloud.storage rewrap --orthanc-config var/central/orthanc.json
    python -m imgcloud.storage check  --orthanc-config var/central/orthanc.json \
        [--delete-orphans --grace-hours 24]
    python -m imgcloud.storage rotate --orthanc-config var/central/orthanc.json --new-key k2
    python -m imgcloud.storage retire --orthanc-config var/central/orthanc.json --key k1

They read the storage settings from the same Orthanc configuration file, so they act on
exactly the bucket, prefix and key ring Orthanc uses. Orthanc picks up a changed key ring
within seconds, without a restart.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

from ..errors import PluginError
from .archive import EncryptedArchive
from .keyring import KeyRing, write_key_ring
from .maintenance import (
    check_consistency,
    load_orthanc_configuration,
    orthanc_pg_attachments,
    rewrap_all,
)
from .settings import SECTION, storage_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m imgcloud.storage",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=["rewrap", "check", "rotate", "retire"])
    parser.add_argument("--orthanc-config", type=Path, required=True)
    parser.add_argument(
        "--checkpoint", type=Path, help="rewrap progress file (default: beside the key ring)"
    )
    parser.add_argument("--delete-orphans", action="store_true")
    parser.add_argument("--grace-hours", type=float, default=24.0)
    parser.add_argument("--new-key", help="rotate: id of the new master key")
    parser.add_argument("--key", help="retire: id of the master key to remove")
    args = parser.parse_args(argv)
    try:
        configuration = load_orthanc_configuration(args.orthanc_config)
        settings = storage_settings(configuration)
        if settings is None:
            print(f"{args.orthanc_config}: no {SECTION} section", file=sys.stderr)
            return 2
        ring_file = settings.key_ring_file
        if args.command == "rotate":
            if not args.new_key:
                parser.error("rotate needs --new-key")
            ring = KeyRing.from_file(ring_file, f"{SECTION}.KeyRingFile").rotated(args.new_key)
            write_key_ring(ring, ring_file)
            print(
                f"rotate: new objects now use key {args.new_key}; "
                f"keys {', '.join(ring.key_ids)} stay readable"
            )
            return 0
        if args.command == "retire":
            if not args.key:
                parser.error("retire needs --key")
            ring = KeyRing.from_file(ring_file, f"{SECTION}.KeyRingFile").without(args.key)
            write_key_ring(ring, ring_file)
            print(f"retire: key {args.key} removed; run 'check' to confirm nothing needs it")
            return 0
        archive = EncryptedArchive.from_settings(settings)
        if args.command == "rewrap":
            ring = archive.keys.get()
            checkpoint = args.checkpoint or ring_file.with_suffix(".rewrap-checkpoint")

            def show(report) -> None:
                print(
                    f"rewrap: {report.scanned} scanned, {report.rewrapped} rewrapped, "
                    f"{report.already_current} already on {ring.current_id}, "
                    f"{len(report.failed)} failed",
                    file=sys.stderr,
                    flush=True,
                )

            report = rewrap_all(
                archive.store,
                ring,
                prefix=settings.key_prefix,
                checkpoint=checkpoint,
                progress=show,
            )
            print(
                json.dumps(
                    {
                        "current_key": ring.current_id,
                        "scanned": report.scanned,
                        "rewrapped": report.rewrapped,
                        "already_current": report.already_current,
                        "vanished": report.vanished,
                        "failed": report.failed,
                    }
                )
            )
            return 1 if report.failed else 0
        grace = dt.timedelta(hours=args.grace_hours) if args.delete_orphans else None
        result = check_consistency(
            archive.store,
            orthanc_pg_attachments(configuration),
            prefix=settings.key_prefix,
            delete_orphans_older_than=grace,
        )
        print(json.dumps(result.as_dict()))
        return 0 if not result.missing else 1
    except PluginError as exc:
        print(f"imgcloud.storage {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
