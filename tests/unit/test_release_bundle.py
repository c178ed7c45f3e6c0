"""The signed release bundle: a bundle built from a source tree verifies and unpacks to
the same files; anything altered, unsigned, signed by another key or holding a path
outside payload/ is refused before a byte of it is written."""

import io
import json
import tarfile
from pathlib import Path

import pytest
from imgcloud.release_bundle import (
    BundleRefused,
    build_bundle,
    generate_private_key,
    load_public_key,
    public_key_pem,
    sha256_hex,
    unpack_verified,
    verify_bundle,
)

KEY = generate_private_key()
PUBLIC = KEY.public_key()


def source(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "imgcloud" / "__pycache__").mkdir(parents=True, exist_ok=True)
    (src / "imgcloud" / "__init__.py").write_text('__version__ = "9.9"\n')
    (src / "imgcloud" / "__pycache__" / "x.cpython-313.pyc").write_bytes(b"cache")
    (src / "edge_plugin.py").write_text("import imgcloud\n")
    return src


def members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {
            m.name: (tar.extractfile(m).read() if m.isfile() else b"")  # type: ignore[union-attr]
            for m in tar.getmembers()
        }


def rebuilt(files: dict[str, bytes], *, symlink: str | None = None) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if symlink:
            info = tarfile.TarInfo(symlink)
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
    return out.getvalue()


def test_a_bundle_verifies_and_unpacks_to_its_source(tmp_path: Path) -> None:
    data = build_bundle(source(tmp_path), "2026.12.1", KEY, requirements=["httpx==0.28.1"])
    assert build_bundle(source(tmp_path), "2026.12.1", KEY) != data  # requirements are signed
    manifest = verify_bundle(data, PUBLIC)
    assert manifest.release == "2026.12.1" and manifest.requirements == ["httpx==0.28.1"]
    assert set(manifest.files) == {"imgcloud/__init__.py", "edge_plugin.py"}  # no caches
    dest = tmp_path / "releases" / "2026.12.1"
    unpack_verified(data, PUBLIC, dest)
    assert (dest / "payload" / "imgcloud" / "__init__.py").read_text() == '__version__ = "9.9"\n'
    assert json.loads((dest / "manifest.json").read_text())["release"] == "2026.12.1"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["2026.12.1"]  # no staging left
    # read-only at rest (and private): files 0400, folders 0500
    modes = {p.relative_to(dest).as_posix(): p.stat().st_mode & 0o777 for p in dest.rglob("*")}
    assert modes == {
        "manifest.json": 0o400,
        "manifest.sig": 0o400,
        "payload": 0o500,
        "payload/edge_plugin.py": 0o400,
        "payload/imgcloud": 0o500,
        "payload/imgcloud/__init__.py": 0o400,
    }
    assert dest.stat().st_mode & 0o777 == 0o500
    with pytest.raises(BundleRefused, match="exists already"):
        unpack_verified(data, PUBLIC, dest)


def test_the_same_code_gives_the_same_manifest(tmp_path: Path) -> None:
    one = members(build_bundle(source(tmp_path), "r1", KEY, sequence=7))
    two = members(build_bundle(source(tmp_path), "r1", KEY, sequence=7))
    assert one["manifest.json"] == two["manifest.json"]
    assert json.loads(one["manifest.json"])["files"]["edge_plugin.py"] == sha256_hex(
        b"import imgcloud\n"
    )


def tampered_variants(data: bytes) -> dict[str, bytes]:
    files = members(data)
    changed = dict(files, **{"payload/edge_plugin.py": b"import os; os.system('x')\n"})
    extra = dict(files, **{"payload/evil.py": b"print('x')\n"})
    missing = {k: v for k, v in files.items() if k != "payload/edge_plugin.py"}
    unsigned = {k: v for k, v in files.items() if k != "manifest.sig"}
    manifest = json.loads(files["manifest.json"])
    manifest["release"] = "2099.1.1"
    resigned_manifest = dict(files, **{"manifest.json": json.dumps(manifest).encode()})
    other = generate_private_key()
    other_key = dict(files, **{"manifest.sig": other.sign(files["manifest.json"])})
    escape = dict(files, **{"payload/../../etc/cron.d/x": b"x"})
    absolute = dict(files, **{"/tmp/x": b"x"})  # noqa: S108
    return {
        "changed file": rebuilt(changed),
        "extra file": rebuilt(extra),
        "missing file": rebuilt(missing),
        "unsigned": rebuilt(unsigned),
        "manifest altered": rebuilt(resigned_manifest),
        "other key": rebuilt(other_key),
        "path escape": rebuilt(escape),
        "absolute path": rebuilt(absolute),
        "symlink": rebuilt(files, symlink="payload/link"),
        "not a tar": b"\x00" * 2048 + b"garbage",
        "truncated": data[:1536],  # the first payload file cut short
    }


@pytest.mark.parametrize(
    "variant",
    [
        "changed file",
        "extra file",
        "missing file",
        "unsigned",
        "manifest altered",
        "other key",
        "path escape",
        "absolute path",
        "symlink",
        "not a tar",
        "truncated",
    ],
)
def test_a_tampered_bundle_is_refused_and_nothing_is_written(tmp_path: Path, variant: str) -> None:
    data = build_bundle(source(tmp_path), "2026.12.1", KEY)
    bad = tampered_variants(data)[variant]
    releases = tmp_path / "releases"
    releases.mkdir()
    with pytest.raises(BundleRefused):
        verify_bundle(bad, PUBLIC)
    with pytest.raises(BundleRefused):
        unpack_verified(bad, PUBLIC, releases / "2026.12.1")
    assert list(releases.iterdir()) == []
    assert not (tmp_path / "etc").exists() and not Path("/tmp/x").exists()  # noqa: S108


def test_a_signed_manifest_naming_an_unsafe_release_is_refused(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="release"):
        build_bundle(source(tmp_path), "../escape", KEY)


def test_public_keys_round_trip_and_other_keys_are_refused() -> None:
    assert load_public_key(public_key_pem(KEY)) == PUBLIC
    with pytest.raises(BundleRefused):
        load_public_key(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")


def test_the_release_cli_keeps_the_key_private_and_builds_what_verifies(tmp_path: Path) -> None:
    from deploy.release import ensure_key_pair, main

    private, public = ensure_key_pair(tmp_path)
    assert ensure_key_pair(tmp_path) == (private, public)  # generated once
    assert (
        private.stat().st_mode & 0o777 == 0o600 and private.parent.stat().st_mode & 0o777 == 0o700
    )
    out = tmp_path / "b.tar"
    src = source(tmp_path)
    assert (
        main(
            ["--state-dir", str(tmp_path), "build", "2026.12.2", "-o", str(out), "--src", str(src)]
        )
        == 0
    )
    manifest = verify_bundle(out.read_bytes(), load_public_key(public.read_bytes()))
    assert manifest.release == "2026.12.2" and any(
        r.startswith("httpx==") for r in manifest.requirements
    )
    # numbered above every earlier build: derived from the clock, or given and higher
    again = tmp_path / "c.tar"
    build = ["--state-dir", str(tmp_path), "build", "2026.12.3", "-o", str(again)]
    assert main([*build, "--src", str(src)]) == 0
    later = verify_bundle(again.read_bytes(), load_public_key(public.read_bytes()))
    assert later.sequence > manifest.sequence
    assert main([*build, "--src", str(src), "--sequence", str(later.sequence)]) == 1
    assert main([*build, "--src", str(src), "--sequence", str(later.sequence + 5)]) == 0
    key = load_public_key(public.read_bytes())
    assert verify_bundle(again.read_bytes(), key).sequence == later.sequence + 5
    out.write_bytes(out.read_bytes().replace(b"import imgcloud", b"import imgcloux"))
    assert main(["--state-dir", str(tmp_path), "verify", str(out)]) == 1


def test_a_signed_manifest_without_a_sequence_is_refused(tmp_path: Path) -> None:
    """A bundle built before sequences (review M3): signed, and still refused."""
    files = members(build_bundle(source(tmp_path), "2026.12.1", KEY, sequence=3))
    manifest = json.loads(files["manifest.json"])
    del manifest["sequence"]
    old = json.dumps(manifest, indent=1, sort_keys=True).encode()
    data = rebuilt(dict(files, **{"manifest.json": old, "manifest.sig": KEY.sign(old)}))
    with pytest.raises(BundleRefused, match="no release sequence"):
        verify_bundle(data, PUBLIC)
    with pytest.raises(Exception, match="sequence"):
        build_bundle(source(tmp_path), "2026.12.1", KEY, sequence=0)


def test_a_tiny_sparse_member_claiming_gigabytes_is_refused_before_any_read() -> None:
    """A GNU sparse member is expanded to its stated size when read: 1.5 kB claiming
    1.5 GB would exhaust memory before the signature is even checked (review L1)."""
    info = tarfile.TarInfo("payload/x.py")
    info.type = tarfile.GNUTYPE_SPARSE
    header = bytearray(info.tobuf(format=tarfile.GNU_FORMAT))
    real = 1_500_000_000
    header[386:398] = b"%011o\0" % real  # one sparse chunk, at the very end
    header[398:410] = b"%011o\0" % 0
    header[483:495] = b"%011o\0" % real  # the member's real size
    header[148:156] = b" " * 8
    header[148:156] = b"%06o\0 " % sum(header[:512])
    data = bytes(header) + b"\0" * 1024
    with pytest.raises(BundleRefused, match="above"):
        verify_bundle(data, KEY.public_key())
