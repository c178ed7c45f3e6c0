"""Lossless codecs for the edge, on the same instances (#13): ratio, CPU, exact round trip.

    taskset -c 1 .venv/bin/python -m bench.codecs [--ct 30 --mr 24 --dx 3 --repeat 3]

Run it under the machine-wide lock (/tmp/imgcloud-stack.lock). Each candidate compresses
the same uncompressed instances, from bytes to bytes as the edge would (parse, encode,
write the file): a study of each generator modality (deploy/samples) and pydicom's own
uncompressed test files that a lossless codec takes. Printed per candidate and group:
ratio (file bytes in / out), encode and decode CPU ms per instance (one thread, best of
--repeat), and how many round trips are pixel-identical, decoded by an independent
decoder where one exists (another library than the encoder's). Refused = the encoder
raised: the edge keeps such an instance as received.

The baseline is DCMTK's JPEG-LS inside Orthanc 1.12.7 (bench/codecs_dcmtk.py): the
edge's own call. The same Orthanc then decodes every candidate's output back to explicit
little endian, as central's Orthanc (DCMTK, no GDCM plugin) must to render or convert it.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import shutil
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from importlib.metadata import version
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.encaps import encapsulate
from pydicom.uid import (
    UID,
    HTJ2KLossless,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

from bench import codecs_dcmtk
from bench.codecs_corpus import (
    PYDICOM_GROUP,
    Instance,
    decoded,
    describe,
    generator_instances,
    pydicom_instances,
    same_pixels,
    signed_ct_instances,
)

Encoder = Callable[[bytes], bytes]


def pydicom_encoder(syntax: UID, plugin: str) -> Encoder:
    """pydicom 3's Dataset.compress with one encoding plugin, file bytes to file bytes."""

    def encode(dicom: bytes) -> bytes:
        ds = dcmread(io.BytesIO(dicom))
        # A lossless transcoding keeps the instance's identity; pydicom makes a new UID
        # by default (generate_instance_uid=True), which would break exactly-once delivery.
        ds.compress(syntax, encoding_plugin=plugin, generate_instance_uid=False)
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        return out.getvalue()

    return encode


def imagecodecs_encoder(syntax: UID, codec: Callable[[np.ndarray], bytes]) -> Encoder:
    """imagecodecs on each frame of the native pixels, encapsulated by pydicom."""

    def encode(dicom: bytes) -> bytes:
        ds = dcmread(io.BytesIO(dicom))
        pixels = ds.pixel_array
        frames = pixels if int(ds.get("NumberOfFrames", 1) or 1) > 1 else pixels[None]
        if ds.PixelRepresentation == 1 and syntax == JPEGLSLossless:
            # JPEG-LS codes unsigned samples: the stored bits, as pydicom's plugin does.
            frames = frames.view(f"u{frames.itemsize}") & ((1 << ds.BitsStored) - 1)
        ds.PixelData = encapsulate([codec(np.ascontiguousarray(f)) for f in frames])
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        ds.file_meta.TransferSyntaxUID = syntax
        if ds.SamplesPerPixel == 3:
            ds.PlanarConfiguration = 0
        out = io.BytesIO()
        ds.save_as(out, enforce_file_format=True)
        return out.getvalue()

    return encode


@dataclass
class Candidate:
    name: str
    syntax: UID
    encode: Encoder | None  # None: measured in Orthanc (the baseline)
    decoder: str  # pydicom decoding plugin used to check the round trip
    independent: bool  # the decoder is another library than the encoder
    package: str


def candidates() -> list[Candidate]:
    import imagecodecs

    def htj2k(a: np.ndarray) -> bytes:
        return bytes(imagecodecs.htj2k_encode(a, reversible=True))

    def jpegls(a: np.ndarray) -> bytes:
        return bytes(imagecodecs.jpegls_encode(a))

    return [
        Candidate("dcmtk-orthanc", JPEGLSLossless, None, "pylibjpeg", True, "orthanc 1.12.7"),
        Candidate(
            "pydicom+pyjpegls",
            JPEGLSLossless,
            pydicom_encoder(JPEGLSLossless, "pyjpegls"),
            "pylibjpeg",
            True,
            "pyjpegls",
        ),
        Candidate(
            "imagecodecs-jpegls",
            JPEGLSLossless,
            imagecodecs_encoder(JPEGLSLossless, jpegls),
            "pylibjpeg",
            True,
            "imagecodecs",
        ),
        Candidate(
            "pydicom+openjpeg-j2k",
            JPEG2000Lossless,
            pydicom_encoder(JPEG2000Lossless, "pylibjpeg"),
            "pylibjpeg",
            False,
            "pylibjpeg-openjpeg",
        ),
        Candidate(
            "imagecodecs-htj2k",
            HTJ2KLossless,
            imagecodecs_encoder(HTJ2KLossless, htj2k),
            "pylibjpeg",
            True,
            "imagecodecs",
        ),
        Candidate(
            "pydicom+rle-rust",
            RLELossless,
            pydicom_encoder(RLELossless, "pylibjpeg"),
            "pydicom",
            True,
            "pylibjpeg-rle",
        ),
    ]


@dataclass
class Outcome:
    encode_s: float | None = None
    decode_s: float | None = None
    out: bytes = b""
    identical: bool = False
    refused: str = ""
    central_s: float | None = None  # Orthanc's DCMTK decode back to explicit little endian
    central_ok: bool | None = None
    central_error: str = ""
    central_stored: bool | None = None  # Orthanc 1.12.7 accepts the file (POST /instances)


@dataclass
class Results:
    instances: list[Instance]
    by_candidate: dict[str, list[Outcome]] = field(default_factory=dict)


def best_cpu(fn: Callable[[], object], repeat: int) -> tuple[float, object]:
    """The least thread CPU time of `repeat` calls, and the last result."""
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.thread_time()
        result = fn()
        best = min(best, time.thread_time() - start)
    return best, result


def check(outcome: Outcome, instance: Instance, decoder: str, repeat: int) -> None:
    """Decode with `decoder`, time it, and compare with the original pixels exactly."""
    try:
        outcome.decode_s, pixels = best_cpu(partial(decoded, outcome.out, decoder), repeat)
    except Exception as exc:
        outcome.refused = f"decode failed: {str(exc)[:120]}"
        return
    outcome.identical = same_pixels(instance.pixels, pixels)  # type: ignore[arg-type]


def measure(instances: list[Instance], repeat: int, work: Path) -> Results:
    results = Results(instances)
    names = {f"{i:04d}.dcm": inst for i, inst in enumerate(instances)}
    for cand in candidates():
        if cand.encode is None:
            continue
        outcomes = []
        for inst in instances:
            o = Outcome()
            try:
                o.encode_s, out = best_cpu(partial(cand.encode, inst.dicom), repeat)
                o.out = out  # type: ignore[assignment]
            except Exception as exc:
                o.refused = f"{type(exc).__name__}: {str(exc)[:120]}"
            else:
                check(o, inst, cand.decoder, repeat)
            outcomes.append(o)
        results.by_candidate[cand.name] = outcomes
    encoding = {n: inst.dicom for n, inst in names.items()}
    run = codecs_dcmtk.run(encoding, {}, work / "encode-run", repeat)
    base = []
    for file_name, inst in names.items():
        o = Outcome()
        if file_name in run.encoded:
            o.encode_s, o.out = run.encoded[file_name]
            check(o, inst, "pylibjpeg", repeat)
        else:
            o.refused = run.errors.get(f"encode/{file_name}", "no output")
        base.append(o)
    results.by_candidate = {"dcmtk-orthanc": base, **results.by_candidate}
    # Central's Orthanc decoding each candidate's output (the baseline's own too).
    to_central = {
        n: {f: o.out for f, o in zip(names, outs, strict=True) if o.out}
        for n, outs in results.by_candidate.items()
    }
    central = codecs_dcmtk.run({}, to_central, work / "central-run", repeat)
    for name, outs in results.by_candidate.items():
        for file_name, o, inst in zip(names, outs, instances, strict=True):
            if not o.out:
                continue
            said = central.stored.get(name, {}).get(file_name, {})
            o.central_stored = said.get("stored") == o_syntax(o.out) and bool(said["same_bytes"])
            if not o.central_stored:
                o.central_error = f"not stored as sent: {said.get('error', said)} "
            got = central.decoded.get(name, {}).get(file_name)
            if got is None:
                o.central_ok = False
                o.central_error += central.errors.get(f"{name}/{file_name}", "no output")
                continue
            o.central_s = got[0]
            try:
                o.central_ok = same_pixels(inst.pixels, decoded(got[1]))
            except Exception as exc:
                o.central_ok, o.central_error = False, str(exc)[:120]
    return results


def o_syntax(dicom: bytes) -> str:
    """The transfer syntax a file's meta information names."""
    return str(dcmread(io.BytesIO(dicom), stop_before_pixels=True).file_meta.TransferSyntaxUID)


def _ms(values: list[float]) -> str:
    return f"{1000 * statistics.fmean(values):8.2f}" if values else "       -"


def report(results: Results) -> str:
    groups = list(dict.fromkeys(i.group for i in results.instances))
    cands = {c.name: c for c in candidates()}
    base = results.by_candidate["dcmtk-orthanc"]
    lines = [
        "candidate             group          n  ratio  enc ms  dec ms  enc vs dcmtk"
        "  identical  refused  stored     decodes   ms",
    ]
    for name, outs in results.by_candidate.items():
        for group in [*groups, "all"]:
            rows = [
                (inst, o, b)
                for inst, o, b in zip(results.instances, outs, base, strict=True)
                if group in ("all", inst.group)
            ]
            done = [(i, o, b) for i, o, b in rows if o.out]
            size_in = sum(len(i.dicom) for i, _, _ in done)
            size_out = sum(len(o.out) for _, o, _ in done)
            ratio = f"{size_in / size_out:5.2f}" if size_out else "    -"
            both = [(o.encode_s, b.encode_s) for _, o, b in done if o.encode_s and b.encode_s]
            speed = (
                f"{sum(b for _, b in both) / sum(o for o, _ in both):6.2f}x" if both else "     -"
            )
            central = [o for _, o, _ in done if o.central_ok is not None]
            central_ok = sum(1 for o in central if o.central_ok)
            stored = sum(1 for o in central if o.central_stored)
            lines.append(
                f"{name:21} {group:13} {len(rows):3} {ratio}"
                f"{_ms([o.encode_s for _, o, _ in done if o.encode_s is not None])}"
                f"{_ms([o.decode_s for _, o, _ in done if o.decode_s is not None])}"
                f"  {speed:>12}"
                f"  {sum(1 for _, o, _ in done if o.identical):4}/{len(done):<4}"
                f"  {len(rows) - len(done):7}"
                f"  {stored:4}/{len(central):<4}"
                f"  {central_ok:4}/{len(central):<4}"
                f"{_ms([o.central_s for o in central if o.central_s is not None])}"
            )
        lines.append("")
    lines.append(
        "ratio = file bytes in / out; enc, dec = CPU ms per instance, one thread, best of the"
        " repeats;\nenc vs dcmtk = DCMTK's encode CPU / this one's on the instances both encoded;"
        "\nstored = central's Orthanc 1.12.7 accepts the output (POST /instances) under its"
        " syntax;\ndecodes = that Orthanc (DCMTK 3.6.9, no GDCM plugin) transcodes it to explicit"
        " little endian\npixel-identically, in ms per instance."
    )
    lines.append("decoder used for 'identical' (independent = another library than the encoder):")
    for name, c in cands.items():
        lines.append(
            f"  {name:21} {c.syntax} ({c.syntax.name}); decoded by pydicom plugin "
            f"'{c.decoder}'{'' if c.independent else ' (same library as the encoder)'}"
        )
    lines.append("\nnot pixel-identical, refused, or not decoded by central's Orthanc:")
    for name, outs in results.by_candidate.items():
        for inst, o in zip(results.instances, outs, strict=True):
            at_central = o.central_ok is False or o.central_stored is False
            if o.refused or not o.identical or at_central:
                why = o.refused or ("" if o.identical else "DIFFERS")
                if at_central:
                    why += f" central: {o.central_error.strip() or 'decoded pixels DIFFER'}"
                lines.append(f"  {name:21} {inst.name:36} {why.strip()}")
    lines.append("\npydicom test files used:")
    lines += [f"  {describe(i)}" for i in results.instances if i.group == PYDICOM_GROUP]
    return "\n".join(lines)


def versions(root: Path | None) -> str:
    pkgs = ["pydicom", "numpy", "pyjpegls", "imagecodecs", "pylibjpeg", "pylibjpeg-libjpeg"]
    pkgs += ["pylibjpeg-openjpeg", "pylibjpeg-rle", "pydicom-data"]
    said = []
    for pkg in pkgs:
        try:
            said.append(f"{pkg}=={version(pkg)}")
        except Exception:
            said.append(f"{pkg} (not installed)")
    root_said = root.name if root else "host"
    return f"Python {platform.python_version()}; {', '.join(said)}; Orthanc root {root_said}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ct", type=int, default=30)
    parser.add_argument("--mr", type=int, default=24)
    parser.add_argument("--dx", type=int, default=3)
    parser.add_argument("--signed-ct", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-pydicom-files", action="store_true")
    parser.add_argument("--work", type=Path, default=codecs_dcmtk.REPO / "var" / "bench-codecs")
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # pydicom's notes on padding, precision... not results
    instances = generator_instances({"CT": args.ct, "MR": args.mr, "DX": args.dx})
    instances += signed_ct_instances(args.signed_ct)
    if not args.no_pydicom_files:
        instances += pydicom_instances()
    started = time.monotonic()
    shutil.rmtree(args.work, ignore_errors=True)
    results = measure(instances, args.repeat, args.work)  # its Orthancs' logs stay in --work
    print(f"codecs bench, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(versions(codecs_dcmtk.orthanc_platform().root))
    print(
        f"CPU affinity {sorted(os.sched_getaffinity(0))}, repeat {args.repeat}, "
        f"measured in {time.monotonic() - started:.0f} s\n"
    )
    print(report(results))


if __name__ == "__main__":
    main()
