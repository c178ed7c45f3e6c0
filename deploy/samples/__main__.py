"""Write a sample study as DICOM files plus a manifest.json (patient, exam, report).

python -m deploy.samples --modality CT --instances 150 --seed 7 --out /tmp/study
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from .studies import PROFILES, make_study


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.samples",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--modality", choices=sorted(PROFILES), default="CT")
    parser.add_argument("--instances", type=int, help="default: CT 150, MR 24, DX 1")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--institution", default="H0001")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.instances is not None and args.instances < 1:
        parser.error("--instances must be at least 1")
    study = make_study(
        args.seed, args.modality, instances=args.instances, institution_code=args.institution
    )
    args.out.mkdir(parents=True, exist_ok=True)
    for ds in study.instances():
        ds.save_as(args.out / f"{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
    manifest = {
        "patient": dataclasses.asdict(study.patient),
        "exam": dataclasses.asdict(study.exam),
        "report": dataclasses.asdict(study.report),
    }
    (args.out / "manifest.json").write_text(
        json.dumps(manifest, default=str, ensure_ascii=False, indent=1)
    )
    print(f"wrote {study.exam.instance_count} {args.modality} instances to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
