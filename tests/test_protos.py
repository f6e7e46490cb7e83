"""The committed stubs are exactly what protos/generate.py makes from protos/."""

from __future__ import annotations

import filecmp
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "client" / "gradwire" / "v1"
PACKAGES = ("v1", "kserve")


def test_generated_stubs_match_protos(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "protos" / "generate.py"), "--out", str(tmp_path)], check=True, capture_output=True)
    for package in PACKAGES:
        fresh, committed = tmp_path / "gradwire" / package, ROOT / "client" / "gradwire" / package
        fresh_names = sorted(p.name for p in fresh.iterdir() if p.is_file())
        committed_names = sorted(p.name for p in committed.iterdir() if p.is_file())
        assert fresh_names == committed_names, "run: python protos/generate.py"
        _, mismatch, errors = filecmp.cmpfiles(fresh, committed, fresh_names, shallow=False)
        assert not mismatch and not errors, f"stale stubs {mismatch}: run python protos/generate.py"


def test_every_message_and_field_is_commented():
    """grpcurl `describe` shows proto comments; an uncommented field documents nothing."""
    missing = []
    for proto in sorted((ROOT / "protos" / "gradwire").glob("*/*.proto")):
        lines = proto.read_text().splitlines()
        for i, line in enumerate(lines):
            s = line.strip()
            is_decl = s.startswith(("message ", "service ", "enum ", "rpc ", "oneof ")) or (
                s.endswith(";") and "=" in s and not s.startswith(("option", "syntax", "package", "import", "//"))
            )
            if is_decl and not lines[i - 1].strip().startswith("//"):
                missing.append(f"{proto.name}:{i + 1}: {s}")
    assert not missing, "\n".join(missing)
