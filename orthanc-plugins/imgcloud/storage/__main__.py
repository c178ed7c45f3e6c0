"""Archive maintenance commands, run beside the serving Orthanc.

    python -m imgcloud.storage rewrap --orthanc-config var/central/orthanc.json
    python -m imgcloud.storage check  --orthanc-config var/central/orthanc.json \
        [--delete-orphans --grace-hours 24] [--key k1]
    python -m imgcloud.storage add-key --orthanc-config CFG --new-key k2 --key-file F
    python -m imgcloud.storage add-key --orthanc-config CFG --new-key k2 --single-node
    python -m imgcloud.storage promote --orthanc-config CFG --key k2
    python -m imgcloud.storage retire  --orthanc-config CFG --key k1

They read the storage settings from the same Orthanc configuration file, so they act on
exactly the bucket, prefix and key ring Orthanc uses. Orthanc picks up a changed key ring
within seconds, without a restart.

A rotation has two phases. `add-key` puts the new key in this node's ring, not current:
with --key-file F it takes the key from F, or, if F does not exist, generates one and
writes it to F (mode 0600, never overwriting) so that the same key can be added on every
other node from F. Without --key-file every node would make its own random bytes under
the same id, so add-key refuses unless --single-node says this is the only node (an edge).
Each key's check value (kcv) is printed and shown in /imaging-cloud/status: every node must
show the same one. `promote` makes it current once every node's status lists the key with
that check value. Shred the key file once every node holds the key. `retire` refuses while
a rewrap checkpoint exists (a rewrap is under way or failed), and a rewrap starts only once
every node's status shows the new key current. `check --key k1` counts the objects each
key seals (from their headers) and fails while any is sealed under k1: run it before
`retire --key k1`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

from ..errors import KeyRingError, PluginError
from .archive import EncryptedArchive
from .keyring import (
    KeyRing,
    create_key_file,
    read_key_file,
    update_key_ring,
)
from .maintenance import (
    RewrapReport,
    check_consistency,
    load_orthanc_configuration,
    objects_by_key,
    orthanc_pg_attachments,
    rewrap_all,
    store_parts,
)
from .settings import SECTION, storage_settings

KEY_COMMANDS = ("add-key", "promote", "retire")
ROTATE_GONE = (
    "'rotate' is gone: a rotation has two phases, 'add-key --new-key ID' on every node, "
    "then 'promote --key ID' on every node once each node's /imaging-cloud/status lists "
    "the key (python -m deploy.stack rotate-key does both for the local stack)"
)


def default_checkpoint(ring_file: Path) -> Path:
    """Where rewrap keeps its progress unless --checkpoint says otherwise."""
    return ring_file.with_suffix(".rewrap-checkpoint")


def part_checkpoint(checkpoint: Path, part: str) -> Path:
    """The checkpoint of one store behind the archive: the object store keeps the plain
    name (as before small attachments moved), the others get their name appended."""
    if part == "object-store":
        return checkpoint
    return checkpoint.with_name(f"{checkpoint.name}.{part}")


def checkpoints(checkpoint: Path) -> list[Path]:
    """Every checkpoint a rewrap may have left for `checkpoint`, the existing ones."""
    return [p for p in (checkpoint, part_checkpoint(checkpoint, "postgresql")) if p.exists()]


def change_key_ring(args: argparse.Namespace, ring_file: Path) -> int:
    """add-key, promote, retire: one change of this node's ring, under its lock."""
    setting = f"{SECTION}.KeyRingFile"
    if args.command == "add-key":
        material = None
        if args.key_file is None and not args.single_node:
            raise KeyRingError(
                "add-key: give --key-file F (the same file on every node): without it each "
                "node would make its own random key under one id, and none could read what "
                "the others seal. --single-node if this node is the only one holding the ring"
            )
        if args.key_file is not None:
            if args.key_file.exists():
                material = read_key_file(args.key_file, args.new_key)
            else:
                if KeyRing.from_file(ring_file, setting).get(args.new_key) is not None:
                    raise KeyRingError(f"key ring: key '{args.new_key}' is in the ring already")
                # the file first: a ring changed without it would hold a key no node shares
                material = create_key_file(args.key_file, args.new_key)
                print(f"add-key: new key {args.new_key} written to {args.key_file} (0600)")

        def add(ring: KeyRing) -> KeyRing:
            if material is not None and ring.get(args.new_key) is not None:
                if ring.holds(args.new_key, material):
                    return ring  # a second run with the same key file: nothing to do
                raise KeyRingError(
                    f"key ring: key '{args.new_key}' is in the ring already, with other key "
                    "material than this key file's"
                )
            return ring.with_key(args.new_key, material)

        before, ring = update_key_ring(ring_file, add, setting)
        kcv = ring.check_value(args.new_key)
        if ring is before:
            print(
                f"add-key: key {args.new_key} (kcv {kcv}) is in the ring already; nothing changed"
            )
        else:
            print(
                f"add-key: key {args.new_key} (kcv {kcv}) added (ring version {ring.version});"
                f" new objects still use {ring.current_id}. Add it on every other node, check "
                "that each status shows this kcv for it, then 'promote'."
            )
        if material is None:
            print(f"add-key: {args.new_key} exists on this node only (--single-node)")
        else:
            print(
                f"add-key: shred {args.key_file} (shred -u) once every node holds "
                f"{args.new_key}: it is the key in clear",
                file=sys.stderr,
            )
        return 0
    if args.command == "promote":
        before, ring = update_key_ring(ring_file, lambda r: r.promoted(args.key), setting)
        if ring is before:
            print(f"promote: key {args.key} is current already; nothing changed")
        else:
            print(f"promote: new objects now use key {args.key} (ring version {ring.version})")
        return 0
    left = checkpoints(args.checkpoint or default_checkpoint(ring_file))
    if left:
        raise KeyRingError(
            f"retire: a rewrap checkpoint exists ({left[0]}): a rewrap is under way or "
            "did not finish; run 'rewrap' until it reports nothing failed, then retire"
        )
    _, ring = update_key_ring(ring_file, lambda r: r.without(args.key), setting)
    print(
        f"retire: key {args.key} removed (ring version {ring.version}); "
        "run 'check' to confirm nothing needs it"
    )
    return 0


def rewrap_command(
    args: argparse.Namespace, archive: EncryptedArchive, ring_file: Path, prefix: str
) -> int:
    """Rewrap every store behind the archive (the bucket, then central's PostgreSQL table
    of small attachments), each with its own checkpoint; one JSON line of totals."""
    ring = archive.keys.get()
    checkpoint = args.checkpoint or default_checkpoint(ring_file)
    totals: dict[str, Any] = {
        "current_key": ring.current_id,
        "scanned": 0,
        "rewrapped": 0,
        "already_current": 0,
        "vanished": 0,
        "failed": {},
        "by_store": {},
    }
    for part, store in store_parts(archive.store).items():

        def show(report: RewrapReport, part: str = part) -> None:
            print(
                f"rewrap ({part}): {report.scanned} scanned, {report.rewrapped} rewrapped, "
                f"{report.already_current} already on {ring.current_id}, "
                f"{len(report.failed)} failed",
                file=sys.stderr,
                flush=True,
            )

        report = rewrap_all(
            store, ring, prefix=prefix, checkpoint=part_checkpoint(checkpoint, part), progress=show
        )
        for name in ("scanned", "rewrapped", "already_current", "vanished"):
            totals[name] += getattr(report, name)
        totals["failed"].update(report.failed)
        totals["by_store"][part] = {"scanned": report.scanned, "rewrapped": report.rewrapped}
    print(json.dumps(totals))
    return 1 if totals["failed"] else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m imgcloud.storage",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", choices=["rewrap", "check", *KEY_COMMANDS, "rotate"])
    parser.add_argument("--orthanc-config", type=Path, required=True)
    parser.add_argument(
        "--checkpoint", type=Path, help="rewrap progress file (default: beside the key ring)"
    )
    parser.add_argument("--delete-orphans", action="store_true")
    parser.add_argument("--grace-hours", type=float, default=24.0)
    parser.add_argument("--new-key", help="add-key: id of the new master key")
    parser.add_argument(
        "--key-file",
        type=Path,
        help="add-key: the new key's file (read if it exists, else created 0600)",
    )
    parser.add_argument(
        "--single-node",
        action="store_true",
        help="add-key without --key-file: this node alone holds the ring (an edge)",
    )
    parser.add_argument(
        "--key",
        help="promote, retire: id of the master key; check: fail if any object uses it",
    )
    args = parser.parse_args(argv)
    if args.command == "rotate":
        parser.error(ROTATE_GONE)
    if args.command == "add-key" and not args.new_key:
        parser.error("add-key needs --new-key")
    if args.command in ("promote", "retire") and not args.key:
        parser.error(f"{args.command} needs --key")
    try:
        configuration = load_orthanc_configuration(args.orthanc_config)
        settings = storage_settings(configuration)
        if settings is None:
            print(f"{args.orthanc_config}: no {SECTION} section", file=sys.stderr)
            return 2
        ring_file = settings.key_ring_file
        if args.command in KEY_COMMANDS:
            return change_key_ring(args, ring_file)
        archive = EncryptedArchive.from_settings(settings)
        if args.command == "rewrap":
            return rewrap_command(args, archive, ring_file, settings.key_prefix)
        grace = dt.timedelta(hours=args.grace_hours) if args.delete_orphans else None
        result = check_consistency(
            archive.store,
            orthanc_pg_attachments(configuration),
            prefix=settings.key_prefix,
            delete_orphans_older_than=grace,
        )
        answer = result.as_dict()
        still_used = 0
        if args.key:
            by_key = objects_by_key(archive.store, settings.key_prefix)
            answer["objects_by_key"] = by_key
            still_used = by_key.get(args.key, 0)
            if still_used:
                print(
                    f"check: {still_used} objects are sealed under {args.key}: rewrap (once "
                    "every node shows the new key current) before retiring it",
                    file=sys.stderr,
                )
        print(json.dumps(answer))
        return 0 if not result.missing and not still_used else 1
    except PluginError as exc:
        print(f"imgcloud.storage {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
